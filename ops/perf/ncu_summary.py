#!/usr/bin/env python3
"""Per-kernel time of one profiled decode step, from `ncu --csv --metrics gpu__time_duration.sum`
output (ops/perf/gpu.sh ncu): kernel, launches, total and mean µs, share of the step.
    ops/perf/ncu_summary.py ncu.csv [layers]"""
import csv, sys, collections

rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"'))
        if r.get("Metric Name") == "gpu__time_duration.sum"]
if not rows:
    sys.exit("no gpu__time_duration rows")
unit = rows[0]["Metric Unit"]
scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[unit]
tot = collections.OrderedDict()
for r in rows:
    name = r["Kernel Name"].split("(")[0]
    key = (name, r["Grid Size"])
    n, t = tot.get(key, (0, 0.0))
    tot[key] = (n + 1, t + float(r["Metric Value"].replace(",", "")) * scale)
step = sum(t for _, t in tot.values())
print(f"| kernel | grid | launches | total µs | mean µs | share |\n|---|---|---|---|---|---|")
for (name, grid), (n, t) in sorted(tot.items(), key=lambda kv: -kv[1][1]):
    print(f"| {name} | {grid} | {n} | {t:.1f} | {t / n:.1f} | {100 * t / step:.1f}% |")
print(f"\n{len(rows)} launches, {step:.1f} µs of kernel time")
