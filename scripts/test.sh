#!/usr/bin/env bash
# One command: set up the environment (fresh machine included), then lint, build the docs and run
# the test suite. `./scripts/test.sh --quick [PYTEST ARGS]` runs the quick tier instead: every test
# not marked `slow` (every module's unit tests and the tiny end-to-end paths); CI runs it all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUICK=()
if [[ "${1:-}" == "--quick" ]]; then
    QUICK=(-m "not slow")
    shift
fi
# shellcheck disable=SC1091
source "$ROOT/scripts/setup-env.sh" "${PIDTRT_EXTRAS:-dev,rtx,fp8,text,diffusers,serve,docs}"
cd "$ROOT"
ruff check -q . && ruff format -q --check . || { echo "error: lint (ruff check / ruff format --check) failed" >&2; exit 1; }
mypy || { echo "error: type check (mypy, the packages of pyproject.toml [tool.mypy]) failed" >&2; exit 1; }
# The documentation site: a broken link, a missing page or a page outside the nav fails (strict).
SITE="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet -d "$SITE" || { rm -rf "$SITE"; echo "error: mkdocs build --strict failed (above)" >&2; exit 1; }
rm -rf "$SITE"
# Only a missing GPU may skip a test: with PIDTRT_FAIL_ON_SKIP=1 (tests/conftest.py) any other
# skip fails the run, listed with its reason above pytest's closing line (-ra: every skip's reason).
PIDTRT_FAIL_ON_SKIP="${PIDTRT_FAIL_ON_SKIP:-1}" python -m pytest -q -ra "${QUICK[@]}" "$@"
