//! Integration tests of the scheduler through its public API, driven by a fake paged-KV model
//! (`fake_model.rs`) that checks every block table against a simulated KV store.
//!
//! One test binary, one module per area: randomized invariants, prefix sharing, preemption,
//! admission (rejection, abort, priority, chunked prefill).

mod admission;
mod fake_model;
mod invariants;
mod preemption;
mod prefix;
