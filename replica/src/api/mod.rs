//! The OpenAI-compatible HTTP surface, as a value ([`App`]) that the server and the tests call
//! the same way: `app.handle(request).await`.
//!
//! * [`routes`]: method/path dispatch, auth, drain gating.
//! * [`chat`] (+ [`chat_stream`], [`tools`]), [`completions`]: the generation endpoints.
//! * [`info`]: models, health, load, metrics, version, tokenize, detokenize.
//! * [`generation`]: submitting to the engine and collecting its events; [`params`]: request
//!   fields → engine request; [`prompt`]: template rendering and tokenization; [`logprobs`]:
//!   logprob formatting.
//! * [`protocol`]: serde bodies; [`sse`]: SSE framing; [`error`]: the one error → HTTP mapping;
//!   [`body`]: body reading/writing; [`auth`]: the API key check.

pub mod auth;
pub mod body;
pub mod chat;
pub mod chat_stream;
pub mod completions;
pub mod error;
pub mod generation;
pub mod info;
pub mod logprobs;
pub mod params;
pub mod prompt;
pub mod protocol;
pub mod routes;
pub mod sse;
pub mod tools;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ::chat::{ChatTemplate, ToolParserKind};
use http::{Request, Response};
use hyper::body::Body;
use tokenizers::Tokenizer;

use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::sampler::GenerationDefaults;

pub use body::ApiBody;
pub use error::ApiError;

/// Everything the handlers share.
pub struct AppState {
    pub(crate) engine: EngineHandle,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) template: Arc<ChatTemplate>,
    /// Names accepted in `model`; the first is reported.
    pub(crate) served_names: Vec<String>,
    /// The model as given on the command line (`root` in `/v1/models`).
    pub(crate) model_root: String,
    pub(crate) max_model_len: usize,
    pub(crate) api_key: Option<String>,
    pub(crate) tool_parser: Option<ToolParserKind>,
    pub(crate) reasoning_parser: bool,
    pub(crate) auto_tool_choice: bool,
    pub(crate) metrics: Metrics,
    pub(crate) draining: AtomicBool,
    pub(crate) max_body_bytes: usize,
    /// Time allowed to receive a whole request body once its head has arrived.
    pub(crate) body_timeout: std::time::Duration,
    pub(crate) max_logprobs: usize,
    pub(crate) defaults: GenerationDefaults,
    /// Real vocabulary size (tokenizer, added tokens included).
    pub(crate) vocab_size: usize,
    /// Unix time the server started (`created` of `/v1/models`).
    pub(crate) started: u64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("served_names", &self.served_names)
            .field("max_model_len", &self.max_model_len)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The name reported in responses.
    pub fn model_name(&self) -> &str {
        self.served_names.first().map_or("", String::as_str)
    }

    /// Checks the request's `model` (absent means the served model).
    pub(crate) fn check_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match requested {
            None | Some("") => Ok(self.model_name().to_owned()),
            Some(m) if self.served_names.iter().any(|n| n == m) => Ok(m.to_owned()),
            Some(m) => Err(ApiError::ModelNotFound(m.to_owned())),
        }
    }

    /// Whether the server is draining (shutting down).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The HTTP service value.
#[derive(Debug, Clone)]
pub struct App {
    state: Arc<AppState>,
}

impl App {
    pub(crate) fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// Answers one request (never fails: errors become OpenAI error responses).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ApiBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        routes::route(&self.state, req).await
    }

    /// Shared state.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Starts (or stops) draining: new generation requests get 503, `/health` 503.
    pub fn set_draining(&self, draining: bool) {
        self.state.draining.store(draining, Ordering::Release);
    }
}
