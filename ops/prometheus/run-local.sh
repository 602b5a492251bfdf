#!/usr/bin/env bash
# Starts a Prometheus (Debian package) that scrapes a local glmfleet fleet and evaluates the
# alert rules of ops/alerts, in the background, listening on 127.0.0.1 only.
#
#   ops/prometheus/run-local.sh --router 127.0.0.1:8000 --replica 127.0.0.1:8001 \
#       [--replica 127.0.0.1:8002 ...] [--port 9090] [--dir DIR]
#
# Prints PROMETHEUS_URL=..., PROMETHEUS_PID=... and PROMETHEUS_DIR=... (eval-able) once
# Prometheus is ready; stop it with `kill $PROMETHEUS_PID`. Targets can be changed while it runs
# by rewriting $PROMETHEUS_DIR/prometheus/targets/{router,replica}.json.
# Then ops/prometheus/assert-series.sh checks that every metric the dashboards and alerts use
# has series.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=ops/ci/lib.sh
source "$HERE/../ci/lib.sh"

port=9090 dir="" routers=() replicas=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --router) routers+=("$2"); shift 2 ;;
    --replica) replicas+=("$2"); shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
for t in "${routers[@]}" "${replicas[@]}"; do
  [[ "$t" =~ ^(127\.[0-9]+\.[0-9]+\.[0-9]+|localhost|\[::1\]):[0-9]+$ ]] \
    || die "target $t is not a loopback host:port"
done
ensure_promtool
dir="${dir:-$(mktemp -d -t glmfleet-prometheus.XXXXXX)}"
mkdir -p "$dir/prometheus/targets" "$dir/alerts" "$dir/data"
cp "$HERE/prometheus-local.yml" "$dir/prometheus/prometheus.yml"
cp "$HERE"/../alerts/*.yaml "$dir/alerts/"

targets_json() {
  local out="[" sep=""
  for t in "$@"; do out+="$sep{\"targets\": [\"$t\"]}"; sep=", "; done
  printf '%s]\n' "$out"
}
targets_json "${routers[@]}" >"$dir/prometheus/targets/router.json"
targets_json "${replicas[@]}" >"$dir/prometheus/targets/replica.json"

promtool check config "$dir/prometheus/prometheus.yml" >/dev/null
prometheus --config.file="$dir/prometheus/prometheus.yml" --storage.tsdb.path="$dir/data" \
  --storage.tsdb.retention.time=1d --web.listen-address="127.0.0.1:$port" \
  >"$dir/prometheus.log" 2>&1 &
pid=$!
echo "$pid" >"$dir/prometheus.pid"
for _ in $(seq 1 100); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/-/ready', timeout=1)" 2>/dev/null; then
    echo "PROMETHEUS_URL=http://127.0.0.1:$port"
    echo "PROMETHEUS_PID=$pid"
    echo "PROMETHEUS_DIR=$dir"
    exit 0
  fi
  kill -0 "$pid" 2>/dev/null || { cat "$dir/prometheus.log" >&2; die "prometheus exited"; }
  sleep 0.2
done
kill "$pid" 2>/dev/null || true
cat "$dir/prometheus.log" >&2
die "prometheus did not become ready on 127.0.0.1:$port"
