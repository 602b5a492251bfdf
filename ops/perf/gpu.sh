#!/usr/bin/env bash
# The GPU measurement run (on the device machine, from the repo root): parity tests, kernel and
# model benchmarks, the cuBLAS/PyTorch counterparts, and `bench serve` against one replica of
# GLM-4.5-Air-FP8 with dummy weights. Binaries come prebuilt in .gpu/ (ops/perf/gpu-build.sh here).
#
#   ops/perf/gpu.sh [tests] [spec] [perf] [sweep] [variants] [trace] [ncu] [torch] [bench] [guide] [sampling] [fleet] [routing]
#   (tests perf torch bench when none is named)
#   sweep: the batch 1-64 decode step under each setting of the switches that need no restart (gpu_perf --sweep)
#   variants: the same step's defaults under each kernel build in KERNEL_VARIANTS, a process each ("|" between
#   builds, each a GLMFLEET_KERNEL_DEFINES value, "-" for none: e.g. "-|GLMFLEET_ATTN_LONE=1|-")
#   trace: each kernel's timeline inside one graph-replayed decode step at TRACE_BATCHES (1,8,64), with the
#   kernels built with their timeline marks (GLMFLEET_TRACE=1; trace_summary.py tabulates it)
#   guide: the recipe guide's prompt-heavy 8000/1000 and decode-heavy 1000/8000 (GUIDE_PROMPTS, 16 each)
#   against one server start (--max-model-len 9216)
#   sampling: 1000/200 all greedy (drawn on the device), all top-p (every row sampled on the host),
#   and mixed (7 in 8 greedy, 1 in 8 with logprobs, two clients at once) against one server start,
#   then top-p drawn on the device against a second (GLMFLEET_DEVICE_TRUNCATION=1; SAMPLING_TRUNCATION=0
#   skips it)
#   ncu: per-kernel times (NCU_BATCHES), NCU_SOURCE's warp-stall samples per SASS line, NCU_DETAIL's sections
#   fleet: one replica per GPU behind the router against N × one replica served directly
#   (fleet-scaling.sh, 1000/1000 at FLEET_CONC 128 per replica); routing: prefix-hash against round
#   robin on prefix-repetition traffic over all GPUs (routing-compare.sh; ROUTING_PREFIXES, ROUTING_CONC and
#   ROUTING_SERVE_ARGS, e.g. --num-gpu-blocks-override, set the cache pressure). Both need 2 or more GPUs.
#   env: NUM_PROMPTS IN_LEN OUT_LEN CONC MAX_LEN (bench: 256 / 1000 / 1000 / 64 / 4096), EXTRA_SERVE_ARGS,
#   BENCH_ARGS (more `bench serve` flags, e.g. --temperature 0), PORT (bench 8011, guide 8012, sampling 8013)
# Logs and JSON land in $LOG, packed into $OUT/gpu-<stages>.tgz when $OUT is set (the device tool).
set -uo pipefail
LOG=${LOG:-/tmp/glmfleet-gpu}
mkdir -p "$LOG"
B=.gpu
# unpacked once: two runs of this script can share a host, one per GPU (CUDA_VISIBLE_DEVICES)
for f in "$B"/*.xz; do [ -e "${f%.xz}" ] && [ ! "$f" -nt "${f%.xz}" ] || xz -dkf "$f"; done
chmod +x "$B"/gpu-tests "$B"/gpu_perf "$B"/glmfleet 2>/dev/null
stages=${*:-tests perf torch bench}
has() { [[ " $stages " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$LOG/gpu.txt"
export GLMFLEET_FIXTURES=$PWD/tests/fixtures RUST_BACKTRACE=1
# cuBLASLt (large dense GEMMs) is loaded at run time: the CUDA toolkit's, else PyTorch's wheel
lt=$(ls /usr/local/cuda/lib64/libcublasLt.so.* 2>/dev/null | head -1)
[ -n "$lt" ] || lt=$(python3 -c "import glob, site; print(next(iter(sorted(p for d in site.getsitepackages() for p in glob.glob(d + '/nvidia/*/lib/libcublasLt.so*'))), ''))" 2>/dev/null)
[ -n "$lt" ] && export LD_LIBRARY_PATH=$(dirname "$lt")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "cuBLASLt: ${lt:-not found}"

# Waits up to 240 s for the server on port $1 (process $2) to answer /health, or for it to exit.
wait_healthy() {
  for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$1/health" > /dev/null && return
    kill -0 "$2" 2>/dev/null || return
    sleep 1
  done
}

if has tests; then
  echo "== parity tests"
  timeout 300 "$B"/gpu-tests --test-threads=1 --nocapture 2>&1 | tee "$LOG/tests.log" | grep -Ev '^\s*$'
