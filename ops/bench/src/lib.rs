//! `glmfleet bench`: a serving benchmark that reproduces `vllm bench serve` — its flags, its
//! datasets, its metric formulas and its printed report — so numbers taken against glmfleet and
//! against vLLM compare directly; plus `bench sweep`, the guide's concurrency × workload grid with
//! CSV/JSON tables and PNG charts.
//!
//! Layout: [`serve`] (flags and the run driver), [`sweep`], [`dataset`] (prompts),
//! [`client`] + [`sse`] (HTTP and stream timing), [`pacing`] (arrival times), [`metrics`]
//! (pure arithmetic over recorded timings), [`result`] (report text and result JSON),
//! [`plot`] (PNG charts), [`tokenizer`].

pub mod client;
pub mod dataset;
mod error;
pub mod metrics;
pub mod pacing;
pub mod plot;
pub mod result;
pub mod serve;
pub mod sse;
pub mod sweep;
pub mod tokenizer;

pub use client::Backend;
pub use error::BenchError;
pub use metrics::{BenchmarkMetrics, RequestRecord, Stats};
pub use result::BenchResult;
pub use serve::{run_serve, DatasetName, ServeArgs};
pub use sweep::{run_sweep, SweepArgs, Workload};
