#!/usr/bin/env bash
# One command: set up the environment (fresh machine included), then run the test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup-env.sh" "${PIDTRT_EXTRAS:-dev,rtx,fp8,text,diffusers,serve}"
cd "$ROOT"
ruff check -q . && ruff format -q --check . || { echo "error: lint (ruff check / ruff format --check) failed" >&2; exit 1; }
mypy || { echo "error: type check (mypy, the packages of pyproject.toml [tool.mypy]) failed" >&2; exit 1; }
# Only a missing GPU may skip a test: with PIDTRT_FAIL_ON_SKIP=1 (tests/conftest.py) any other
# skip fails the run, listed with its reason above pytest's closing line (-ra: every skip's reason).
PIDTRT_FAIL_ON_SKIP="${PIDTRT_FAIL_ON_SKIP:-1}" python -m pytest -q -ra "$@"
