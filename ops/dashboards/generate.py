#!/usr/bin/env python3
"""Generates the Grafana dashboards ops/dashboards/{replica,router}.json.

The JSON files are committed (Grafana, the chart's ConfigMaps and reviewers read them); this
script is their source, so panels stay consistent (ids, layout, units, selectors) and a metric
rename is one edit. ops/ci/check-monitoring.sh fails when the committed JSON differs from the
output of this script. Standard library only.

    python3 ops/dashboards/generate.py            # rewrite the JSON files
    python3 ops/dashboards/generate.py --check    # exit 1 if they are stale
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


class Dashboard:
    """Accumulates rows and panels, laying them out on Grafana's 24-column grid."""

    def __init__(self, uid, title, description, tags):
        self.uid, self.title, self.description, self.tags = uid, title, description, tags
        self.panels = []
        self.variables = []
        self.links = []
        self._id = 0
        self._x = 0
        self._y = 0
        self._row_h = 0

    def _next_id(self):
        self._id += 1
        return self._id

    def row(self, title):
        self._newline()
        self.panels.append({
            "type": "row", "id": self._next_id(), "title": title, "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y}, "panels": [],
        })
        self._y += 1

    def _newline(self):
        if self._x:
            self._y += self._row_h
        self._x, self._row_h = 0, 0

    def _place(self, w, h):
        if self._x + w > 24:
            self._newline()
        pos = {"h": h, "w": w, "x": self._x, "y": self._y}
        self._x += w
        self._row_h = max(self._row_h, h)
        return pos

    def timeseries(self, title, description, targets, unit="short", w=12, h=8, stack=False,
                   min_zero=True, max_value=None):
        defaults = {
            "unit": unit,
            "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if not stack else 40,
                       "showPoints": "never", "spanNulls": False,
                       "stacking": {"mode": "normal" if stack else "none", "group": "A"}},
        }
        if min_zero:
            defaults["min"] = 0
        if max_value is not None:
            defaults["max"] = max_value
        self.panels.append({
            "type": "timeseries", "id": self._next_id(), "title": title, "description": description,
            "datasource": DS, "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "calcs": ["mean", "max", "lastNotNull"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": _targets(targets),
        })

    def stat(self, title, description, expr, unit="short", w=4, h=4, thresholds=None, decimals=None):
        steps = [{"color": "green", "value": None}]
        for value, color in thresholds or []:
            steps.append({"color": color, "value": value})
        defaults = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}
        if decimals is not None:
            defaults["decimals"] = decimals
        self.panels.append({
            "type": "stat", "id": self._next_id(), "title": title, "description": description,
            "datasource": DS, "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto",
                        "justifyMode": "auto", "orientation": "auto"},
            "targets": _targets([(expr, title)]),
        })

    def table(self, title, description, expr, w=24, h=6):
        self.panels.append({
            "type": "table", "id": self._next_id(), "title": title, "description": description,
            "datasource": DS, "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": {}, "overrides": []},
            "options": {"showHeader": True},
            "transformations": [{"id": "labelsToFields", "options": {}},
                                {"id": "organize", "options": {"excludeByName": {
                                    "Time": True, "Value": True, "__name__": True, "job": True}}}],
            "targets": [{"datasource": DS, "refId": "A", "expr": expr, "instant": True,
                         "range": False, "format": "table", "legendFormat": "__auto"}],
        })

    def query_variable(self, name, label, query, include_all=True):
        self.variables.append({
            "type": "query", "name": name, "label": label, "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
            "refresh": 2, "sort": 1, "multi": True, "includeAll": include_all,
            "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [], "hide": 0, "regex": "",
        })

    def to_json(self):
        self._newline()
        return {
            "uid": self.uid, "title": self.title, "description": self.description,
            "tags": self.tags, "editable": True, "graphTooltip": 1, "schemaVersion": 39,
            "version": 1, "refresh": "30s", "time": {"from": "now-3h", "to": "now"},
            "timepicker": {}, "timezone": "browser", "fiscalYearStartMonth": 0, "liveNow": False,
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                "name": "Annotations & Alerts", "type": "dashboard"}]},
            "links": self.links,
            "templating": {"list": [{
                "type": "datasource", "name": "datasource", "label": "Data source",
                "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": "",
                "options": []}] + self.variables},
            "panels": self.panels,
        }


