#!/usr/bin/env bash
# Routing policies side by side on the same traffic (prefix-hash against round robin by default), one
# after the other in one run. For each policy it starts a fleet of REPLICAS replicas behind the router
# (`glmfleet up`), sends vLLM's prefix_repetition dataset (a few long shared prefixes, short unique
# suffixes; or random prompts) with `glmfleet bench serve`, and reads the replicas' prefix-cache
# counters. It prints one table with throughput, TTFT and hit rate per policy.
#
#   ops/perf/routing-compare.sh [GLMFLEET_BINARY]       (default target/release/glmfleet)
#   env: REPLICAS (2) NUM_PROMPTS (96) CONC (8) PREFIX_LEN (1024) SUFFIX_LEN (32) NUM_PREFIXES (8)
#        OUT_LEN (16) PORT (18300) MODEL (the embedded demo model) TOKENIZER (MODEL or model/demo)
#        SERVE_ARGS (extra replica flags) GPUS (one per replica, e.g. 0,1: `up --gpus`)
#        POLICIES ("prefix-hash round-robin") DATASET (prefix-repetition, which sends NUM_PROMPTS rounded
#        down to a multiple of NUM_PREFIXES, as vLLM's does; or random: no shared
#        prefixes, IN_LEN (512) tokens in, OUT_LEN out; BURSTINESS (1.0) with REQUEST_RATE (inf))
#        LOG (/tmp/glmfleet-routing)
# Loopback only; every loop below is bounded.
set -euo pipefail
BIN=${1:-target/release/glmfleet}
LOG=${LOG:-/tmp/glmfleet-routing}
PORT=${PORT:-18300}
mkdir -p "$LOG"
[ -x "$BIN" ] || { echo "no glmfleet binary at $BIN (cargo build --release -p glmfleet)" >&2; exit 2; }
model_args=()
[ -n "${MODEL:-}" ] && model_args=(--model "$MODEL")

# sum of one counter over the replicas the router lists
counter() {
  local total=0 url v
  for url in $(curl -sf "http://127.0.0.1:$PORT/replicas" | python3 -c 'import json,sys; print(" ".join(r["name"] for r in json.load(sys.stdin)["replicas"]))'); do
    v=$(curl -sf "$url/metrics" | awk -v m="$1" '$1 ~ "^"m"(\\{|$)" {s += $2} END {print s + 0}')
    total=$(python3 -c "print($total + $v)")
  done
  echo "$total"
}

pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; wait 2>/dev/null' EXIT
rows=()
if [ "${DATASET:-prefix-repetition}" = random ]; then
  data=(--dataset-name random --random-input-len "${IN_LEN:-512}" --random-output-len "${OUT_LEN:-16}")
else
  data=(--dataset-name prefix-repetition
    --prefix-repetition-prefix-len "${PREFIX_LEN:-1024}" --prefix-repetition-suffix-len "${SUFFIX_LEN:-32}"
    --prefix-repetition-num-prefixes "${NUM_PREFIXES:-8}" --prefix-repetition-output-len "${OUT_LEN:-16}")
fi
for policy in ${POLICIES:-prefix-hash round-robin}; do
  echo "== $policy: ${REPLICAS:-2} replicas"
  "$BIN" up "${model_args[@]}" --replicas "${REPLICAS:-2}" --port "$PORT" --policy "$policy" ${GPUS:+--gpus "$GPUS"} \
    -- ${SERVE_ARGS:-} > "$LOG/up-$policy.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
    kill -0 $pid 2>/dev/null || { tail -5 "$LOG/up-$policy.log"; exit 1; }
    sleep 1
  done
  q0=$(counter vllm:prefix_cache_queries_total); h0=$(counter vllm:prefix_cache_hits_total)
  timeout 900 "$BIN" bench serve --port "$PORT" --tokenizer "${TOKENIZER:-${MODEL:-model/demo}}" \
    "${data[@]}" --request-rate "${REQUEST_RATE:-inf}" --burstiness "${BURSTINESS:-1.0}" \
    --num-prompts "${NUM_PROMPTS:-96}" --max-concurrency "${CONC:-8}" --seed 1 \
    --save-result --result-dir "$LOG" --result-filename "$policy.json" > "$LOG/bench-$policy.log" 2>&1
  q1=$(counter vllm:prefix_cache_queries_total); h1=$(counter vllm:prefix_cache_hits_total)
  kill $pid; wait $pid 2>/dev/null || true
  pid=
  rows+=("$(python3 - "$LOG/$policy.json" "$policy" "$q0" "$q1" "$h0" "$h1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
pol, q0, q1, h0, h1 = sys.argv[2], *map(float, sys.argv[3:])
hit = (h1 - h0) / (q1 - q0) if q1 > q0 else float("nan")
print(f"| {pol} | {r['completed']}/{r['completed'] + r['failed']} | {r['output_throughput']:.1f} | "
      f"{r['total_token_throughput']:.1f} | {r['mean_ttft_ms']:.1f} | {r['median_ttft_ms']:.1f} | "
      f"{r['p99_ttft_ms']:.1f} | {100 * hit:.1f}% ({int(h1 - h0)} of {int(q1 - q0)} tokens) |")
EOF
)")
done
echo
echo "| policy | completed | output tok/s | total tok/s | mean TTFT ms | median TTFT ms | P99 TTFT ms | prefix-cache hit rate |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}" | tee "$LOG/table.md"
