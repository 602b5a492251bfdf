//! The router as a value: [`App`] owns the fleet, the client and the metrics, answers any
//! `Request`, and is a `tower::Service`, so tests can drive it without a listening socket.
//!
//! Routes: `GET /health`, `GET /metrics`, `GET /replicas` and `GET /v1/models` are the router's
//! own; every other path under `/v1/`, plus `/tokenize` and `/detokenize`, is proxied; anything
//! else is 404. Only the path and query of a request are used: the upstream host is always one
//! of the fleet's replicas.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Body;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::admin;
use crate::config::{ConfigError, RouterConfig};
use crate::error::ApiError;
use crate::fleet::monitor::{self, MonitorSettings};
use crate::fleet::{Discovery, Fleet, HealthSettings};
use crate::metrics::Metrics;
use crate::policy::{self, PolicyConfig};
use crate::proxy::{self, HttpClient, ProxyBody, ProxySettings};
use crate::routing_key::{self, KeyConfig};
use crate::RouterError;

/// State shared by every request.
pub(crate) struct Inner {
    pub(crate) cfg: RouterConfig,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) client: HttpClient,
    pub(crate) metrics: Metrics,
    pub(crate) policy_name: &'static str,
    proxy: ProxySettings,
    keys: KeyConfig,
    ready: watch::Receiver<bool>,
}

/// Aborts the monitor task when the last [`App`] clone goes.
struct Background(JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The whole router. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
    background: Arc<Background>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("policy", &self.inner.policy_name)
            .field("replicas", &self.inner.fleet.members().len())
            .finish()
    }
}

