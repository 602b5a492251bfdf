//! Wiring and lifecycle: [`Replica::start`] builds scheduler, engine thread, metrics and the
//! HTTP [`App`] from a [`ServeConfig`] and the model parts the CLI loaded; [`serve`] runs the
//! accept loop and the shutdown sequence:
//!
//! 1. serve until the `shutdown` future resolves (SIGTERM / ctrl-c in the CLI);
//! 2. drain: `/health` and new generation requests answer 503, in-flight requests run to
//!    completion for up to `--shutdown-timeout` seconds (connections are still accepted so
//!    late clients get a clean 503 instead of a connection error);
//! 3. stop accepting, abort whatever is still running (clients see `finish_reason: "abort"`),
//!    stop the engine thread and give connections a few seconds to flush; return `Ok(())`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use chat::{ChatTemplate, ModelFamily, ToolParserKind};
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use scheduler::{QueuePolicy, Scheduler, SchedulerConfig};
use tokenizers::Tokenizer;
use tokio::net::TcpListener;

use crate::api::{App, AppState};
use crate::config::{ConfigError, SchedulingPolicy, ServeConfig, ToolParserName};
use crate::engine::core::EngineParts;
use crate::engine::{self, EngineHandle};
use crate::metrics::{CacheConfigInfo, Metrics, MetricsError};
use crate::runner::Runner;
use crate::sampler::GenerationDefaults;

/// How long connections get to flush after the engine stopped.
const CONNECTION_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the CLI loaded for the replica.
pub struct ReplicaParts {
    /// The model (or a fake).
    pub runner: Box<dyn Runner>,
    /// The checkpoint's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// KV blocks allocated by the runner (after `--num-gpu-blocks-override` /
    /// `--kv-cache-memory` / profiling).
    pub num_blocks: usize,
    /// Generation stop ids (GLM: `<|endoftext|>`, `<|user|>`, `<|observation|>`); the first is
    /// the primary EOS.
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint's chat template, if it ships one (`--chat-template` overrides it).
    pub chat_template: Option<String>,
    /// GLM family, for the built-in template when neither of the above exists.
    pub model_family_hint: Option<ModelFamily>,
    /// The model's `max_position_embeddings` (default and cap of `--max-model-len`).
    pub max_position_embeddings: usize,
    /// Reported model name when `--served-model-name` is not given.
    pub default_served_name: String,
    /// Sampling defaults from `generation_config.json`.
    pub generation_defaults: GenerationDefaults,
}

impl std::fmt::Debug for ReplicaParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaParts")
            .field("num_blocks", &self.num_blocks)
            .field("eos_token_ids", &self.eos_token_ids)
            .field("max_position_embeddings", &self.max_position_embeddings)
            .field("default_served_name", &self.default_served_name)
            .finish_non_exhaustive()
    }
}