fi
if has spec; then
  echo "== speculative decoding through the binary: greedy with and without MTP drafts (tiny-a)"
  LOG=$LOG timeout 300 python3 ops/perf/spec_check.py "$B"/glmfleet tests/fixtures/tiny-a \
    --tokenizer-from model/demo --k "${SPEC_K:-2}" 2>&1 | tee "$LOG/spec-check.log"
fi
if has perf; then
  echo "== kernel and model benchmarks"
  timeout 420 "$B"/gpu_perf ops/perf/glm-4.5-air-fp8-dummy "$LOG/perf.json" ${PERF_ARGS:-} 2>&1 | tee "$LOG/perf.log"
fi
if has sweep; then
  echo "== decode step at batch 1-64 under each switch setting (gpu_perf --sweep)"
  timeout 300 "$B"/gpu_perf ops/perf/glm-4.5-air-fp8-dummy "$LOG/sweep.json" --sweep 2>&1 | tee "$LOG/sweep.log"
fi
if has variants; then
  echo "== decode step at batch 1-64 under each kernel build (gpu_perf --sweep-defaults)"
  IFS='|' read -ra vs <<< "${KERNEL_VARIANTS:--}"
  i=0
  for v in "${vs[@]}"; do
    i=$((i + 1)); [ "$v" = "-" ] && v=""
    echo "-- build $i: GLMFLEET_KERNEL_DEFINES='$v'"
    GLMFLEET_KERNEL_DEFINES="$v" timeout 200 "$B"/gpu_perf ops/perf/glm-4.5-air-fp8-dummy \
      "$LOG/variant-$i.json" --sweep-defaults 2>&1 | tee "$LOG/variant-$i.log" | grep -E '^\||defaults:'
  done
fi
if has trace; then
  echo "== step timeline: each kernel's phases in one decode step (GLMFLEET_TRACE=1 gpu_perf --trace-step)"
  GLMFLEET_TRACE=1 timeout 300 "$B"/gpu_perf ops/perf/glm-4.5-air-fp8-dummy "$LOG/trace" \
    --trace-step "${TRACE_BATCHES:-1,8,64}" 2>&1 | tee "$LOG/trace.log"
  for f in "$LOG"/trace-b*.bin; do
    [ -e "$f" ] || continue
    python3 ops/perf/trace_summary.py "$f" --layer "${TRACE_LAYER:-10}" 2>&1 | tee "${f%.bin}.txt"
    xz -f "$f"
  done
fi
if has ncu; then
  # ncu over gpu_perf's one profiled decode step at batch $1; ncu's flags follow
  ncu_step() {
    local b=$1
    shift
    timeout 200 ncu --clock-control none --cache-control none --profile-from-start off "$@" \
      "$B"/gpu_perf ops/perf/glm-4.5-air-fp8-dummy --ncu-step "$b"
  }
  echo "== per-kernel times of one decode step (ncu; 4 layers stand for the model)"
  for b in ${NCU_BATCHES-1 64 256}; do
    ncu_step "$b" --metrics gpu__time_duration.sum --csv > "$LOG/ncu-b$b.csv" 2> "$LOG/ncu-b$b.err"
    echo "-- batch $b"; python3 ops/perf/ncu_summary.py "$LOG/ncu-b$b.csv" 2>&1 | tee "$LOG/ncu-b$b.txt"
  done
  # NCU_SOURCE="BATCH:KERNEL_REGEX:SKIP" ...: one launch's warp-stall samples per SASS line (ncu_source.py);
  # the profiled step has 4 layers (one dense, three MoE), so SKIP is at most 3 for a layer's kernel and 2
  # for a MoE one, and the FP8 kernels are named by instantiation (gemv_fp8_c0, moe_gemv_fp8_dn_c, ...)
  for spec in ${NCU_SOURCE:-}; do
    IFS=: read -r b k skip <<< "$spec"
    rep="$LOG/ncu-source-b$b-${k//[^a-z0-9]/_}"
    echo "-- source: $k at batch $b (launch $skip)"
    ncu_step "$b" --kernel-name "regex:$k" --launch-skip "${skip:-0}" --launch-count 1 \
      --section SourceCounters --section WarpStateStats -f -o "$rep" > "$rep.log" 2>&1
    ncu -i "$rep.ncu-rep" --page source --print-source sass --csv > "$rep.csv" 2>&1
    python3 ops/perf/ncu_source.py "$rep.csv" 2>&1 | tee "$rep.txt" | head -80
    xz -f "$rep.csv"; rm -f "$rep.ncu-rep"
  done
  # NCU_DETAIL="BATCH:KERNEL_REGEX:SKIP" ...: speed-of-light, occupancy and stall reasons of one launch
  for spec in ${NCU_DETAIL:-}; do
    IFS=: read -r b k skip <<< "$spec"
    echo "-- detail: $k at batch $b (launch $skip)"
    ncu_step "$b" --kernel-name "regex:$k" --launch-skip "${skip:-0}" --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis \
      2>&1 | grep -vE '^==PROF==|^\s*$' | tee "$LOG/ncu-detail-b$b-${k//[^a-z0-9]/_}.txt" | tail -90
  done