impl App {
    /// Validate `cfg`, build the router and start its background upkeep (health probes, load
    /// polls, discovery). Must be called inside a Tokio runtime. Replicas join once their first
    /// probe succeeds; await [`App::ready`] to wait for the first round.
    pub fn new(cfg: RouterConfig) -> Result<Self, RouterError> {
        cfg.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RouterError::NoRuntime)?;
        let static_names = cfg.replica_names()?;
        let discovery = match &cfg.discover {
            Some(spec) => Some(
                Discovery::parse(spec).map_err(|message| ConfigError::Invalid {
                    key: "discover",
                    message,
                })?,
            ),
            None => None,
        };
        let metrics = Metrics::new();
        let policy = policy::build(
            cfg.policy,
            &PolicyConfig {
                load_bound: cfg.load_bound,
                affinity_capacity: cfg.affinity_capacity,
                seed: u64::from(std::process::id()),
            },
        );
        let health = HealthSettings {
            eject_after: cfg.eject_after_failures,
            readmit_base_ms: cfg.health_interval_ms,
            report_ttl_ms: cfg.load_poll_interval_ms.saturating_mul(5).max(1_000),
            kv_pressure: cfg.kv_pressure_threshold,
        };
        let fleet = Arc::new(Fleet::new(
            policy,
            cfg.max_inflight_per_replica,
            health,
            metrics.clone(),
        ));
        fleet.set_members(&static_names);
        let client = proxy::http_client(Duration::from_millis(cfg.connect_timeout_ms));
        let (ready_tx, ready) = watch::channel(false);
        let monitor_settings = MonitorSettings {
            health_interval: Duration::from_millis(cfg.health_interval_ms),
            probe_timeout: Duration::from_millis(cfg.health_timeout_ms),
            load_interval: (cfg.load_poll_interval_ms > 0)
                .then(|| Duration::from_millis(cfg.load_poll_interval_ms)),
            discovery: discovery.map(|d| (d, Duration::from_millis(cfg.discover_interval_ms))),
            static_names,
        };
        let task = runtime.spawn(monitor::run(
            fleet.clone(),
            client.clone(),
            monitor_settings,
            ready_tx,
        ));
        let inner = Inner {
            proxy: ProxySettings {
                first_byte_timeout: Duration::from_millis(cfg.first_byte_timeout_ms),
                max_response_bytes: cfg.max_response_bytes,
                max_retries: cfg.max_retries,
                max_inflight: cfg.max_inflight_per_replica,
            },
            keys: KeyConfig {
                block_bytes: cfg.block_bytes,
                max_blocks: cfg.max_prefix_blocks,
            },
            policy_name: cfg.policy.as_str(),
            fleet,
            client,
            metrics,
            ready,
            cfg,
        };
        Ok(Self {
            inner: Arc::new(inner),
            background: Arc::new(Background(task)),
        })
    }

    /// Resolves once discovery has run and every replica has been probed once.
    pub async fn ready(&self) {
        let mut ready = self.inner.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// The configuration in use.
    pub fn config(&self) -> &RouterConfig {
        &self.inner.cfg
    }

    /// The router's metrics registry (also served at `/metrics`).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Stop health probes, load polls and discovery (also done when the last clone drops).
    pub fn stop_background(&self) {
        self.background.0.abort();
    }

    /// Answer one request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let inner = &*self.inner;
        let path = request.uri().path();
        let get = request.method() == Method::GET;
        match path {
            "/health" if get => admin::health(inner),
            "/metrics" if get => admin::metrics(inner),
            "/replicas" if get => admin::replicas(inner),
            "/v1/models" if get => admin::models(inner, request.headers()).await,
            "/health" | "/metrics" | "/replicas" => {
                ApiError::MethodNotAllowed(request.method().clone()).into_response()
            }
            p if p.starts_with("/v1/") || p == "/tokenize" || p == "/detokenize" => {
                self.proxy(request).await
            }
            _ => ApiError::NotFound {
                method: request.method().clone(),
                path: path.to_owned(),
            }
            .into_response(),
        }
    }

    async fn proxy<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let inner = &*self.inner;
        let limit = inner.cfg.max_body_bytes;
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return self.reject(ApiError::BodyTooLarge { limit });
        }
        // The whole body is read before a replica is chosen, within the body deadline: a client
        // that stalls mid-body gets a 408 and never ties up a replica.
        let deadline = Duration::from_millis(inner.cfg.request_body_timeout_ms);
        let body = match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
            Err(_elapsed) => {
                return self.reject(ApiError::BodyTimeout {
                    timeout_ms: inner.cfg.request_body_timeout_ms,
                });
            }
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
                return self.reject(ApiError::BodyTooLarge { limit });
            }
            Ok(Err(e)) => return self.reject(ApiError::BodyRead(e.to_string())),
        };
        let started = Instant::now();
        let key = if parts.method == Method::POST {
            routing_key::extract(&body, &inner.keys)
        } else {
            routing_key::RoutingKey::default()
        };
        let (response, waited) = proxy::forward(
            &inner.fleet,
            &inner.client,
            &inner.metrics,
            &inner.proxy,
            &parts,
            body,
            &key,
        )
        .await;
        let status = response.status().as_u16();
        let served_by = response
            .headers()
            .get(proxy::REPLICA_HEADER)
            .and_then(|v| v.to_str().ok());
        if served_by.is_none() && matches!(status, 429 | 503) {
            inner
                .metrics
                .rejected
                .with_label_values(&[crate::metrics::reject_reason(status)])
                .inc();
        }
        inner.metrics.count_request(served_by, status);
        let own = started.elapsed().saturating_sub(waited);
        inner.metrics.added_latency.observe(own.as_secs_f64());
        response
    }

    fn reject(&self, error: ApiError) -> Response<ProxyBody> {
        let status = error.status().as_u16();
        self.inner
            .metrics
            .rejected
            .with_label_values(&[crate::metrics::reject_reason(status)])
            .inc();
        self.inner.metrics.count_request(None, status);
        error.into_response()
    }
}

impl<B> tower::Service<Request<B>> for App
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let app = self.clone();
        Box::pin(async move { Ok(app.handle(request).await) })
    }
}
