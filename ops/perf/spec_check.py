#!/usr/bin/env python3
"""Speculative decoding end to end through the real binary: serves a checkpoint with an MTP layer
plainly and with `--speculative-config` (method mtp, K draft tokens), sends both the same greedy
completion requests (concurrently, so verify steps are batched and mixed with prefill chunks), and
compares the outputs; prints the `vllm:spec_decode_*` counters. Exit status 1 on a difference.

    ops/perf/spec_check.py GLMFLEET MODEL_DIR [--k K] [--tokenizer-from DIR] [--port P] [-- SERVE ARGS]

The parity fixtures carry no tokenizer: --tokenizer-from names a folder whose tokenizer.json is
laid beside the checkpoint's files in a temporary folder (prompts are token ids below 256 either way).
Runs on the CPU engine too (GLMFLEET_DEVICE=cpu), which is how the script itself is checked.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def post(port, body, timeout=300):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def wait_healthy(port, proc, limit=300):
    t0 = time.time()
    while time.time() - t0 < limit:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return True
        except Exception:
            time.sleep(0.5)
    return False


def serve_and_run(args, model, extra, prompts, log):
    cmd = [args.glmfleet, "serve", model, "--port", str(args.port), "--served-model-name", "m",
           "--max-num-batched-tokens", "64", "--max-num-seqs", "16",
           "--max-model-len", "512"] + extra + args.serve_args
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        if not wait_healthy(args.port, proc):
            sys.exit(f"server did not come up: {' '.join(cmd)} (log: {log})")
        body = lambda p, n: {"model": "m", "prompt": p, "max_tokens": n, "temperature": 0,
                             "ignore_eos": True}
        t0 = time.time()
        with ThreadPoolExecutor(len(prompts)) as ex:
            resps = list(ex.map(lambda pn: post(args.port, body(*pn)), prompts))
        outs = [r["choices"][0]["text"] for r in resps]
        tokens = sum(r["usage"]["completion_tokens"] for r in resps)
        secs = time.time() - t0
        with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/metrics", timeout=10) as r:
            metrics = [l for l in r.read().decode().splitlines()
                       if l.startswith("vllm:spec_decode_") and not l.startswith("#")]
        return outs, secs, metrics, tokens
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("glmfleet")
    ap.add_argument("model")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--tokenizer-from")
    ap.add_argument("--port", type=int, default=8031)
    ap.add_argument("serve_args", nargs="*")
    args = ap.parse_args()
    tmp = None
    model = args.model
    if args.tokenizer_from:
        tmp = tempfile.mkdtemp(prefix="spec-check-")
        for f in os.listdir(args.model):
            os.symlink(os.path.abspath(os.path.join(args.model, f)), os.path.join(tmp, f))
        shutil.copy(os.path.join(args.tokenizer_from, "tokenizer.json"), tmp)
        model = tmp
    # 12 prompts of 1..150 token ids, 8..40 new tokens each
    lens = [1, 2, 15, 16, 17, 40, 100, 150, 33, 64, 5, 90]
    prompts = [([(i * 31 + j * 7 + 3) % 250 + 1 for j in range(n)], 8 + (i * 11) % 33)
               for i, n in enumerate(lens)]
    logdir = os.environ.get("LOG", tempfile.gettempdir())
    spec = json.dumps({"method": "mtp", "num_speculative_tokens": args.k})
    plain, t_plain, _, n_plain = serve_and_run(args, model, [], prompts, f"{logdir}/spec-plain.log")
    drafted, t_spec, metrics, n_spec = serve_and_run(
        args, model, ["--speculative-config", spec], prompts, f"{logdir}/spec-k{args.k}.log")
    if tmp:
        shutil.rmtree(tmp)
    same = sum(a == b for a, b in zip(plain, drafted))
    print(f"greedy outputs identical with and without MTP speculation (k = {args.k}): "
          f"{same}/{len(prompts)} requests ({n_plain} and {n_spec} tokens, "
          f"{sum(map(len, plain))} characters); {t_plain:.2f} s plain, {t_spec:.2f} s speculative")
    for l in metrics:
        print("  " + l)
    for i, (a, b) in enumerate(zip(plain, drafted)):
        if a != b:
            print(f"  request {i}: plain {a!r}\n  {' ' * len(str(i))}          spec  {b!r}")
    sys.exit(0 if same == len(prompts) else 1)


if __name__ == "__main__":
    main()
