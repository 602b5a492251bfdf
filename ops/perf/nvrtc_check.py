#!/usr/bin/env python3
"""Compile model/src/gpu/kernels.cu with NVRTC on a machine without a GPU (the libnvrtc that
`pip install torch` brings), as the engine does at start-up: catches compile errors before a device
run. Prints NVRTC's log; with --ptx FILE writes the PTX; --trace compiles the step-timeline build
(GLMFLEET_TRACE); the defines in GLMFLEET_KERNEL_DEFINES are passed as the engine passes them.
    ops/perf/nvrtc_check.py [--arch sm_90] [--trace] [--ptx FILE]"""
import ctypes, glob, sys, os

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
if "--ptx" in sys.argv:
    nv.nvrtcGetPTXSize(prog, ctypes.byref(n))
    ptx = ctypes.create_string_buffer(n.value)
    nv.nvrtcGetPTX(prog, ptx)
    open(sys.argv[sys.argv.index("--ptx") + 1], "wb").write(ptx.value)
print(f"ok ({os.path.basename(libs[0])}, {arch})")
