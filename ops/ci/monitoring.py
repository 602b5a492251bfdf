#!/usr/bin/env python3
"""Static checks of the monitoring assets: Grafana dashboards and Prometheus alert rules.

Used by ops/ci/check-monitoring.sh and ops/ci/metric-names.sh (needs PyYAML and promql-parser,
both in the venv that ops/ci/lib.sh `ensure_py` creates).

Subcommands:
  lint-dashboards            structure: unique uid and panel ids, ${datasource} everywhere
  dashboard-rules OUT        write every dashboard expression as a recording rule into OUT,
                             for `promtool check rules` (Grafana macros substituted first)
  names [--include-synthetic]
                             metric names used by dashboards and alerts, one per line
  check-names                every used name is declared in ops/metrics-{replica,router}.txt
                             (histogram suffixes only on histograms); report unused ones
"""

import argparse
import json
import re
import sys
from pathlib import Path

import promql_parser
import yaml

OPS = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((OPS / "dashboards").glob("*.json"))
ALERTS = sorted((OPS / "alerts").glob("*.yaml"))
METRIC_LISTS = [OPS / "metrics-replica.txt", OPS / "metrics-router.txt"]
# Series Prometheus creates itself for every target; not exported by glmfleet.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Grafana macros and variables -> values the PromQL parser accepts.
MACROS = [
    (re.compile(r"\$__rate_interval|\$\{__rate_interval\}"), "5m"),
    (re.compile(r"\$__interval|\$\{__interval\}"), "1m"),
    (re.compile(r"\$__range|\$\{__range\}"), "1h"),
    (re.compile(r"\$\{(\w+)(:\w+)?\}|\$(\w+)"), "placeholder"),
]
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$", re.S)


def substitute(expr):
    for pattern, value in MACROS:
        expr = pattern.sub(value, expr)
    return expr


def iter_panels(panels):
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs(path):
    """(location, expr) for every query of a dashboard, variables included."""
    dash = json.loads(path.read_text())
    out = []
    for panel in iter_panels(dash.get("panels", [])):
        for target in panel.get("targets", []):
            if "expr" in target:
                out.append((f"{path.name} panel {panel['id']} ({panel.get('title')}) "
                            f"ref {target.get('refId')}", target["expr"]))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = LABEL_VALUES.match(query)
        out.append((f"{path.name} variable {var['name']}", m.group(1) if m else query))
    return out


def alert_exprs(path):
    doc = yaml.safe_load(path.read_text())
    out = []
    for group in doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            out.append((f"{path.name} {group['name']}/{name}", rule["expr"]))
    return out


def all_exprs():
    exprs = []
    for path in DASHBOARDS:
        exprs += dashboard_exprs(path)
    for path in ALERTS:
        exprs += alert_exprs(path)
    return exprs


def metric_names(expr):
    names = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if not name:
                for m in node.matchers.matchers:
                    if m.name == "__name__":
                        name = m.value
            if not name:
                raise ValueError(f"selector without a metric name: {node}")
            names.add(name)
        return True

    promql_parser.walk(promql_parser.parse(substitute(expr)), visit)
    return names


def cmd_lint_dashboards(_args):
    errors = []
    uids = {}
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        uid = dash.get("uid")
        if not uid or not re.fullmatch(r"[a-z0-9-]{1,40}", uid):
            errors.append(f"{path.name}: missing or odd uid {uid!r}")
        if uid in uids:
            errors.append(f"{path.name}: uid {uid} also used by {uids[uid]}")
        uids[uid] = path.name
        variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
        ds = variables.get("datasource")
        if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
            errors.append(f"{path.name}: needs a datasource variable of type prometheus")
        ids = set()
        for panel in iter_panels(dash.get("panels", [])):
            pid = panel.get("id")
            if pid in ids:
                errors.append(f"{path.name}: duplicate panel id {pid}")
            ids.add(pid)
            if panel.get("type") == "row":
                continue
            if not panel.get("title"):
                errors.append(f"{path.name}: panel {pid} has no title")
            sources = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
            for src in sources:
                if not src or src.get("uid") != "${datasource}":
                    errors.append(f"{path.name}: panel {pid} ({panel.get('title')}) must use "
                                  f"datasource ${{datasource}}, has {src}")
            if not panel.get("targets"):
                errors.append(f"{path.name}: panel {pid} has no query")
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") == "query" and var.get("datasource", {}).get("uid") != "${datasource}":
                errors.append(f"{path.name}: variable {var['name']} must use ${{datasource}}")
    for e in errors:
        print(f"FAIL: {e}", file=sys.stderr)
    if not errors:
        print(f"dashboards: {len(DASHBOARDS)} files, structure ok")
    return 1 if errors else 0


def cmd_dashboard_rules(args):
    rules = []
    for path in DASHBOARDS:
        stem = re.sub(r"[^a-zA-Z0-9_]", "_", path.stem)
        for i, (where, expr) in enumerate(dashboard_exprs(path)):
            rules.append({"record": f"dashboard:{stem}:expr_{i}", "expr": substitute(expr),
                          "labels": {"source": where}})
    Path(args.out).write_text(yaml.safe_dump(
        {"groups": [{"name": "dashboard-expressions", "rules": rules}]}, sort_keys=False))
    print(f"dashboard expressions: {len(rules)} written to {args.out}")
    return 0


def used_names(include_synthetic):
    names = set()
    for where, expr in all_exprs():
        try:
            names |= metric_names(expr)
        except Exception as exc:  # parse errors name the expression's location
            raise SystemExit(f"FAIL: cannot parse {where}: {exc}\n  {expr}")
    if not include_synthetic:
        names -= SYNTHETIC
    return sorted(names)


def cmd_names(args):
    for name in used_names(args.include_synthetic):
        print(name)
    return 0


def declared():
    out = {}
    for path in METRIC_LISTS:
        for line in path.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 4 or fields[1] not in ("counter", "gauge", "histogram"):
                raise SystemExit(f"FAIL: {path.name}: malformed line {line!r} "
                                 "(want name<TAB>type<TAB>labels<TAB>meaning)")
            out[fields[0]] = fields[1]
    return out


def cmd_check_names(_args):
    decl = declared()
    errors, used_families = [], set()
    for name in used_names(include_synthetic=False):
        if name in decl:
            if decl[name] == "histogram":
                errors.append(f"{name} is a histogram: query {name}_bucket/_sum/_count")
            used_families.add(name)
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base and decl.get(base) == "histogram":
            used_families.add(base)
            continue
        errors.append(f"{name} is used but not declared in ops/metrics-*.txt")
    for e in errors:
        print(f"FAIL: {e}", file=sys.stderr)
    unused = sorted(set(decl) - used_families)
    print(f"metric names: {len(used_families)} declared families used, "
          f"{len(unused)} declared but unused{': ' + ', '.join(unused) if unused else ''}")
    return 1 if errors else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("lint-dashboards").set_defaults(fn=cmd_lint_dashboards)
    p = sub.add_parser("dashboard-rules")
    p.add_argument("out")
    p.set_defaults(fn=cmd_dashboard_rules)
    p = sub.add_parser("names")
    p.add_argument("--include-synthetic", action="store_true",
                   help="also print series Prometheus makes itself (up, scrape_*)")
    p.set_defaults(fn=cmd_names)
    sub.add_parser("check-names").set_defaults(fn=cmd_check_names)
    args = ap.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
