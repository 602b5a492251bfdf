#!/usr/bin/env python3
"""Where a decode step's time goes, kernel by kernel, from the timeline records of
`GLMFLEET_TRACE=1 gpu_perf CONFIG OUT --trace-step B` (OUT-bB.bin; kernels.cu `TRACE_*`).

Each record is one warp of one traced kernel: up to eight %globaltimer marks (ns; 0 = not taken)
and tag | warp << 16 | SM << 24 | block << 32. Launches are told apart by tag changes and by time
(graph replay without PDL runs them one after another). For each kind of launch, medians over the
step's layers:
  gap    from the previous traced launch's last mark to this launch's first (untraced kernels
         between them, e.g. the LM head, show up here)
  span   first mark to last mark of the launch
  start  p90 of the warps' entry after the launch's first entry (block dispatch)
  m1..m7 median per warp of mark k minus the warp's previous mark taken (what the marks are: below)
  tail   last warp's last mark minus the median warp's last mark
Marks: GEMV 1 after the PDL wait, 2 rows loaded, 3 rows staged, 4 dependents triggered, 5 main
loop done; MoE 1 after the PDL wait, the expert ids and the weight stream's start, 2 row loaded,
3 staged, 4 dependents triggered, 5 main loop done; attention 1 metadata read, 2 after the PDL
wait, 3 first key tile landed, 4 key loop done, 5 dependents triggered, 6 split written, 7 splits
merged; routing 1 dot products done, 2 dependents triggered, (last block) 3 counted, 4 scores in
shared memory, 5 top-k done; RoPE 1 done. (Runs 72-81 had no "triggered" marks: --before-82.)

    ops/perf/trace_summary.py OUT-b1.bin [--layer N [--warps]] [--marks 4 | --before-82]
(N: print that layer's launches one by one; --warps adds, for each warp index of a block, the median
over the blocks of when it took each mark, from the launch's first entry: which warps do the work and
which wait, e.g. the attention's lone key tile on warp 0; --marks 4 reads the archives before run 72, whose
records held four marks; --before-82 labels runs 72-81, which had no marks around the PDL triggers)
"""
import statistics as st
import struct
import sys

TAGS = {1: "gemv", 2: "rope", 3: "attn", 4: "route", 5: "moe_gu", 6: "moe_dn", 7: "gemv_route", 8: "moe_gu_route"}
# marks a record (TRACE_MARKS in kernels.cu), mark 0 at entry
NMARK = int(sys.argv[sys.argv.index("--marks") + 1]) if "--marks" in sys.argv else 8
MARKS = {
    "gemv": ["wait", "load", "stage", "trigger", "loop"],
    "gemv_route": ["wait", "load", "stage", "trigger", "loop"],
    "moe_gu": ["wait+ids", "load", "stage", "trigger", "loop"],
    "moe_dn": ["wait+ids", "load", "stage", "trigger", "loop"],
    "moe_gu_route": ["wait", "row", "logits+norm", "top-k", "stage", "trigger", "loop"],
    "attn": ["meta", "wait", "tile 1 in", "keys", "trigger", "write", "merge"],
    "route": ["dots", "trigger", "(last) count", "scores", "top-k"],
    "rope": ["done"],
}
if "--before-82" in sys.argv:  # runs 72-81: no marks around the PDL triggers
    MARKS = {"gemv": ["wait", "load", "stage", "loop"], "moe_gu": ["wait+ids", "load", "stage", "loop"],
             "moe_dn": ["wait+ids", "load", "stage", "loop"],
             "attn": ["meta", "wait", "tile 1 in", "keys", "write", "merge"],
             "route": ["dots", "(last) count", "scores", "top-k"], "rope": ["done"]}
if NMARK == 4:  # the marks before run 72
    MARKS = {"gemv": ["wait", "stage", "loop"], "moe_gu": ["wait", "stage", "loop"],
             "moe_dn": ["wait", "stage", "loop"], "attn": ["main", "merge"],
             "route": ["dots", "(last) count", "top-k"], "rope": ["done"]}


def load(path):
    raw = open(path, "rb").read()
    recs = []
    size = 8 * (NMARK + 1)
    for off in range(0, len(raw) - size + 1, size):
        *t, meta = struct.unpack_from(f"<{NMARK + 1}Q", raw, off)
        recs.append({
            "t": t,
            "tag": TAGS.get(meta & 0xFF, f"tag{meta & 0xFF}"),
            "warp": (meta >> 16) & 0xFF,
            "sm": (meta >> 24) & 0xFF,
            "blk": meta >> 32,
        })
    return recs


def last_mark(r):
    return max(t for t in r["t"] if t)


