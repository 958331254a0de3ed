#!/usr/bin/env bash
# Create (or reuse) the project virtual environment and install pid-trt into it.
# Usage: source scripts/setup-env.sh [extras]   (default extras: dev,rtx)
# - Reuses an active virtual environment ($VIRTUAL_ENV); otherwise creates ./.venv.
# - Installs torch==2.13.0 only when no torch is importable, so a CUDA torch you already
#   have is kept and a CPU-only machine does not pull a multi-GB CUDA build.
set -euo pipefail
EXTRAS="${1:-dev,rtx}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
        "$PY" -m venv "$ROOT/.venv"
    fi
    # shellcheck disable=SC1091
    source "$ROOT/.venv/bin/activate"
fi
python -m pip install -q --upgrade pip >/dev/null
if ! python -c "import torch" >/dev/null 2>&1; then
    python -m pip install -q "torch==2.13.0"
fi
LOG="$(mktemp)"
if ! python -m pip install -q -e "$ROOT[$EXTRAS]" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    rm -f "$LOG"
    echo "error: pip install -e .[$EXTRAS] failed (log above)" >&2
    exit 1
fi
rm -f "$LOG"