def _targets(targets):
    out = []
    for i, (expr, legend) in enumerate(targets):
        out.append({"datasource": DS, "refId": chr(ord("A") + i), "expr": expr,
                    "legendFormat": legend, "range": True})
    return out


def _quantiles(metric, sel, by="le", qs=(0.5, 0.9, 0.99)):
    return [(f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{sel}[{RATE}])))",
             f"p{int(q * 100)}") for q in qs]


def replica_dashboard():
    d = Dashboard("glmfleet-replica", "glmfleet / Replicas",
                  "glmfleet replicas (vLLM-compatible metrics): throughput, latency quantiles, "
                  "scheduler queues, KV and prefix cache, preemptions, speculative decoding, errors.",
                  ["glmfleet", "llm", "vllm"])
    d.query_variable("namespace", "Namespace",
                     'label_values(vllm:num_requests_running{job="glmfleet-replica"}, namespace)')
    d.query_variable("model_name", "Model",
                     'label_values(vllm:num_requests_running{job="glmfleet-replica", '
                     'namespace=~"$namespace"}, model_name)')
    d.query_variable("instance", "Replica",
                     'label_values(vllm:num_requests_running{job="glmfleet-replica", '
                     'namespace=~"$namespace", model_name=~"$model_name"}, instance)')
    d.links.append({"title": "Router", "type": "link", "url": "/d/glmfleet-router",
                    "keepTime": True, "includeVars": False, "icon": "dashboard",
                    "targetBlank": False, "asDropdown": False, "tags": []})
    s = '{job="glmfleet-replica", namespace=~"$namespace", model_name=~"$model_name", instance=~"$instance"}'
    up = '{job="glmfleet-replica", namespace=~"$namespace", instance=~"$instance"}'

    d.row("Overview")
    d.stat("Replicas up", "Replica scrape targets that answer /metrics.",
           f"sum(up{up})", decimals=0)
    d.stat("Running", "Requests in running batches, all selected replicas.",
           f"sum(vllm:num_requests_running{s})", decimals=0)
    d.stat("Waiting", "Requests queued on the replicas.", f"sum(vllm:num_requests_waiting{s})",
           thresholds=[(8, "orange"), (32, "red")], decimals=0)
    d.stat("Output tokens/s", "Generated tokens per second.",
           f"sum(rate(vllm:generation_tokens_total{s}[{RATE}]))", decimals=0)
    d.stat("KV cache (max)", "Fullest KV cache among the selected replicas.",
           f"max(vllm:kv_cache_usage_perc{s})", unit="percentunit",
           thresholds=[(0.85, "orange"), (0.95, "red")])
    d.stat("Prefix cache hit rate", "Prompt tokens served from the prefix cache.",
           f"sum(rate(vllm:prefix_cache_hits_total{s}[{RATE}])) / "
           f"sum(rate(vllm:prefix_cache_queries_total{s}[{RATE}]))", unit="percentunit")

    d.row("Throughput")
    d.timeseries("Token throughput", "Prefill (prompt) and decode (generation) tokens per second.", [
        (f"sum(rate(vllm:prompt_tokens_total{s}[{RATE}]))", "prompt"),
        (f"sum(rate(vllm:generation_tokens_total{s}[{RATE}]))", "generation"),
    ], unit="short")
    d.timeseries("Finished requests by reason", "Requests finished per second: stop, length, abort, error.", [
        (f"sum by (finished_reason) (rate(vllm:request_success_total{s}[{RATE}]))", "{{finished_reason}}"),
    ], unit="reqps", stack=True)
    d.timeseries("Output tokens/s per replica", "Decode throughput of each replica.", [
        (f"sum by (instance) (rate(vllm:generation_tokens_total{s}[{RATE}]))", "{{instance}}"),
    ])
    d.timeseries("Tokens per engine step", "Tokens processed per scheduler iteration (batch size in tokens).",
                 _quantiles("vllm:iteration_tokens_total", s))

    d.row("Latency")
    d.timeseries("Time to first token", "TTFT quantiles over the selected replicas.",
                 _quantiles("vllm:time_to_first_token_seconds", s), unit="s")
    d.timeseries("Inter-token latency", "Gap between consecutive output tokens (ITL).",
                 _quantiles("vllm:inter_token_latency_seconds", s), unit="s")
    d.timeseries("Time per output token", "Per-request mean decode time per token (TPOT).",
                 _quantiles("vllm:time_per_output_token_seconds", s), unit="s")
    d.timeseries("End-to-end latency", "Arrival to last token.",
                 _quantiles("vllm:e2e_request_latency_seconds", s), unit="s")
    d.timeseries("Request phases (p90)", "Where requests spend their time: queue, prefill, decode.", [
        (f"histogram_quantile(0.9, sum by (le) (rate(vllm:request_queue_time_seconds_bucket{s}[{RATE}])))", "queue"),
        (f"histogram_quantile(0.9, sum by (le) (rate(vllm:request_prefill_time_seconds_bucket{s}[{RATE}])))", "prefill"),
        (f"histogram_quantile(0.9, sum by (le) (rate(vllm:request_decode_time_seconds_bucket{s}[{RATE}])))", "decode"),
    ], unit="s")
    d.timeseries("TTFT p99 per replica", "Spot a slow replica.", [
        (f"histogram_quantile(0.99, sum by (instance, le) (rate(vllm:time_to_first_token_seconds_bucket{s}[{RATE}])))",
         "{{instance}}"),
    ], unit="s")

    d.row("Scheduler and KV cache")
    d.timeseries("Running and waiting requests", "Scheduler state of each replica.", [
        (f"sum by (instance) (vllm:num_requests_running{s})", "running {{instance}}"),
        (f"sum by (instance) (vllm:num_requests_waiting{s})", "waiting {{instance}}"),
    ])
    d.timeseries("KV cache usage", "Fraction of KV blocks in use per replica.", [
        (f"max by (instance) (vllm:kv_cache_usage_perc{s})", "{{instance}}"),
    ], unit="percentunit", max_value=1)
    d.timeseries("Prefix cache hit rate", "Prompt tokens found in the prefix cache, per replica.", [
        (f"sum by (instance) (rate(vllm:prefix_cache_hits_total{s}[{RATE}])) / "
         f"sum by (instance) (rate(vllm:prefix_cache_queries_total{s}[{RATE}]))", "{{instance}}"),
    ], unit="percentunit", max_value=1)
    d.timeseries("Preemptions", "Requests preempted per second (KV pressure).", [
        (f"sum by (instance) (rate(vllm:num_preemptions_total{s}[{RATE}]))", "{{instance}}"),
    ], unit="reqps")

    d.row("Speculative decoding (MTP)")
    d.timeseries("Draft acceptance rate", "Draft tokens the target model accepted, per replica "
                 "(--speculative-config; empty without speculation).", [
        (f"sum by (instance) (rate(vllm:spec_decode_num_accepted_tokens_total{s}[{RATE}])) / "
         f"sum by (instance) (rate(vllm:spec_decode_num_draft_tokens_total{s}[{RATE}]))", "{{instance}}"),
    ], unit="percentunit", max_value=1)
    d.timeseries("Tokens per speculative step", "Mean tokens a drafting sequence gains per step: "
                 "1 + accepted drafts per draft.", [
        (f"1 + sum by (instance) (rate(vllm:spec_decode_num_accepted_tokens_total{s}[{RATE}])) / "
         f"sum by (instance) (rate(vllm:spec_decode_num_drafts_total{s}[{RATE}]))", "{{instance}}"),
    ])
    d.timeseries("Acceptance by draft position", "Share of drafts whose k-th token was accepted.", [
        (f"sum by (position) (rate(vllm:spec_decode_num_accepted_tokens_per_pos_total{s}[{RATE}])) / "
         f"ignoring(position) group_left sum(rate(vllm:spec_decode_num_drafts_total{s}[{RATE}]))",
         "position {{position}}"),
    ], unit="percentunit", max_value=1)

    d.row("Errors")
    d.timeseries("Aborted and failed requests", "Requests that ended with abort (client gone, timeout) or error.", [
        (f'sum by (instance, finished_reason) (rate(vllm:request_success_total{{job="glmfleet-replica", '
         f'namespace=~"$namespace", model_name=~"$model_name", instance=~"$instance", '
         f'finished_reason=~"abort|error"}}[{RATE}]))', "{{finished_reason}} {{instance}}"),
    ], unit="reqps")
    d.timeseries("Error ratio", "Share of finished requests that ended with error.", [
        (f'sum(rate(vllm:request_success_total{{job="glmfleet-replica", namespace=~"$namespace", '
         f'model_name=~"$model_name", instance=~"$instance", finished_reason="error"}}[{RATE}])) / '
         f"sum(rate(vllm:request_success_total{s}[{RATE}]))", "error ratio"),
    ], unit="percentunit")
    d.table("Cache configuration", "vllm:cache_config_info labels of each replica.",
            f"vllm:cache_config_info{s}")
    return d


