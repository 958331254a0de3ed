#!/usr/bin/env bash
# One command, no downloads: set up the environment, then decode a bundled sample latent
# with the `tiny` preset (seeded random weights) on the torch backend.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$ROOT/scripts/setup-env.sh" "${PIDTRT_EXTRAS:-dev,rtx}"
mkdir -p "$ROOT/out"
pidtrt sample-latent --backbone tiny -o "$ROOT/out/sample_latent.safetensors"
pidtrt decode "$ROOT/out/sample_latent.safetensors" --backbone tiny --random-weights -o "$ROOT/out/demo.png" "$@"
