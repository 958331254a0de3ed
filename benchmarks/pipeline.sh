#!/usr/bin/env bash
# The host pipeline against a simulated H100 (issue "outputs at engine speed"): every run of
# benchmarks/results/pipeline_<date>.* in one command, serial (before the pipeline) beside
# pipelined in the same process, the load average recorded before and after each run.
#
#   benchmarks/pipeline.sh                        # writes benchmarks/results/pipeline_<date>.{json,md,png}
#   PIDTRT_PIPE_OUT=/tmp/pipe benchmarks/pipeline.sh   # somewhere else (a path stem)
#
# Runs (about 4-5 minutes on an idle 2-core machine; each case is --images images):
#   1. 2048x2048, device 175 ms (the H100 bf16 floor of the issue), PNG and JPEG, serial + pipelined
#   2. the same with --writers 0 (fast encoders, written in the decoding thread), pipelined only
#   3. 3840x2160 at the cost model's H100 bf16 floor, PNG and JPEG, serial + pipelined
#   4. 2048x2048 and 3840x2160 at the H100 fp8 floor, PNG and JPEG, serial + pipelined
# Environment: PIDTRT_PIPE_IMAGES (default 16 at 2048x2048, half that at 3840x2160),
# PIDTRT_PIPE_OUT (path stem, default benchmarks/results/pipeline_<UTC date>).
set -euo pipefail
cd "$(dirname "$0")/.."

images="${PIDTRT_PIPE_IMAGES:-16}"
out="${PIDTRT_PIPE_OUT:-benchmarks/results/pipeline_$(date -u +%Y-%m-%d)}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
loads=""

run() {  # run NAME ARGS...: one `pidtrt bench --pipeline` into $work/NAME.json
  local name="$1"
  shift
  local before after
  before="$(cut -d' ' -f1 /proc/loadavg)"
  pidtrt bench --pipeline --backbone flux --format png --format jpg --json "$work/$name.json" "$@" \
    > "$work/$name.md"
  after="$(cut -d' ' -f1 /proc/loadavg)"
  loads="$loads $name: load $before -> $after;"
  echo "$name: load $before -> $after" >&2
}

start=$SECONDS
run bf16_2048 --size 2048x2048 --simulate-device-ms 175 --images "$images"
run bf16_2048_writers0 --size 2048x2048 --simulate-device-ms 175 --images "$images" --writers 0 --no-serial
run bf16_4k --size 3840x2160 --simulate-device h100:bf16 --images $((images / 2))
run fp8 --size 2048x2048 --size 3840x2160 --simulate-device h100:fp8 --images $((images / 2))

cores="$(nproc)"
note="Machine: $(uname -m), $cores cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), no GPU."
note="$note Device: simulated (a timed wait) at 175 ms (2048x2048 bf16, the issue's figure) and the"
note="$note cost model's H100 SXM floors (--simulate-device h100:bf16 / h100:fp8). Serial: float image"
note="$note to the host, float64 quantize there, Pillow PNG level 6 / JPEG, in the decoding thread."
note="$note Pipelined: uint8 from the device, fast encoders, a writer pool, latent files read ahead."
note="$note Load average (1 min) before -> after each run:$loads total $((SECONDS - start)) s."
note="$note Command: benchmarks/pipeline.sh"
python benchmarks/pipeline_report.py "$work"/bf16_2048.json "$work"/bf16_2048_writers0.json \
  "$work"/bf16_4k.json "$work"/fp8.json --out "$out" --note "$note"
echo "wrote $out.json $out.md $out.png ($((SECONDS - start)) s)" >&2
