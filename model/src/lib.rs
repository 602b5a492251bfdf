//! The GLM-4.x MoE language model (`Glm4MoeForCausalLM`: GLM-4.5, 4.5-Air, 4.6, 4.7) on burn.
//!
//! This crate knows checkpoints, tensors and the forward pass; it knows nothing of HTTP, requests or
//! scheduling. The engine hands it batches of [`SeqInput`] (prefill chunks and decode tokens mixed) over
//! a [`PagedKvCache`] whose blocks the scheduler allocates, and gets logits back.
//!
//! - [`config`]: `config.json` (both RoPE layouts, both FP8 formats) and validation.
//! - [`checkpoint`]: memory-mapped safetensors, single file or sharded.
//! - [`model`]: the network and the MTP draft layer; [`moe`]: routing and experts.
//! - [`kernels`]: the hot-path ops behind one trait, with the plain-burn [`kernels::Reference`].
//! - [`sample`]: device-side sampling and its host twin; `gpu` (feature `gpu`): the CUDA engine;
//!   [`step`]: what such an engine's steps hand back.
//! - [`generate`]: a small greedy loop used by `glmfleet generate` and the parity tests.

pub mod checkpoint;
pub mod config;
pub mod dummy;
pub mod error;
pub mod fp8;
pub mod generate;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod kernels;
pub mod kv_cache;
pub mod linear;
pub mod loader;
pub mod model;
pub mod moe;
pub mod sample;
pub mod step;

pub use config::{Glm4MoeConfig, Quantization};
pub use error::{ModelError, Result};
pub use kv_cache::PagedKvCache;
pub use linear::Fp8Activations;
pub use model::{ForwardOutput, Glm4Moe, LoadOptions, ParamMemory, SeqInput};

/// The CPU backend used in tests and on machines without a GPU.
pub type CpuBackend = burn::backend::NdArray<f32>;

/// The CUDA backend (feature `cuda`), serving precision.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<half::bf16, i32>;

/// The backend the parity tests run on: the CPU, or the GPU in f32 with the `cuda` feature (the parity
/// bound is an f32 bound).
#[cfg(not(feature = "cuda"))]
pub type TestBackend = CpuBackend;
#[cfg(feature = "cuda")]
pub type TestBackend = burn::backend::Cuda<f32, i32>;
