#!/usr/bin/env bash
# Asserts that a Prometheus (e.g. from ops/prometheus/run-local.sh) has at least one series
# for every metric name the dashboards and alerts use (ops/ci/metric-names.sh), plus `up` == 1
# for every target. Exits 1 and lists what is missing otherwise.
#
#   ops/prometheus/assert-series.sh http://127.0.0.1:9090 [--wait SECONDS]
#
# Series of histograms appear only after the first observation, and some counters only after
# the event (e.g. preemptions, aborts): drive traffic first. Labelled counters must export
# their series at 0 for this check to pass without such events.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
url="${1:?usage: assert-series.sh PROMETHEUS_URL [--wait SECONDS]}"
wait_s=0
if [[ "${2:-}" == "--wait" ]]; then wait_s="${3:?--wait needs seconds}"; fi
names="$("$HERE/../ci/metric-names.sh")"
python3 - "$url" "$wait_s" "$names" <<'PY'
import json, sys, time, urllib.parse, urllib.request
url, wait_s, names = sys.argv[1], float(sys.argv[2]), sys.argv[3].split()

def query(q):
    with urllib.request.urlopen(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": q}), timeout=10) as r:
        return json.load(r)["data"]["result"]

deadline = time.monotonic() + wait_s
while True:
    missing = [n for n in names if not query(f'count({{__name__="{n}"}})')]
    down = [r["metric"] for r in query('up{job=~"glmfleet-.*"} == 0')]
    targets = query('up{job=~"glmfleet-.*"}')
    if (not missing and not down and targets) or time.monotonic() >= deadline:
        break
    time.sleep(2)
for m in missing:
    print(f"MISSING: no series for {m}")
for d in down:
    print(f"DOWN: target {d.get('job')} {d.get('instance')}")
if not targets:
    print("NO TARGETS: no up{job=~\"glmfleet-.*\"} series")
print(f"{len(names) - len(missing)} passed, {len(missing) + len(down) + (0 if targets else 1)} failed")
sys.exit(1 if missing or down or not targets else 0)
PY
