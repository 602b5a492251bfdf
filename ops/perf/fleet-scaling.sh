#!/usr/bin/env bash
# Fleet scaling: aggregate `bench serve` throughput of N replicas behind the router (`glmfleet up`)
# against N × one replica served directly, at N × the concurrency (issue #9: ≥ 0.95 × N). One run
# measures the direct replica, then each fleet size in REPLICAS_LIST, on the same random traffic.
#
# On GPU hosts: GPUS=0,1,2,3 and the real engine (SERVE_ARGS="--load-format dummy ...", MODEL=...).
# On a machine without GPUs the replicas can be fakes with a simulated step time
# (SERVE_ARGS="--load-format fake:30ms+20us"): then only the router, the HTTP path and the client are
# measured, which is the part of the fleet a GPU cannot speed up.
#
#   ops/perf/fleet-scaling.sh [GLMFLEET_BINARY]       (default target/release/glmfleet)
#   env: REPLICAS_LIST ("1 2 4") CONC (per replica, 32) PROMPTS_PER_REPLICA (128) IN_LEN (256)
#        OUT_LEN (64) PORT (18400) MODEL (the embedded demo model) TOKENIZER (MODEL or model/demo)
#        SERVE_ARGS ("--load-format fake:30ms+20us") GPUS (e.g. 0,1,2,3: one per replica)
#        POLICY (prefix-hash) LOG (/tmp/glmfleet-scaling)
# Loopback only; every loop below is bounded.
set -euo pipefail
BIN=${1:-target/release/glmfleet}
LOG=${LOG:-/tmp/glmfleet-scaling}
PORT=${PORT:-18400}
CONC=${CONC:-32}
PER=${PROMPTS_PER_REPLICA:-128}
SERVE_ARGS=${SERVE_ARGS:---load-format fake:30ms+20us}
mkdir -p "$LOG"
[ -x "$BIN" ] || { echo "no glmfleet binary at $BIN (cargo build --release -p glmfleet)" >&2; exit 2; }
model_args=()
[ -n "${MODEL:-}" ] && model_args=(--model "$MODEL")

pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; wait 2>/dev/null' EXIT

wait_up() {
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && return 0
    kill -0 $pid 2>/dev/null || { tail -5 "$1"; exit 1; }
    sleep 1
  done
  echo "not healthy after 600 s: $1" >&2; exit 1
}

bench() { # name replicas
  timeout 1200 "$BIN" bench serve --port "$PORT" --tokenizer "${TOKENIZER:-${MODEL:-model/demo}}" \
    --dataset-name random --random-input-len "${IN_LEN:-256}" --random-output-len "${OUT_LEN:-64}" \
    --ignore-eos --num-prompts $((PER * $2)) --max-concurrency $((CONC * $2)) --seed 1 \
    --save-result --result-dir "$LOG" --result-filename "$1.json" > "$LOG/bench-$1.log" 2>&1
}

stop() { kill $pid; wait $pid 2>/dev/null || true; pid=; }

echo "== one replica, direct"
GPUS=${GPUS:-}
first_gpu=${GPUS%%,*}
env ${first_gpu:+CUDA_VISIBLE_DEVICES=$first_gpu} "$BIN" serve "${MODEL:-demo}" --port "$PORT" \
  $SERVE_ARGS > "$LOG/serve-direct.log" 2>&1 &
pid=$!
wait_up "$LOG/serve-direct.log"
bench direct 1
stop
for n in ${REPLICAS_LIST:-1 2 4}; do
  echo "== $n replicas behind the router"
  gpus=
  [ -n "${GPUS:-}" ] && gpus=$(echo "$GPUS" | cut -d, -f1-"$n")
  "$BIN" up "${model_args[@]}" --replicas "$n" --port "$PORT" --policy "${POLICY:-prefix-hash}" \
    ${gpus:+--gpus "$gpus"} -- $SERVE_ARGS > "$LOG/up-$n.log" 2>&1 &
  pid=$!
  wait_up "$LOG/up-$n.log"
  bench "fleet-$n" "$n"
  stop
done
python3 - "$LOG" ${REPLICAS_LIST:-1 2 4} <<'EOF' | tee "$LOG/table.md"
import json, sys
log, ns = sys.argv[1], [int(n) for n in sys.argv[2:]]
one = json.load(open(f"{log}/direct.json"))
base = one["output_throughput"]
print("| fleet | concurrency | completed | output tok/s | vs N × direct | median TTFT ms | median TPOT ms | P99 ITL ms |")
print("|---|---|---|---|---|---|---|---|")
def row(name, n, r):
    eff = r["output_throughput"] / (n * base)
    print(f"| {name} | {r['max_concurrency']} | {r['completed']}/{r['num_prompts']} | "
          f"{r['output_throughput']:.1f} | {eff:.3f} | {r['median_ttft_ms']:.1f} | "
          f"{r['median_tpot_ms']:.2f} | {r['p99_itl_ms']:.1f} |")
row("1 replica, direct", 1, one)
for n in ns:
    row(f"{n} behind the router", n, json.load(open(f"{log}/fleet-{n}.json")))
EOF
