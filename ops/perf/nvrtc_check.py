#!/usr/bin/env python3
"""Compile model/src/gpu/kernels.cu with NVRTC on a machine without a GPU (the libnvrtc that
`pip install torch` brings), as the engine does at start-up: catches compile errors before a device
run. Prints NVRTC's log; with --ptx FILE writes the PTX; --trace compiles the step-timeline build
(GLMFLEET_TRACE); the defines in GLMFLEET_KERNEL_DEFINES are passed as the engine passes them.
--sizes [REGEX] assembles the PTX with pip's ptxas (`pip install nvidia-cuda-nvcc-cu12`) and prints each
kernel's registers, spills and SASS text bytes (readelf): code size moves batch 1 by percents, and about a
fifth of the GEMVs' stall samples wait on the instruction fetch (ops/perf/2026-11-30-gpu-code-layout.md).
    ops/perf/nvrtc_check.py [--arch sm_90] [--trace] [--ptx FILE] [--sizes [REGEX]]"""
import ctypes, glob, os, re, subprocess, sys, tempfile

arch = sys.argv[sys.argv.index("--arch") + 1] if "--arch" in sys.argv else "sm_90"
libs = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/*/lib/python3*/site-packages/nvidia/cu*/lib/libnvrtc.so*")) +
              glob.glob("/usr/local/lib/python3*/*-packages/nvidia/cu1*/lib/libnvrtc.so*") +
              glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"))
if not libs:
    sys.exit("no libnvrtc found (pip install torch brings one)")
nv = ctypes.CDLL(libs[0])
src = open(os.path.join(os.path.dirname(__file__), "../../model/src/gpu/kernels.cu"), "rb").read()
prog = ctypes.c_void_p()
assert nv.nvrtcCreateProgram(ctypes.byref(prog), src, b"kernels.cu", 0, None, None) == 0
opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"-default-device"]  # as model/src/gpu/device.rs
if "--trace" in sys.argv:
    opts.append(b"-DGLMFLEET_TRACE")
opts += [b"-D" + d.encode() for d in os.environ.get("GLMFLEET_KERNEL_DEFINES", "").split()]
arr = (ctypes.c_char_p * len(opts))(*opts)
rc = nv.nvrtcCompileProgram(prog, len(opts), arr)
n = ctypes.c_size_t()
nv.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
nv.nvrtcGetProgramLog(prog, log)
print(log.value.decode(errors="replace"))
if rc != 0:
    sys.exit(f"NVRTC failed ({rc})")
nv.nvrtcGetPTXSize(prog, ctypes.byref(n))
ptx = ctypes.create_string_buffer(n.value)
nv.nvrtcGetPTX(prog, ptx)
if "--ptx" in sys.argv:
    open(sys.argv[sys.argv.index("--ptx") + 1], "wb").write(ptx.value)
print(f"ok ({os.path.basename(libs[0])}, {arch})")
if "--sizes" in sys.argv:
    i = sys.argv.index("--sizes")
    pat = re.compile(sys.argv[i + 1] if i + 1 < len(sys.argv) and not sys.argv[i + 1].startswith("--") else ".")
    ptxas = sorted(glob.glob(os.path.join(os.path.dirname(libs[0]), "../../cuda_nvcc/bin/ptxas")) +
                   glob.glob(os.path.expanduser("~/.pyenv/versions/*/lib/python3*/site-packages/nvidia/cuda_nvcc/bin/ptxas")) +
                   glob.glob("/usr/local/cuda*/bin/ptxas"))
    if not ptxas:
        sys.exit("no ptxas found (pip install nvidia-cuda-nvcc-cu12)")
    with tempfile.TemporaryDirectory() as d:
        open(f"{d}/k.ptx", "wb").write(ptx.value)
        info = subprocess.run([ptxas[0], f"-arch={arch}", "-v", f"{d}/k.ptx", "-o", f"{d}/k.cubin"],
                              capture_output=True, text=True)
        if info.returncode != 0:
            sys.exit(info.stderr)
        sections = subprocess.run(["readelf", "-SW", f"{d}/k.cubin"], capture_output=True, text=True).stdout
    text = {m.group(1): int(m.group(2), 16) for m in
            re.finditer(r"\]\s+\.text\.(\S+)\s+PROGBITS\s+\S+\s+\S+\s+([0-9a-f]+)", sections)}
    regs, spills, name = {}, {}, None
    for line in info.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and name:
            spills[name] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            regs[name] = int(m.group(1))
    print("| kernel | registers | spill bytes | text KB |\n|---|---|---|---|")
    for k in sorted(text, key=lambda k: -text[k]):
        if pat.search(k):
            print(f"| {k} | {regs.get(k, '')} | {spills.get(k, '')} | {text[k] / 1024:.1f} |")
