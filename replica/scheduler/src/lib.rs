//! Continuous-batching scheduler and paged KV-cache bookkeeping for one replica.
//!
//! This crate is pure, synchronous logic: no async runtime, no tensors, no I/O, no clock. The
//! engine loop owns a [`Scheduler`] on one thread and drives it:
//!
//! ```text
//! add_request / abort / finish   (between steps, from the inbox)
//! out = schedule()               -> which tokens of which requests to compute, with block tables
//! sampled = model(out)           -> the engine runs the batch and samples for seqs with `sample`
//! updates = update_from_output(&out, &sampled)
//! ```
//!
//! ```
//! use scheduler::{NewRequest, Scheduler, SchedulerConfig};
//!
//! let mut sched = Scheduler::new(SchedulerConfig::default())?;
//! sched.add_request(NewRequest {
//!     id: 1,
//!     prompt_token_ids: vec![101, 102, 103],
//!     max_tokens: 2,
//!     eos_token_ids: vec![2],
//!     ..Default::default()
//! })?;
//! let mut generated = Vec::new();
//! while sched.has_unfinished() {
//!     let out = sched.schedule();
//!     // The model computes every seq's chunk (paged KV) and samples where `sample` is set.
//!     let sampled: Vec<_> = out.sampling_seqs().map(|s| (s.id, vec![7])).collect();
//!     for update in sched.update_from_output(&out, &sampled) {
//!         generated.extend(update.new_token_ids);
//!     }
//! }
//! assert_eq!(generated, vec![7, 7]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design (after vLLM v1)
//! * **Tokens, not phases.** A request is `num_computed_tokens` against its known tokens
//!   (prompt + output). Each step fills a token budget, running requests first, then waiting
//!   ones, so chunked prefill, prefix-cache hits and decode are one code path.
//! * **Paged KV.** [`kv_cache::BlockPool`] hands out fixed-size blocks with reference counts and
//!   an LRU free list. Full blocks are registered under a chained hash
//!   ([`kv_cache::BlockHasher`]) so a later request with the same prefix reuses them; freed
//!   blocks keep their hash until reallocated (lazy eviction).
//! * **Speculative decoding.** The engine hands a running request draft tokens
//!   ([`Scheduler::set_draft_tokens`]); its next decode step carries them (KV slots allocated,
//!   counted in the token budget, [`ScheduledSeq::num_draft_tokens`]). `update_from_output`
//!   takes the accepted drafts plus the model's own token, keeps the KV of the accepted ones and
//!   rolls `num_computed_tokens` back over the rest; stop conditions apply token by token, and
//!   only blocks of known tokens are ever cached.
//! * **Preemption by recompute.** When a running request cannot grow, the newest running
//!   request (lowest priority under [`QueuePolicy::Priority`]) loses its blocks and is queued
//!   again (at the head under FCFS, at its place under priority); its output so far is kept
//!   and recomputed (prompt + output) transparently when it is readmitted.
//!
//! # Contract with the model runner
//! * The device-side K/V tensors live in the model crate and are addressed by block id: the KV of
//!   position `p` of a sequence lives in slot `block_table[p / block_size] * block_size +
//!   p % block_size` (see [`ScheduledSeq::slot_mapping`]). Block ids are `0..num_blocks`; none
//!   is reserved (an engine that needs a padding block passes one block less).
//! * Every seq of a [`SchedulerOutput`] must be executed, in order, even if its request was
//!   aborted after `schedule()`: blocks are registered in the prefix cache when they are
//!   scheduled, so a later seq of the same batch may read KV that an earlier seq of that batch
//!   writes (this is how a request sharing a prompt with a sibling admitted in the same step
//!   skips the shared blocks). In each layer, a seq's K/V writes must therefore be visible to the
//!   attention of later seqs of the batch (write the batch's K/V into the paged cache, then
//!   attend), as with vLLM's paged-attention backends.
//! * Call `schedule()` and `update_from_output()` alternately, one update per output.

mod config;
mod error;
mod fast_map;
pub mod kv_cache;
mod output;
mod queue;
mod request;
mod scheduler;
mod stats;
mod stop;

pub use config::{QueuePolicy, SchedulerConfig};
pub use error::{AddError, ConfigError, InvariantError};
pub use output::{RequestUpdate, ScheduledSeq, SchedulerOutput};
pub use request::{FinishReason, NewRequest, RequestId, RequestInfo, RequestStatus};
pub use scheduler::Scheduler;
pub use stats::SchedulerStats;
