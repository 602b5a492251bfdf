#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time, one after another.
#
#   FUZZ_MODE=smoke (the default when CI is set): unoptimised build without sanitizer (about two
#     minutes on two cores), 15 s per target: catches regressions on the seeds and their
#     neighbourhood within CI's budget.
#   FUZZ_MODE=campaign (the default otherwise): optimised build with the address sanitizer and
#     debug assertions (about six minutes), for long runs: FUZZ_SECONDS=300 ops/ci/fuzz.sh
#
# The machine has only the stable toolchain: cargo-fuzz's nightly flags (-Zsanitizer, sancov
# passes) are accepted by stable rustc with RUSTC_BOOTSTRAP=1, and the address sanitizer runtime
# ships with stable. Each target starts from its committed seeds (fuzz/corpus/<target>, read
# only) plus a working corpus (fuzz/corpus-work/<target>, git-ignored, kept between runs).
# libFuzzer enforces: no panic (a crash), no input running over FUZZ_TIMEOUT seconds (a hang),
# no RSS over FUZZ_RSS_LIMIT_MB and no single allocation over FUZZ_MALLOC_LIMIT_MB. A crash
# leaves its input in fuzz/artifacts/<target>/ and fails the script after all targets ran.
#
# Environment: FUZZ_MODE, FUZZ_SECONDS (15), FUZZ_TARGETS (all; space-separated names),
# FUZZ_SANITIZER (address | none; overrides the mode's), FUZZ_TIMEOUT (10), FUZZ_RSS_LIMIT_MB
# (2048), FUZZ_MALLOC_LIMIT_MB (1024, enforced with the address sanitizer),
# FUZZ_MAX_LEN (4096), FUZZ_REPORT (file for the summary table); CARGO_BUILD_JOBS as usual.
set -euo pipefail
cd "$(dirname "$0")/../.."

CARGO_FUZZ_VERSION=0.13.2
mode=${FUZZ_MODE:-$([ -n "${CI:-}" ] && echo smoke || echo campaign)}
seconds=${FUZZ_SECONDS:-15}
case "$mode" in
  smoke) profile=debug; sanitizer=${FUZZ_SANITIZER:-none}; build_flags=(--dev) ;;
  campaign) profile=release; sanitizer=${FUZZ_SANITIZER:-address}
    build_flags=(--debug-assertions --codegen-units 16) ;;
  *) echo "FUZZ_MODE must be smoke or campaign, not $mode" >&2; exit 2 ;;
esac
timeout_s=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_LIMIT_MB:-2048}
malloc_mb=${FUZZ_MALLOC_LIMIT_MB:-1024}
max_len=${FUZZ_MAX_LEN:-4096}
report=${FUZZ_REPORT:-}
triple=x86_64-unknown-linux-gnu

# Cargo runs under the shared lock when the machine has one (several builders, one CPU budget).
cargo_locked() {
  if command -v flock >/dev/null 2>&1; then
    flock /tmp/cargo.lock cargo "$@"
  else
    cargo "$@"
  fi
}

if ! cargo fuzz --version 2>/dev/null | grep -q " ${CARGO_FUZZ_VERSION}\$"; then
  echo "installing cargo-fuzz ${CARGO_FUZZ_VERSION}"
  cargo_locked install cargo-fuzz --version "${CARGO_FUZZ_VERSION}" --locked
fi

all_targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^glmfleet')
targets=${FUZZ_TARGETS:-$all_targets}

build_flags+=(--sanitizer "$sanitizer")
echo "=== cargo fuzz build ($mode: $profile profile, sanitizer $sanitizer, debug assertions)"
build_start=$(date +%s)
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo_locked fuzz build "${build_flags[@]}")
echo "build took $(( $(date +%s) - build_start ))s"

bin_dir=fuzz/target/$triple/$profile
failed=()
summary=$(printf '| target | seconds | executions | exec/s | corpus | result |\n|---|---:|---:|---:|---:|---|')
for t in $targets; do
  work=fuzz/corpus-work/$t
  seeds=fuzz/corpus/$t
  mkdir -p "$work" "fuzz/artifacts/$t" "$seeds"
  log=$(mktemp)
  echo "=== fuzz $t for ${seconds}s"
  set +e
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0} "$bin_dir/$t" \
    -max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" \
    -malloc_limit_mb="$malloc_mb" -max_len="$max_len" -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" "$work" "$seeds" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(find "$work" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    result=ok
    grep -E '^Done [0-9]+ runs' "$log" || true
  else
    result="FAILED (rc $rc)"
    failed+=("$t")
    tail -n 60 "$log"
    echo "reproduce: $bin_dir/$t $(ls -t "fuzz/artifacts/$t"/* 2>/dev/null | head -1)"
  fi
  summary+=$(printf '\n| %s | %s | %s | %s | %s | %s |' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "$corpus" "$result")
  rm -f "$log"
done

echo
echo "$summary"
[ -n "$report" ] && echo "$summary" >"$report"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]}"
  exit 1
fi
echo "all fuzz targets ran ${seconds}s without a finding"