/// Why the replica could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration does not fit the model or the KV cache.
    #[error("{0}")]
    Capacity(String),
    /// The chat template does not compile.
    #[error("chat template: {0}")]
    Template(#[from] chat::TemplateError),
    /// The scheduler rejected its configuration.
    #[error(transparent)]
    Scheduler(#[from] scheduler::ConfigError),
    /// Metrics registration failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Socket or thread error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The engine thread died while serving (a bug or a fatal device error).
    #[error("the engine thread stopped unexpectedly")]
    EngineDied,
}

/// A started replica: engine thread + HTTP app (no socket).
#[derive(Debug)]
pub struct Replica {
    app: App,
    engine: EngineHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    shutdown_timeout: Duration,
}

fn tool_parser(name: ToolParserName) -> ToolParserKind {
    match name {
        ToolParserName::Glm45 => ToolParserKind::Glm45,
        ToolParserName::Glm47 => ToolParserKind::Glm47,
    }
}

fn max_model_len(cfg: &ServeConfig, parts: &ReplicaParts) -> Result<usize, ServeError> {
    let derived = parts.max_position_embeddings;
    let len = match (cfg.max_model_len, derived) {
        (Some(l), 0) => l,
        (None, 0) => {
            return Err(ServeError::Capacity(
                "the model does not declare max_position_embeddings: pass --max-model-len".into(),
            ))
        }
        (Some(l), d) if l > d => {
            return Err(ServeError::Capacity(format!(
                "--max-model-len {l} is greater than the model's max_position_embeddings ({d})"
            )))
        }
        (Some(l), _) => l,
        (None, d) => d,
    };
    let capacity = parts.num_blocks.saturating_mul(cfg.block_size);
    if capacity < len {
        return Err(ServeError::Capacity(format!(
            "the KV cache holds {} blocks x {} tokens = {capacity} tokens, fewer than max_model_len \
             ({len}): one request of the maximum length could never run. Increase \
             --gpu-memory-utilization / --kv-cache-memory or decrease --max-model-len",
            parts.num_blocks, cfg.block_size
        )));
    }
    Ok(len)
}

fn chat_template(cfg: &ServeConfig, parts: &ReplicaParts) -> Result<ChatTemplate, ServeError> {
    let source = match cfg.read_chat_template()? {
        Some(s) => s,
        None => match &parts.chat_template {
            Some(s) => s.clone(),
            None => parts
                .model_family_hint
                .unwrap_or(ModelFamily::Glm45)
                .builtin_template()
                .to_owned(),
        },
    };
    Ok(ChatTemplate::new(&source)?)
}

impl Replica {
    /// Builds everything and starts the engine thread.
    pub fn start(cfg: &ServeConfig, parts: ReplicaParts) -> Result<Self, ServeError> {
        cfg.validate()?;
        let max_model_len = max_model_len(cfg, &parts)?;
        let num_speculative_tokens = cfg.num_speculative_tokens();
        if num_speculative_tokens > 0 && !parts.runner.supports_drafting() {
            return Err(ServeError::Config(ConfigError::Invalid(
                "--speculative-config: method mtp drafts with the checkpoint's MTP layer, but this \
                 model runner has none (the checkpoint has num_nextn_predict_layers = 0 or no \
                 MTP weights, or the runner cannot draft)"
                    .into(),
            )));
        }
        let scheduler = Scheduler::new(SchedulerConfig {
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_num_seqs: cfg.max_num_seqs,
            max_model_len,
            block_size: cfg.block_size,
            num_blocks: parts.num_blocks,
            enable_prefix_caching: cfg.enable_prefix_caching,
            policy: match cfg.scheduling_policy {
                SchedulingPolicy::Fcfs => QueuePolicy::Fcfs,
                SchedulingPolicy::Priority => QueuePolicy::Priority,
            },
            // Draft steps after the first write the draft model's KV up to k - 1 positions past
            // the verified tokens.
            num_lookahead_tokens: num_speculative_tokens.saturating_sub(1),
            num_speculative_tokens,
        })?;
        let template = chat_template(cfg, &parts)?;
        let served_names = if cfg.served_model_name.is_empty() {
            vec![parts.default_served_name.clone()]
        } else {
            cfg.served_model_name.clone()
        };
        let metrics = Metrics::new(
            &served_names[0],
            &CacheConfigInfo {
                block_size: cfg.block_size,
                num_gpu_blocks: parts.num_blocks,
                enable_prefix_caching: cfg.enable_prefix_caching,
                cache_dtype: cfg.kv_cache_dtype.as_str().to_owned(),
                gpu_memory_utilization: cfg.gpu_memory_utilization,
            },
        )?
        .with_spec_decode(num_speculative_tokens)?;
        let vocab_size = crate::output::tokenizer_size(&parts.tokenizer);
        if parts.runner.vocab_size() < vocab_size {
            tracing::warn!(
                "the runner's logits have {} columns, fewer than the tokenizer's {} tokens",
                parts.runner.vocab_size(),
                vocab_size
            );
        }
        let (engine, thread) = engine::spawn(
            EngineParts {
                scheduler,
                runner: parts.runner,
                tokenizer: parts.tokenizer.clone(),
                eos_token_ids: parts.eos_token_ids,
                metrics: metrics.clone(),
                seed: cfg.seed,
                num_speculative_tokens,
                spec_disable_by_batch_size: cfg.speculative_disable_by_batch_size(),
            },
            cfg.max_num_seqs.saturating_add(cfg.max_waiting_requests),
        )?;
        let state = AppState {
            engine: engine.clone(),
            tokenizer: parts.tokenizer,
            template: Arc::new(template),
            served_names,
            model_root: cfg.model.clone().unwrap_or_default(),
            max_model_len,
            api_key: cfg.api_key.clone(),
            tool_parser: cfg.tool_call_parser.map(tool_parser),
            reasoning_parser: cfg.reasoning_parser.is_some(),
            auto_tool_choice: cfg.enable_auto_tool_choice,
            metrics,
            draining: AtomicBool::new(false),
            max_body_bytes: cfg.max_request_body_bytes,
            body_timeout: Duration::from_millis(cfg.request_body_timeout_ms),
            max_logprobs: cfg.max_logprobs,
            defaults: parts.generation_defaults,
            vocab_size,
            started: crate::api::prompt::unix_now(),
        };
        Ok(Self {
            app: App::new(Arc::new(state)),
            engine,
            thread: Some(thread),
            shutdown_timeout: Duration::from_secs(cfg.shutdown_timeout),
        })
    }

    /// The HTTP service.
    pub fn app(&self) -> App {
        self.app.clone()
    }

    /// The engine handle (load, in-flight counts).
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// Starts draining and waits up to `timeout` for in-flight requests. True if all finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.app.set_draining(true);
        tokio::time::timeout(timeout, self.engine.wait_idle())
            .await
            .is_ok()
    }

    /// Aborts what is still running, stops the engine thread and waits for it.
    pub async fn shutdown(mut self) {
        self.app.set_draining(true);
        self.engine.shutdown();
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // Without an explicit shutdown the engine still stops: every handle's inbox closes
        // when the app is dropped; asking now avoids waiting for that.
        if self.thread.is_some() {
            self.engine.shutdown();
        }
    }
}

