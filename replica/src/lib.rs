//! `replica`: one GLM inference server per GPU.
//!
//! ```text
//! HTTP (api) ── EngineRequest ──▶ EngineHandle ══ channel ══▶ engine thread (engine::core)
//!     ▲                                                        scheduler → Runner → sampler
//!     └──────────── EngineEvent (per choice, per step) ◀──────── detokenizer / stop strings
//! ```
//!
//! * [`server`]: [`Replica`] (engine + app, no socket) and [`serve`] (accept loop, drain,
//!   shutdown).
//! * [`api`]: the OpenAI-compatible HTTP surface as a value ([`api::App`]).
//! * [`config`]: the one `ServeConfig` (defaults → TOML → env → flags) and the clap flags.
//! * [`engine`]: the engine loop on its own thread and the async handle to it.
//! * [`sampler`]: host-side sampling over f32 logits rows.
//! * [`output`]: incremental detokenization with stop strings.
//! * [`runner`]: the `Runner` trait (the only door to the model) and the fake/scripted runners.
//! * [`metrics`]: Prometheus metrics under vLLM's names.
//! * [`testing`]: a small GLM-flavoured tokenizer for tests.

pub mod api;
pub mod config;
pub mod engine;
pub mod metrics;
pub mod output;
pub mod runner;
pub mod sampler;
pub mod server;
pub mod testing;

pub use api::App;
pub use chat::ModelFamily;
pub use config::{load_config, ConfigError, ServeArgs, ServeConfig};
pub use runner::{Logits, Runner, RunnerError};
pub use sampler::GenerationDefaults;
pub use server::{serve, Replica, ReplicaParts, ServeError};
