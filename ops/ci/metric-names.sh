#!/usr/bin/env bash
# Prints every metric name the Grafana dashboards (ops/dashboards/*.json, queries and
# variables) and the alert rules (ops/alerts/*.yaml) use, one per line, sorted; names as
# queried, so histograms appear with their _bucket/_count suffix. Series Prometheus makes itself
# (up, scrape_*) are left out unless --include-synthetic is given. Installs its Python
# dependencies (ops/ci/lib.sh) on first use; log lines go to stderr.
set -euo pipefail
# shellcheck source=ops/ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_py
exec "$PY" "$CI_DIR/monitoring.py" names "$@"
