#!/usr/bin/env bash
# Offline checks of the monitoring assets: Grafana dashboards (ops/dashboards), Prometheus
# alert rules and their unit tests (ops/alerts), the metric lists (ops/metrics-*.txt) and the
# local Prometheus config (ops/prometheus). Installs promtool (Debian package prometheus) and a
# Python venv (PyYAML, promql-parser) on first use; exits non-zero on the first failure.
#
#   ops/ci/check-monitoring.sh
#
# Steps:
#   1. the dashboard JSON equals the output of ops/dashboards/generate.py
#   2. dashboard structure (uids, panel ids, ${datasource} everywhere)
#   3. every dashboard expression (panels and variables, Grafana macros substituted) parses:
#      written as recording rules and checked with `promtool check rules`
#   4. `promtool check rules` on ops/alerts/*.yaml
#   5. `promtool test rules` on ops/alerts/tests/*.yaml
#   6. every metric name used by dashboards and alerts is declared in ops/metrics-*.txt
#   7. `promtool check config` on ops/prometheus/prometheus-local.yml
set -euo pipefail
# shellcheck source=ops/ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_promtool
ensure_py
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
OPS="$REPO_ROOT/ops"
steps=0
step() { steps=$((steps + 1)); log "$*"; }

python3 "$OPS/dashboards/generate.py" --check || die "dashboards are stale: run python3 ops/dashboards/generate.py"
step "dashboards match ops/dashboards/generate.py"

"$PY" "$CI_DIR/monitoring.py" lint-dashboards >&2 || die "dashboard structure"
step "dashboard structure ok"

"$PY" "$CI_DIR/monitoring.py" dashboard-rules "$work/dashboard-rules.yaml" >&2
promtool check rules "$work/dashboard-rules.yaml" >"$work/out.txt" 2>&1 \
  || { cat "$work/out.txt" >&2; die "a dashboard expression does not parse"; }
step "dashboard expressions parse ($(grep -c 'record:' "$work/dashboard-rules.yaml") expressions)"

promtool check rules "$OPS"/alerts/*.yaml >"$work/out.txt" 2>&1 \
  || { cat "$work/out.txt" >&2; die "promtool check rules"; }
step "alert rules: $(grep -o 'SUCCESS: [0-9]* rules found' "$work/out.txt" | tr '\n' ' ')"

(cd "$OPS/alerts" && promtool test rules tests/*.yaml) >"$work/out.txt" 2>&1 \
  || { cat "$work/out.txt" >&2; die "promtool test rules"; }
step "alert unit tests: $(grep -c SUCCESS "$work/out.txt") files pass"

"$PY" "$CI_DIR/monitoring.py" check-names >&2 || die "undeclared metric names"
step "metric names declared"

promtool check config "$OPS/prometheus/prometheus-local.yml" >"$work/out.txt" 2>&1 \
  || { cat "$work/out.txt" >&2; die "promtool check config"; }
step "prometheus-local.yml valid"

echo "check-monitoring: $steps passed, 0 failed"
