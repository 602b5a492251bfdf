#!/usr/bin/env bash
# Builds here (no GPU needed) what ops/perf/gpu.sh runs on the GPU machine, stripped and xz'd into
# .gpu/ (git-ignored through .git/info/exclude): the GPU parity tests, the gpu_perf benchmark and the
# glmfleet binary with the GPU engine. CUDA 13.0 driver API on the H200 machines.
set -euo pipefail
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
mkdir -p .gpu
cargo build --release -p glmfleet --features gpu
cargo build --release -p model --features gpu --example gpu_perf
tests=$(cargo test --release -p model --features gpu --test gpu --no-run --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
cp target/release/glmfleet .gpu/glmfleet
cp target/release/examples/gpu_perf .gpu/gpu_perf
cp "$tests" .gpu/gpu-tests
strip .gpu/glmfleet .gpu/gpu_perf .gpu/gpu-tests
for f in glmfleet gpu_perf gpu-tests; do xz -T2 -6 -f -k .gpu/$f; rm .gpu/$f; done
ls -la .gpu
