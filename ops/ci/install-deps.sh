#!/usr/bin/env bash
# Installs, idempotently, what the tests need beyond the Rust toolchain: promtool (Debian's prometheus
# package: `promtool check metrics` on /metrics, and a real Prometheus scraping the local fleet) and the
# official `openai` Python client (end-to-end API tests).
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # the package starts a system service on some images; the tests run their own instances
  (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || pkill -x prometheus || true) >/dev/null 2>&1
fi
if ! python3 -c "import openai" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check "openai>=1.40,<4"
fi
command -v promtool >/dev/null && python3 -c "import openai; print('openai', openai.__version__)"
