#!/usr/bin/env bash
# One command: set up the environment (fresh machine included), then run the test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup-env.sh" "${PIDTRT_EXTRAS:-dev,rtx,fp8}"
cd "$ROOT"
ruff check -q . && ruff format -q --check . || { echo "error: lint (ruff check / ruff format --check) failed" >&2; exit 1; }
python -m pytest -q "$@"
