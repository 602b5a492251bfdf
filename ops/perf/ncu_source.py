#!/usr/bin/env python3
"""Where one kernel launch's warps stalled, instruction by instruction, from
`ncu -i REP --page source --print-source sass --csv` (ops/perf/gpu.sh ncu with NCU_SOURCE): the samples
by stall reason, the SASS lines with the most warp-stall samples, and the samples summed over runs of
lines between barriers and branches (so a phase such as a GEMV's row staging shows as one span).
    ops/perf/ncu_source.py SOURCE.csv [TOP]"""
import csv
import sys

top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
lines = [l for l in open(sys.argv[1], errors="replace") if l.startswith('"')]
rows = list(csv.reader(lines))
if not rows:
    sys.exit("no CSV rows")
# a preamble ("Kernel Name", ...) comes before the table's header
h = next((i for i, r in enumerate(rows) if r and r[0] == "Address"), 0)
head = rows[h]
body = [r for r in rows[h + 1:] if len(r) == len(head)]
col = {name: i for i, name in enumerate(head)}
samp = next((i for h, i in col.items() if h.startswith("Warp Stall Sampling (All")), None)
src = col.get("Source")
addr = col.get("Address")
if samp is None or src is None:
    sys.exit(f"columns not found; header: {head}")


def num(s):
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return 0.0


recs = [(r[addr] if addr is not None else str(i), r[src], num(r[samp])) for i, r in enumerate(body)]
total = sum(s for _, _, s in recs) or 1.0
print(f"{len(recs)} SASS lines, {total:.0f} warp-stall samples")
# the samples by stall reason (stall_no_inst: waiting on the instruction fetch)
reasons = [h for h in head if h.startswith("stall_") and "Not Issued" not in h]
by = {h: sum(num(r[col[h]]) for r in body) for h in reasons}
rs = sum(by.values()) or 1.0
print("by reason: " + ", ".join(f"{h[6:]} {100 * v / rs:.1f}%" for h, v in
                                 sorted(by.items(), key=lambda kv: -kv[1]) if v >= 0.01 * rs))
print("\ntop lines:")
for a, s, n in sorted(recs, key=lambda r: -r[2])[:top]:
    print(f"{100 * n / total:5.1f}%  {a:>8}  {s.strip()}")
print("\nspans (lines between barriers / branches), in address order, >= 1% of samples:")
start, acc, first = 0, 0.0, None
for i, (a, s, n) in enumerate(recs):
    if first is None:
        first = a
    acc += n
    if any(k in s for k in ("BAR", "BRA", "EXIT", "WARPSYNC", "CALL", "RET")) or i == len(recs) - 1:
        if acc >= 0.01 * total:
            print(f"{100 * acc / total:5.1f}%  {first:>8} .. {a:>8}  ({i - start + 1} lines) ends {s.strip()[:60]}")
        start, acc, first = i + 1, 0.0, None
