"""cuBLAS (through PyTorch) on the GEMM shapes `gpu_perf` times, in the same run on the same GPU:
FP8 e4m3 `_scaled_mm` with per-token activation and per-channel weight scales (bf16 out), BF16
matmul for the LM head, and the device copy bandwidth. Prints a markdown table and writes JSON."""
import json
import sys

import torch

H, I, MI, V, QKV, QD = 4096, 10944, 1408, 151552, 14336, 12288


def time_us(fn, warm=3, iters=50):
    for _ in range(warm):
        fn()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(iters):
        fn()
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e) * 1e3 / iters


def main():
    dev = torch.device("cuda")
    rows = []
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    us = time_us(lambda: b.copy_(a), iters=20)
    copy_tbs = 2 * n / us / 1e6
    print(f"device copy: {copy_tbs:.2f} TB/s (read + write)")
    shapes = [("qkv", QKV, H), ("o_proj", H, QD), ("dense gate+up", 2 * I, H), ("dense down", H, I),
              ("expert gate+up (one expert)", 2 * MI, H), ("expert down (one expert)", H, MI)]
    print("\n| GEMM (N×K) | M | cuBLAS FP8 µs | weight TB/s | TFLOP/s |")
    print("|---|---|---|---|---|")
    for name, nn, k in shapes:
        w = (torch.randn(nn, k, device=dev) * 0.05).to(torch.float8_e4m3fn)
        sw = torch.rand(1, nn, device=dev) * 0.01 + 0.001
        for m in [1, 16, 64, 256, 2048, 8192]:
            x = (torch.randn(m, k, device=dev) * 4).to(torch.float8_e4m3fn)
            sx = torch.rand(m, 1, device=dev) * 0.01 + 0.001
            f = lambda: torch._scaled_mm(x, w.t(), scale_a=sx, scale_b=sw, out_dtype=torch.bfloat16)
            us = time_us(f, iters=10 if m >= 2048 else 50)
            tbs = nn * k / us / 1e6
            tf = 2 * m * nn * k / us / 1e6
            print(f"| {name} {nn}×{k} | {m} | {us:.1f} | {tbs:.2f} | {tf:.1f} |")
            rows.append(dict(gemm=name, n=nn, k=k, m=m, us=us, weight_tbs=tbs, tflops=tf, kind="fp8"))
    w = torch.randn(V, H, device=dev, dtype=torch.bfloat16)
    for m in [1, 16, 64, 256]:
        x = torch.randn(m, H, device=dev, dtype=torch.bfloat16)
        us = time_us(lambda: x @ w.t())
        print(f"| lm_head (bf16) {V}×{H} | {m} | {us:.1f} | {2 * V * H / us / 1e6:.2f} | {2 * m * V * H / us / 1e6:.1f} |")
        rows.append(dict(gemm="lm_head (bf16)", n=V, k=H, m=m, us=us, kind="bf16"))
    if len(sys.argv) > 1:
        json.dump(dict(copy_tbs=copy_tbs, gemms=rows), open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