fi
if has torch; then
  echo "== cuBLAS / PyTorch counterparts"
  timeout 200 python3 ops/perf/torch_baseline.py "$LOG/torch.json" 2>&1 | tee "$LOG/torch.log"
fi
if has bench; then
  echo "== bench serve against one replica"
  MODEL=ops/perf/glm-4.5-air-fp8-dummy
  RUST_LOG=info "$B"/glmfleet serve "$MODEL" --load-format dummy --port "${PORT:-8011}" \
    --gpu-memory-utilization 0.93 --max-model-len "${MAX_LEN:-4096}" --max-num-seqs 256 \
    --max-num-batched-tokens 8192 ${EXTRA_SERVE_ARGS:-} > "$LOG/serve.log" 2>&1 &
  pid=$!
  wait_healthy "${PORT:-8011}" $pid
  grep -m3 -E 'GPU engine|error|Error' "$LOG/serve.log"
  timeout 480 "$B"/glmfleet bench serve --port "${PORT:-8011}" --tokenizer "$MODEL" --dataset-name random \
    --random-input-len "${IN_LEN:-1000}" --random-output-len "${OUT_LEN:-1000}" \
    --num-prompts "${NUM_PROMPTS:-256}" --max-concurrency "${CONC:-64}" --ignore-eos ${BENCH_ARGS:-} \
    --save-result --result-dir "$LOG" 2>&1 | tee "$LOG/bench.log"
  curl -s http://127.0.0.1:${PORT:-8011}/metrics | grep -E '^vllm:(num_preemptions|prompt_tokens|generation_tokens|gpu_cache_usage|spec_decode)' > "$LOG/metrics.txt"
  kill $pid; wait $pid 2>/dev/null
  tail -5 "$LOG/serve.log"
fi
if has guide; then
  echo "== guide workloads: prompt-heavy 8000/1000 and decode-heavy 1000/8000 against one replica"
  MODEL=ops/perf/glm-4.5-air-fp8-dummy
  RUST_LOG=info "$B"/glmfleet serve "$MODEL" --load-format dummy --port "${PORT:-8012}" \
    --gpu-memory-utilization 0.93 --max-model-len 9216 --max-num-seqs 256 \
    --max-num-batched-tokens 8192 ${EXTRA_SERVE_ARGS:-} > "$LOG/serve-guide.log" 2>&1 &
  pid=$!
  wait_healthy "${PORT:-8012}" $pid
  n=${GUIDE_PROMPTS:-16}
  for shape in "8000 1000 prompt-heavy" "1000 8000 decode-heavy"; do
    read -r in out name <<< "$shape"
    echo "-- $name: $in in, $out out, $n prompts at concurrency $n"
    timeout 420 "$B"/glmfleet bench serve --port "${PORT:-8012}" --tokenizer "$MODEL" --dataset-name random \
      --random-input-len "$in" --random-output-len "$out" --num-prompts "$n" --max-concurrency "$n" \
      --ignore-eos --save-result --result-dir "$LOG" --result-filename "guide-$name.json" 2>&1 \
      | tee "$LOG/guide-$name.log"
  done
  kill $pid; wait $pid 2>/dev/null
