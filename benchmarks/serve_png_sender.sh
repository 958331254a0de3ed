#!/usr/bin/env bash
# One `pidtrt serve` instance answering PNG requests: an earlier model (another source tree,
# e.g. `git worktree add ../before <commit>`) beside this tree's, servers run in turn on the
# same machine, each round before then now, the load average recorded after each run.
#
#   benchmarks/serve_png_sender.sh BEFORE_TREE
#
# Each run: pidtrt serve --backbone tiny --random-weights --threads 1 --max-batch B (from that
# tree), then this tree's `pidtrt bench --server URL --size SIZE --concurrency C --requests N
# --server-output png --json ...`. Environment: PIDTRT_SENDER_SIZE (512x512), PIDTRT_SENDER_CASES
# ("1:4:16 4:8:24": max-batch:concurrency:requests), PIDTRT_SENDER_ROUNDS (3),
# PIDTRT_SENDER_PORT (18431, and the two after it), PIDTRT_SENDER_OUT (a folder, default a temp one).
set -euo pipefail
before="$(cd "$1" && pwd)"
cd "$(dirname "$0")/.."
now="$(pwd)"
size="${PIDTRT_SENDER_SIZE:-512x512}"
cases="${PIDTRT_SENDER_CASES:-1:4:16 4:8:24}"
rounds="${PIDTRT_SENDER_ROUNDS:-3}"
port="${PIDTRT_SENDER_PORT:-18431}"
out="${PIDTRT_SENDER_OUT:-$(mktemp -d)}"
mkdir -p "$out"

run() {  # run LABEL TREE MAXB CONC REQUESTS ROUND
  local label="$1" tree="$2" maxb="$3" conc="$4" requests="$5" round="$6"
  local ws="$out/ws-$label-b$maxb-$round"
  mkdir -p "$ws"
  PYTHONPATH="$tree" python -m pid_trt.cli.main serve --backbone tiny --random-weights --threads 1 \
    --instances 1 --max-batch "$maxb" --host 127.0.0.1 --http-port "$port" --grpc-port $((port + 1)) \
    --metrics-port $((port + 2)) --workspace "$ws" >"$ws.out" 2>"$ws.err" &
  local server=$!
  for _ in $(seq 1 480); do
    grep -q "^serving pid_decoder" "$ws.out" && break
    sleep 0.5
  done
  PYTHONPATH="$now" python -m pid_trt.cli.main bench --server "http://127.0.0.1:$port" --size "$size" \
    --concurrency "$conc" --requests "$requests" --server-output png \
    --json "$out/bench-$label-b$maxb-c$conc-$size-$round.json" 2>/dev/null | grep -E "^\| [0-9]" || true
  kill -INT "$server"
  wait "$server" || true
  echo "$label max-batch $maxb round $round, load $(cut -d' ' -f1-3 /proc/loadavg)"
}

for spec in $cases; do
  IFS=: read -r maxb conc requests <<<"$spec"
  for round in $(seq 1 "$rounds"); do
    run before "$before" "$maxb" "$conc" "$requests" "$round"
    run now "$now" "$maxb" "$conc" "$requests" "$round"
  done
done
echo "JSON records in $out"