fn spawn_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: tokio::net::TcpStream,
    app: &App,
) {
    let _ = stream.set_nodelay(true);
    let app = app.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(req).await) }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    let conn = graceful.watch(conn);
    // One task per connection, as hyper's server model requires; it ends with the connection.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("connection ended with an error: {e}");
        }
    });
}

/// Runs the replica on `listener` until `shutdown` resolves, then drains and stops (see the
/// module docs). Returns `Ok(())` after a clean shutdown.
pub async fn serve<F>(
    cfg: ServeConfig,
    parts: ReplicaParts,
    listener: TcpListener,
    shutdown: F,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let replica = Replica::start(&cfg, parts)?;
    let app = replica.app();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // With a timer hyper enforces its header-read timeout (30 s): a client that opens a
    // connection and never finishes its request head no longer holds it forever (slowloris).
    // The body has its own deadline (`request_body_timeout_ms`, in the handlers: 408).
    builder.http1().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("serving {} on http://{addr}", app.state().model_name());
    }
    tokio::pin!(shutdown);
    let engine = replica.engine().clone();
    let died = engine.stopped();
    tokio::pin!(died);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = &mut died => {
                replica.shutdown().await;
                return Err(ServeError::EngineDied);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => spawn_connection(&builder, &graceful, stream, &app),
                Err(e) => accept_error(e).await,
            },
        }
    }
    tracing::info!(
        "shutting down: draining in-flight requests for up to {}s",
        replica.shutdown_timeout.as_secs()
    );
    {
        let drain = replica.drain(replica.shutdown_timeout);
        tokio::pin!(drain);
        loop {
            tokio::select! {
                finished = &mut drain => {
                    if !finished {
                        tracing::warn!(
                            "shutdown timeout reached: aborting {} requests",
                            engine.in_flight()
                        );
                    }
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => spawn_connection(&builder, &graceful, stream, &app),
                    Err(e) => accept_error(e).await,
                },
            }
        }
    }
    drop(listener);
    replica.shutdown().await;
    if tokio::time::timeout(CONNECTION_CLOSE_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }
    Ok(())
}

/// Accept errors (e.g. out of file descriptors) are transient: log and back off briefly.
async fn accept_error(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
