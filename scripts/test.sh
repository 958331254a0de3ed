#!/usr/bin/env bash
# One command: set up the environment (fresh machine included), then lint, type-check, build the docs
# and run the test suite. `./scripts/test.sh --quick [PYTEST ARGS]` runs the quick tier instead: every
# test not marked `slow` (every module's unit tests and one tiny end-to-end path per front end; what is
# marked and why: docs/contributing.md; tests/test_quick_tier.py keeps it so). CI runs it all. Both
# keep ruff, mypy and `mkdocs build --strict` (together ~25 s of the quick tier's minutes on 2 cores).
# No pytest-xdist: on 2 cores the in-process torch tests already use both (intra-op threads), each
# worker would repeat the per-process shared work (the Triton servers, the tiny Gemma, the golden
# exports, the TensorRT-RTX store of tests/engine_helpers.py); measure `-n 2 --dist loadfile` on an
# idle machine before adding it (temp folders come from tmp_path and servers pick free ports, but the
# suite has not been run under xdist).
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