def launches(recs):
    """Records grouped into launches: sorted by entry, a new launch at a tag change or an entry
    after everything the current launch has marked."""
    out = []
    for r in sorted(recs, key=lambda r: r["t"][0]):
        cur = out[-1] if out else None
        if cur is None or cur["tag"] != r["tag"] or r["t"][0] > cur["end"]:
            cur = {"tag": r["tag"], "recs": [], "end": 0}
            out.append(cur)
        cur["recs"].append(r)
        cur["end"] = max(cur["end"], last_mark(r))
    for i, l in enumerate(out):
        l["start"] = min(r["t"][0] for r in l["recs"])
        l["gap"] = l["start"] - out[i - 1]["end"] if i else 0
    return out


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0


def describe(l):
    rs = l["recs"]
    d = {
        "gap": l["gap"],
        "span": l["end"] - l["start"],
        "start": pct([r["t"][0] - l["start"] for r in rs], 0.9),
        "tail": l["end"] - st.median(last_mark(r) for r in rs),
        "warps": len(rs),
        "blocks": len({r["blk"] for r in rs}),
    }
    for k in range(1, NMARK):
        diffs = []
        for r in rs:
            prev = [t for t in r["t"][:k] if t]
            if r["t"][k] and prev:
                diffs.append(r["t"][k] - prev[-1])
        d[f"m{k}"] = st.median(diffs) if diffs else None
    return d


def name_launches(ls):
    """Names by tag and its ordinal since the layer's attention began (at its RoPE launch, or at
    the attention itself where the QKV GEMV applies RoPE, run 92 on): gemv#1 is the O projection,
    gemv#2 the next layer's QKV (MoE layers); pre- before the first attention."""
    seen = {}
    layer = 0
    prev = None
    for l in ls:
        if l["tag"] == "rope" or (l["tag"] == "attn" and prev != "rope"):
            seen = {}
            layer += 1
        prev = l["tag"]
        seen[l["tag"]] = seen.get(l["tag"], 0) + 1
        l["name"] = f'{"" if layer else "pre-"}{l["tag"]}#{seen[l["tag"]]}'
        l["layer"] = layer


def us(v):
    return "" if v is None else f"{v / 1e3:.1f}"


def main():
    path = sys.argv[1]
    recs = load(path)
    ls = launches(recs)
    name_launches(ls)
    ts = sorted({t for r in recs for t in r["t"] if t})
    steps = [b - a for a, b in zip(ts, ts[1:]) if b > a]
    print(f"{path}: {len(recs)} warp records, {len(ls)} launches, "
          f"step span {(ls[-1]['end'] - ls[0]['start']) / 1e6:.3f} ms, "
          f"smallest timer step {min(steps) if steps else 0} ns")
    kinds = {}
    for l in ls:
        kinds.setdefault(l["name"], []).append(describe(l))
    mk = range(1, NMARK)
    print("\n| launch | n | blocks | gap µs | span µs | start p90 µs | "
          + " | ".join(f"m{k} µs" for k in mk) + " | tail µs | marks |")
    print("|---" * (7 + len(mk)) + "|")
    total = 0.0
    for name, ds in kinds.items():
        med = lambda k: st.median(d[k] for d in ds if d[k] is not None) if any(
            d[k] is not None for d in ds) else None
        total += (med("span") or 0) * len(ds) + (med("gap") or 0) * len(ds)
        tag = name.split("#")[0].removeprefix("pre-")
        print(f"| {name} | {len(ds)} | {int(med('blocks'))} | {us(med('gap'))} | {us(med('span'))} | "
              f"{us(med('start'))} | " + " | ".join(us(med(f"m{k}")) for k in mk)
              + f" | {us(med('tail'))} | {', '.join(MARKS.get(tag, []))} |")
    print(f"\nsum of medians × launches (span + gap): {total / 1e6:.3f} ms")
    if "--layer" in sys.argv:
        n = int(sys.argv[sys.argv.index("--layer") + 1])
        print(f"\nlayer {n}, launch by launch:")
        for l in ls:
            if l["layer"] == n:
                d = describe(l)
                marks = " ".join(f"m{k} {us(d[f'm{k}']):>5}" for k in range(1, NMARK))
                print(f"  {l['name']:10} gap {us(d['gap']):>6} span {us(d['span']):>6} start {us(d['start']):>5} "
                      f"{marks} tail {us(d['tail']):>5} warps {d['warps']} blocks {d['blocks']}")
                if "--warps" in sys.argv:
                    print_warps(l)


def print_warps(l):
    """Each warp index's marks (median over the blocks, µs from the launch's first entry)."""
    for w in sorted({r["warp"] for r in l["recs"]}):
        rs = [r for r in l["recs"] if r["warp"] == w]
        at = []
        for k in range(NMARK):
            ts = [r["t"][k] - l["start"] for r in rs if r["t"][k]]
            at.append(f"{k}:{us(st.median(ts)):>5}" if ts else f"{k}:     ")
        print(f"      warp {w:2} ({len(rs)} blocks) " + " ".join(at))


if __name__ == "__main__":
    main()
