#!/usr/bin/env bash
# The GPU comparison in one command: PiD (random weights) at 2048x2048 and 3840x2160 across
# every backend — torch bf16 eager, torch.compile (max-autotune), onnxruntime-gpu fp16,
# TensorRT fp16 / bf16 / fp8 — hoisted and not where the backend can, written as JSON,
# markdown and PNG under benchmarks/results/.
#
#   benchmarks/gpu_suite.sh                       # on an NVIDIA GPU machine (H100 / H200 / ...)
#   PIDTRT_SUITE_PRESET=tiny benchmarks/gpu_suite.sh   # quick CPU dry run: GPU rows are skipped
#
# Environment: PIDTRT_SUITE_PRESET (default flux), PIDTRT_SUITE_SIZES (default "2048x2048
# 3840x2160"; "64x64 128x128" for tiny / small), PIDTRT_SUITE_RUNS (default 10),
# PIDTRT_SUITE_WARMUP (default 3), PIDTRT_SUITE_BATCHES (default "1"), PIDTRT_SUITE_OUT
# (default benchmarks/results), PIDTRT_SUITE_ENGINES / PIDTRT_SUITE_EXPORT (stores, default
# engines / export, git-ignored), PIDTRT_SUITE_BUILD (1: build missing TensorRT engines first;
# default 1 when a GPU is visible).
set -euo pipefail
cd "$(dirname "$0")/.."

preset="${PIDTRT_SUITE_PRESET:-flux}"
case "$preset" in
  tiny|small) default_sizes="64x64 128x128" ;;
  *) default_sizes="2048x2048 3840x2160" ;;
esac
sizes="${PIDTRT_SUITE_SIZES:-$default_sizes}"
runs="${PIDTRT_SUITE_RUNS:-10}"
warmup="${PIDTRT_SUITE_WARMUP:-3}"
batches="${PIDTRT_SUITE_BATCHES:-1}"
out="${PIDTRT_SUITE_OUT:-benchmarks/results}"
engines="${PIDTRT_SUITE_ENGINES:-engines}"
export_dir="${PIDTRT_SUITE_EXPORT:-export}"
pidtrt="${PIDTRT:-pidtrt}"

if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  gpu=1
  tag="gpu_$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))")"
else
  gpu=0
  tag="cpu-dryrun"
fi
build="${PIDTRT_SUITE_BUILD:-$gpu}"
stem="$out/${tag}_${preset}_$(date +%Y-%m-%d)"
mkdir -p "$out"

size_args=(); for s in $sizes; do size_args+=(--size "$s"); done
batch_args=(); for b in $batches; do batch_args+=(--batch "$b"); done
backends=(torch:bf16@cuda torch-compile:bf16@cuda onnxruntime:fp16@cuda tensorrt:fp16 tensorrt:bf16 tensorrt:fp8)
if [ "$gpu" = 0 ]; then
  # Dry run on CPU: one measured reference row so the table, ratios and plots are exercised.
  backends=(torch:fp32@cpu "${backends[@]}")
fi
backend_args=(); for b in "${backends[@]}"; do backend_args+=(--backend "$b"); done

if [ "$build" = 1 ]; then
  for s in $sizes; do for b in $batches; do for p in fp16 bf16 fp8; do
    echo "== building TensorRT $p engines for $preset $s batch $b" >&2
    "$pidtrt" build --backbone "$preset" --random-weights --size "$s" --batch "$b" --precision "$p" \
      --builder tensorrt --engine-dir "$engines" --export-dir "$export_dir" \
      || echo "warning: TensorRT $p build for $s failed; the bench reports it as skipped" >&2
  done; done; done
fi

"$pidtrt" bench --backbone "$preset" --random-weights "${size_args[@]}" "${batch_args[@]}" \
  "${backend_args[@]}" --compare-hoist --warmup "$warmup" --runs "$runs" \
  --engine-dir "$engines" --export-dir "$export_dir" \
  --title "PiD $preset: eager vs torch.compile vs ONNX Runtime vs TensorRT" \
  --json "$stem.json" --markdown "$stem.md" --plot "$stem.png"
echo "wrote $stem.json $stem.md $stem.png" >&2