def router_dashboard():
    d = Dashboard("glmfleet-router", "glmfleet / Router",
                  "glmfleet prefix-hash router: requests per replica, affinity hit rate, load skew, "
                  "retries, ejections, rejections (429/503) and the latency the router adds.",
                  ["glmfleet", "llm", "router"])
    d.query_variable("namespace", "Namespace",
                     'label_values(glmfleet_router_requests_total{job="glmfleet-router"}, namespace)')
    d.query_variable("instance", "Router",
                     'label_values(glmfleet_router_requests_total{job="glmfleet-router", '
                     'namespace=~"$namespace"}, instance)')
    d.links.append({"title": "Replicas", "type": "link", "url": "/d/glmfleet-replica",
                    "keepTime": True, "includeVars": False, "icon": "dashboard",
                    "targetBlank": False, "asDropdown": False, "tags": []})
    s = '{job="glmfleet-router", namespace=~"$namespace", instance=~"$instance"}'

    def sel(extra):
        return '{job="glmfleet-router", namespace=~"$namespace", instance=~"$instance", ' + extra + "}"

    s5xx = sel('status=~"5.."')
    s_routed = sel('replica!=""')
    hit_rate = (f"sum(rate(glmfleet_router_affinity_hits_total{s}[{RATE}])) / "
                f"(sum(rate(glmfleet_router_affinity_hits_total{s}[{RATE}])) + "
                f"sum(rate(glmfleet_router_spills_total{s}[{RATE}])))")

    d.row("Overview")
    d.stat("Requests/s", "Client requests per second through the selected routers.",
           f"sum(rate(glmfleet_router_requests_total{s}[{RATE}]))", unit="reqps")
    d.stat("5xx ratio", "Share of client requests answered with a server error.",
           f'sum(rate(glmfleet_router_requests_total{s5xx}[{RATE}])) / '
           f"sum(rate(glmfleet_router_requests_total{s}[{RATE}]))", unit="percentunit",
           thresholds=[(0.01, "orange"), (0.05, "red")])
    d.stat("Affinity hit rate", "Requests placed on their prefix-hash owner (not spilled).",
           hit_rate, unit="percentunit")
    d.stat("Healthy replicas", "Replicas in rotation, as seen by the router that sees fewest.",
           f"min(sum by (instance) (glmfleet_router_replica_healthy{s}))", decimals=0)
    d.stat("Rejected/s", "Requests refused with 429/503.",
           f"sum(rate(glmfleet_router_rejected_total{s}[{RATE}]))", unit="reqps",
           thresholds=[(0.01, "orange"), (1, "red")])
    d.stat("Added latency p99", "Router overhead: arrival to upstream request sent.",
           f"histogram_quantile(0.99, sum by (le) (rate(glmfleet_router_added_latency_seconds_bucket{s}[{RATE}])))",
           unit="s", thresholds=[(0.02, "orange"), (0.05, "red")])

    d.row("Traffic and balance")
    d.timeseries("Requests per replica", "Requests per second sent to each replica.", [
        (f'sum by (replica) (rate(glmfleet_router_requests_total{s_routed}[{RATE}]))', "{{replica}}"),
    ], unit="reqps", stack=True)
    d.timeseries("Responses by status", "Client responses per second by HTTP status.", [
        (f"sum by (status) (rate(glmfleet_router_requests_total{s}[{RATE}]))", "{{status}}"),
    ], unit="reqps", stack=True)
    d.timeseries("In-flight per replica", "Requests in flight to each replica (all routers).", [
        (f"sum by (replica) (glmfleet_router_inflight{s})", "{{replica}}"),
    ])
    d.timeseries("Load skew", "Busiest replica over the mean (1 = perfectly even): in-flight "
                 "requests and request rate. The load bound caps in-flight skew near its factor.", [
        (f"max(sum by (replica) (glmfleet_router_inflight{s})) / "
         f"avg(sum by (replica) (glmfleet_router_inflight{s}))", "in-flight max/mean"),
        (f'max(sum by (replica) (rate(glmfleet_router_requests_total{s_routed}[{RATE}]))) / '
         f'avg(sum by (replica) (rate(glmfleet_router_requests_total{s_routed}[{RATE}])))',
         "request rate max/mean"),
    ], min_zero=False)

    d.row("Prefix affinity")
    d.timeseries("Affinity hit rate", "Share of requests placed on their prefix-hash owner; the rest "
                 "spilled because the owner was above the load bound.", [
        (hit_rate, "hit rate"),
    ], unit="percentunit", max_value=1)
    d.timeseries("Affinity hits and spills", "Placement decisions per second.", [
        (f"sum(rate(glmfleet_router_affinity_hits_total{s}[{RATE}]))", "affinity hits"),
        (f"sum(rate(glmfleet_router_spills_total{s}[{RATE}]))", "spills"),
    ], unit="reqps")

    d.row("Reliability")
    d.timeseries("Retries", "Upstream attempts retried on another replica (before the first byte).", [
        (f"sum(rate(glmfleet_router_retries_total{s}[{RATE}]))", "retries"),
    ], unit="reqps", w=8)
    d.timeseries("Ejections", "Replicas taken out of rotation, per replica.", [
        (f"sum by (replica) (increase(glmfleet_router_ejections_total{s}[{RATE}]))", "{{replica}}"),
    ], w=8)
    d.timeseries("Rejections (429/503)", "Requests refused by the router, by reason.", [
        (f"sum by (reason) (rate(glmfleet_router_rejected_total{s}[{RATE}]))", "{{reason}}"),
    ], unit="reqps", w=8)
    d.timeseries("Upstream errors per replica", "Failed attempts (connect, reset, 5xx) per replica.", [
        (f"sum by (replica) (rate(glmfleet_router_upstream_errors_total{s}[{RATE}]))", "{{replica}}"),
    ], unit="reqps")
    d.timeseries("Replica health", "1 while a replica is in rotation (lowest value over the routers).", [
        (f"min by (replica) (glmfleet_router_replica_healthy{s})", "{{replica}}"),
    ], max_value=1)

    d.row("Router latency")
    d.timeseries("Added latency", "Time the router adds before the upstream request is sent.",
                 _quantiles("glmfleet_router_added_latency_seconds", s), unit="s", w=24)
    return d


def render(d):
    return json.dumps(d.to_json(), indent=2, sort_keys=False) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed JSON is stale")
    ap.add_argument("--out", type=Path, default=HERE, help="output directory")
    args = ap.parse_args()
    stale = []
    for name, build in (("replica.json", replica_dashboard), ("router.json", router_dashboard)):
        text = render(build())
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("stale (run python3 ops/dashboards/generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
