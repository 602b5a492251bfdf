//! The GPU engine (feature `gpu`): GLM-4.x on one CUDA device through cudarc, with our own kernels
//! (`kernels.cu`, compiled by NVRTC at start-up) on one stream of our own.
//!
//! Why not burn's CUDA backend: its matmul is 8× off cuBLAS, it has no FP8 tensor-core GEMM, no
//! grouped GEMM, no paged attention, costs tens of µs of host time per op and keeps its stream
//! private (`../shared/reference/burn.md` §10, design (b)). So the hot path is ours: weights, KV cache
//! and workspace are plain device allocations, every step is a fixed sequence of kernel launches with
//! no host synchronisation until the sampled ids are read, and decode steps are replayed from CUDA
//! graphs. burn stays the CPU reference: every kernel has a parity test against it
//! (`model/tests/gpu.rs`), and checkpoints are read through the same loader as the CPU model.
//!
//! - [`device`]: context, stream, NVRTC module, device buffers and the launch helper.
//! - [`blaslt`]: cuBLASLt for the dense GEMMs (and, for large steps, the experts), loaded at run time.
//! - [`gemv`]: GEMVs for decode-size batches (norm/quant fused; the MoE experts in two launches).
//! - [`rope`]: RoPE and the KV-cache write after the QKV projection (or in its GEMV's epilogue).
//! - [`weights`]: linear layers on the device (BF16, FP8 per-channel, FP8 block), fused and grouped.
//! - [`engine`]: the model, its workspace, the step (eager or graph) and memory planning; its `mtp`
//!   part: the verify step and the MTP draft layer (speculative decoding).

pub mod blaslt;
pub mod device;
pub mod engine;
pub mod gemv;
pub mod rope;
pub mod weights;

pub use blaslt::BlasLt;
pub use device::{DevBuf, Gpu};
pub use engine::{
    gemm_launch, prep_threads, router_launch, sample_launch, sample_part_bytes, topk_smem,
    GpuModel, GpuOptions, HiddenRow, KeepFrom, SampleSpecs, StepOutput, ROUTER_GEMM_MIN_TOKENS,
};
pub use gemv::{
    gemv_launch, gemv_max_rows, gemv_qkv_launch, gemv_route_launch, ActRows, MoeGemv,
    MoeGemvConfig, Route, GEMV_MAX_ROWS,
};
pub use rope::{paired_rows, rope_kv_launch, QkvOut};
