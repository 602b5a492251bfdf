//! `router`: the glmfleet front door. It spreads OpenAI requests over data-parallel replicas so
//! that requests sharing a prompt prefix land where that prefix is already cached, without ever
//! letting one replica take more than `c` times the average load.
//!
//! It knows no model and no tokenizer: the routing key is a chain of hashes of fixed-size byte
//! blocks of the rendered prompt ([`routing_key`]); the choice is prefix affinity over
//! bounded-load consistent hashing ([`policy`], algorithm and bound in `policy::prefix_hash`);
//! load is this router's in-flight count per replica, held by guards tied to response bodies,
//! corrected by the replicas' `/load` reports ([`fleet`]); failures before the first byte are
//! retried elsewhere, failures after it end the stream with an SSE error event ([`proxy`]).
//!
//! Entry points: [`RouterArgs`] + [`load_config`] build a [`RouterConfig`]; [`serve`] runs it on
//! a listener; [`App`] is the same service as a value, for tests and embedding.

mod admin;
mod app;
pub mod config;
mod error;
pub mod fleet;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod routing_key;
mod server;

pub use app::App;
pub use config::{load_config, ConfigError, RouterArgs, RouterConfig};
pub use error::ApiError;
pub use proxy::{ProxyBody, REPLICA_HEADER};
pub use server::{serve, serve_app};

/// Why the router could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// [`App::new`] or [`serve`] was called outside a Tokio runtime.
    #[error("the router must run inside a Tokio runtime")]
    NoRuntime,
}

#[cfg(test)]
mod tests {
    fn error_type<T: std::error::Error + Send + Sync + 'static>() {}

    #[test]
    fn errors_work_with_anyhow_style_callers() {
        error_type::<super::RouterError>();
        error_type::<super::ConfigError>();
        error_type::<super::ApiError>();
    }
}