fi
if has sampling; then
  echo "== sampling paths: device draws, host rows, and batches mixing the two"
  # SAMPLING_MODEL / SAMPLING_SERVE_ARGS replace the full-size defaults (a dry run: demo, "")
  MODEL=${SAMPLING_MODEL:-ops/perf/glm-4.5-air-fp8-dummy}
  tok=$MODEL; [ "$MODEL" = demo ] && tok=model/demo
  # (a variable: a quoted default inside ${...-...} would reach serve as one argument)
  sampling_serve=${SAMPLING_SERVE_ARGS-"--load-format dummy --gpu-memory-utilization 0.93 --max-model-len 4096 \
    --max-num-seqs 256 --max-num-batched-tokens 8192 --kv-cache-dtype fp8 ${EXTRA_SERVE_ARGS:-}"}
  serve_sampling() {  # $1: GLMFLEET_DEVICE_TRUNCATION
    GLMFLEET_DEVICE_TRUNCATION=$1 RUST_LOG=info "$B"/glmfleet serve "$MODEL" --port "${PORT:-8013}" \
      $sampling_serve > "$LOG/serve-sampling-$1.log" 2>&1 &
    pid=$!
    wait_healthy "${PORT:-8013}" $pid
  }
  n=${SAMPLING_PROMPTS:-128} c=${SAMPLING_CONC:-64} out_len=${SAMPLING_OUT_LEN:-200}
  sb() {
    local name=$1 len=$2; shift 2
    timeout 200 "$B"/glmfleet bench serve --port "${PORT:-8013}" --tokenizer "$tok" --dataset-name random \
      --random-input-len "${SAMPLING_IN_LEN:-1000}" --random-output-len "$len" --ignore-eos \
      --save-result --result-dir "$LOG" --result-filename "sampling-$name.json" "$@" \
      > "$LOG/sampling-$name.log" 2>&1
    echo "-- $name"; grep -E 'Successful|Output token throughput|Median TPOT' "$LOG/sampling-$name.log"
  }
  serve_sampling 0
  sb warmup 8 --num-prompts "$c" --max-concurrency "$c"
  sb greedy "$out_len" --num-prompts "$n" --max-concurrency "$c"
  sb top-p "$out_len" --num-prompts "$n" --max-concurrency "$c" --temperature 0.6 --top-p 0.95
  sb mixed-greedy "$out_len" --num-prompts $((n * 7 / 8)) --max-concurrency $((c * 7 / 8)) &
  mg=$!
  sb mixed-logprobs "$out_len" --num-prompts $((n / 8)) --max-concurrency $((c / 8)) --logprobs 5
  wait $mg
  kill $pid; wait $pid 2>/dev/null
  if [ "${SAMPLING_TRUNCATION:-1}" = 1 ]; then
    echo "-- top-p drawn on the device (GLMFLEET_DEVICE_TRUNCATION=1)"
    serve_sampling 1
    sb warmup-truncation 8 --num-prompts "$c" --max-concurrency "$c" --temperature 0.6 --top-p 0.95
    sb top-p-device "$out_len" --num-prompts "$n" --max-concurrency "$c" --temperature 0.6 --top-p 0.95
    kill $pid; wait $pid 2>/dev/null
  fi
fi
# the GPUs of this host as 0,1,...; the fleet stages start one replica per GPU. FLEET_MODEL,
# FLEET_SERVE_ARGS and FLEET_IN_LEN / FLEET_OUT_LEN replace the full-size defaults (a dry run of the
# plumbing with fake replicas: FLEET_MODEL=demo FLEET_SERVE_ARGS="--load-format fake:30ms+20us").
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
ngpu=$(echo "$gpus" | tr ',' '\n' | grep -c .)
fleet_model=${FLEET_MODEL:-ops/perf/glm-4.5-air-fp8-dummy}
fleet_tok=$fleet_model
[ "$fleet_model" = demo ] && fleet_tok=model/demo
fleet_serve=${FLEET_SERVE_ARGS:-"--load-format dummy --kv-cache-dtype fp8 --gpu-memory-utilization 0.93 \
  --max-model-len 4096 --max-num-seqs 256 --max-num-batched-tokens 8192 ${EXTRA_SERVE_ARGS:-}"}
if has fleet; then
  echo "== fleet scaling: $ngpu replicas behind the router against $ngpu x one replica served directly"
  LOG=$LOG/fleet GPUS=$gpus REPLICAS_LIST=$ngpu MODEL=$fleet_model TOKENIZER=$fleet_tok \
    CONC=${FLEET_CONC:-128} PROMPTS_PER_REPLICA=${FLEET_PROMPTS:-128} IN_LEN=${FLEET_IN_LEN:-1000} \
    OUT_LEN=${FLEET_OUT_LEN:-1000} SERVE_ARGS="$fleet_serve" timeout 560 ops/perf/fleet-scaling.sh \
    "$B"/glmfleet 2>&1 | tee "$LOG/fleet.log"
fi
if has routing; then
  echo "== prefix-hash against round robin, prefix-repetition traffic over $ngpu replicas"
  LOG=$LOG/routing GPUS=$gpus REPLICAS=$ngpu MODEL=$fleet_model TOKENIZER=$fleet_tok \
    NUM_PROMPTS=${ROUTING_PROMPTS:-512} CONC=${ROUTING_CONC:-$((64 * ngpu))} PREFIX_LEN=2048 SUFFIX_LEN=128 \
    NUM_PREFIXES=${ROUTING_PREFIXES:-16} OUT_LEN=128 SERVE_ARGS="$fleet_serve ${ROUTING_SERVE_ARGS:-}" \
    timeout 560 ops/perf/routing-compare.sh "$B"/glmfleet 2>&1 \
    | tee "$LOG/routing.log"
fi
ls -la "$LOG"
if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu-${stages// /-}-$(basename "$LOG").tgz" -C "$LOG" .; fi
