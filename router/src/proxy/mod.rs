//! Forwarding one request: choose, send, wait for the first byte, retry, relay.
//!
//! Retry rule: a request is retried on the next choice (excluding replicas it already tried, at
//! most `max_retries` times) only while **nothing has been sent to the client**. To widen that
//! window the proxy holds the response head back until it has the first body chunk of an event
//! stream, and buffers non-stream bodies completely; so a replica that dies after its headers but
//! before its first token is still retried, and a non-stream client never sees half a JSON body.
//! Once the first chunk of a stream is sent, a failure ends the stream with an SSE error event
//! instead (no retry, so no duplicated tokens: A10 item 8).
//!
//! Failures that count against the replica (towards ejection): connect errors, timeouts, closed
//! connections, 500/502/503/504, streams cut mid-way. 429 is retried but not counted (busy is not
//! broken). Any other status is the answer and is passed through, 4xx included. A non-stream
//! answer over `max_response_bytes` is a 502 without retry (another replica would redo the same
//! work for the same result). While waiting for
//! the first byte the proxy also watches the replica's health: if the replica is ejected
//! meanwhile (probes time out), the request moves on at once instead of waiting out its timeout.

mod body;
mod headers;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, request, response, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::watch;
use tokio::time::Instant;

pub use body::{EventAligner, ProxyBody, MAX_HELD_BYTES};
pub(crate) use headers::copy_end_to_end as copy_request_headers;

use crate::error::ApiError;
use crate::fleet::{ChooseError, Fleet, InflightGuard, Replica};
use crate::metrics::Metrics;
use crate::policy::ReplicaId;
use crate::routing_key::RoutingKey;

/// Response header naming the replica that served the request.
pub const REPLICA_HEADER: &str = "x-glmfleet-replica";

/// The pooled HTTP/1 client used for replicas.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Build the client: pooled keep-alive connections, `TCP_NODELAY`, bounded connect time.
pub(crate) fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// What the proxy needs besides the fleet.
#[derive(Clone, Debug)]
pub(crate) struct ProxySettings {
    pub first_byte_timeout: Duration,
    pub max_response_bytes: usize,
    pub max_retries: u32,
    pub max_inflight: u64,
}

/// An attempt that produced nothing to send.
enum Failure {
    /// Nothing usable came back.
    Transport {
        reason: &'static str,
        error: ApiError,
    },
    /// A retryable status; kept to pass on when no retry is left.
    Status(Response<ProxyBody>),
}

impl Failure {
    fn reason(&self) -> &'static str {
        match self {
            Self::Transport { reason, .. } => reason,
            Self::Status(_) => "status",
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        match self {
            Self::Transport { error, .. } => error.into_response(),
            Self::Status(response) => response,
        }
    }
}

/// Why waiting on a replica stopped early.
enum WaitError {
    Timeout,
    Ejected,
}

/// Forward a request whose body has been read. Returns the response and the time spent waiting
/// on replicas (to separate the router's own latency from the replicas').
pub(crate) async fn forward(
    fleet: &Fleet,
    client: &HttpClient,
    metrics: &Metrics,
    settings: &ProxySettings,
    parts: &request::Parts,
    body: Bytes,
    key: &RoutingKey,
) -> (Response<ProxyBody>, Duration) {
    let mut tried: Vec<ReplicaId> = Vec::new();
    let mut last: Option<Failure> = None;
    let mut waited = Duration::ZERO;
    for _ in 0..=settings.max_retries {
        let chosen = match fleet.choose(key, &tried) {
            Ok(chosen) => chosen,
            Err(e) => {
                let response = match (last, e) {
                    (Some(failure), _) => failure.into_response(),
                    (None, ChooseError::Overloaded) => ApiError::Overloaded {
                        limit: settings.max_inflight,
                    }
                    .into_response(),
                    (None, _) => ApiError::NoHealthyReplica.into_response(),
                };
                return (response, waited);
            }
        };
        if let Some(previous) = &last {
            metrics
                .retries
                .with_label_values(&[previous.reason()])
                .inc();
        }
        tried.push(chosen.guard.replica().id());
        let started = Instant::now();
        let result = attempt(client, settings, parts, body.clone(), chosen.guard).await;
        waited += started.elapsed();
        match result {
            Ok(response) => return (response, waited),
            // Another replica would produce the same oversized answer: do not redo the work.
            Err(failure) if failure.reason() == "too_large" => {
                return (failure.into_response(), waited)
            }
            Err(failure) => last = Some(failure),
        }
    }
    let response = last.map_or_else(
        || ApiError::NoHealthyReplica.into_response(),
        Failure::into_response,
    );
    (response, waited)
}

/// One try on one replica.
async fn attempt(
    client: &HttpClient,
    settings: &ProxySettings,
    parts: &request::Parts,
    body: Bytes,
    guard: InflightGuard,
) -> Result<Response<ProxyBody>, Failure> {
    let replica = guard.replica().clone();
    let request = upstream_request(parts, &replica, body).map_err(|e| Failure::Transport {
        reason: "connect",
        error: ApiError::Upstream {
            replica: replica.name().to_owned(),
            reason: format!("cannot build the upstream request: {e}"),
        },
    })?;
    let mut health = replica.subscribe_health();
    let deadline = Instant::now() + settings.first_byte_timeout;

    let response = match wait(client.request(request), deadline, &mut health).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            let reason = if e.is_connect() { "connect" } else { "closed" };
            return Err(transport_failure(&replica, reason, &e));
        }
        Err(WaitError::Timeout) => return Err(timeout_failure(&replica, settings)),
        Err(WaitError::Ejected) => return Err(ejected_failure(&replica)),
    };

    let status = response.status();
    if is_retryable(status) {
        if status != StatusCode::TOO_MANY_REQUESTS {
            replica.record_failure("status");
        }
        let (head, incoming) = response.into_parts();
        let bytes = read_body(incoming, settings.max_response_bytes, deadline, &mut health)
            .await
            .unwrap_or_default();
        return Err(Failure::Status(client_response(
            head,
            ProxyBody::full(bytes),
            &replica,
        )));
    }

    let (head, mut incoming) = response.into_parts();
    if is_event_stream(&head) {
        let first = match wait(first_chunk(&mut incoming), deadline, &mut health).await {
            Ok(Ok(first)) => first,
            Ok(Err(e)) => return Err(transport_failure(&replica, "closed", &e)),
            Err(WaitError::Timeout) => return Err(timeout_failure(&replica, settings)),
            Err(WaitError::Ejected) => return Err(ejected_failure(&replica)),
        };
        replica.record_success();
        return Ok(client_response(
            head,
            ProxyBody::relay(first, incoming, guard),
            &replica,
        ));
    }

    match read_body(incoming, settings.max_response_bytes, deadline, &mut health).await {
        Ok(bytes) => {
            replica.record_success();
            drop(guard);
            Ok(client_response(head, ProxyBody::full(bytes), &replica))
        }
        Err(ReadError::TooLarge) => {
            // The replica is fine; the answer is just larger than the router relays.
            Err(Failure::Transport {
                reason: "too_large",
                error: ApiError::Upstream {
                    replica: replica.name().to_owned(),
                    reason: format!(
                        "response exceeds max_response_bytes ({})",
                        settings.max_response_bytes
                    ),
                },
            })
        }
        Err(ReadError::Upstream(e)) => Err(transport_failure(&replica, "closed", &e)),
        Err(ReadError::Wait(WaitError::Timeout)) => Err(timeout_failure(&replica, settings)),
        Err(ReadError::Wait(WaitError::Ejected)) => Err(ejected_failure(&replica)),
    }
}

/// Await `fut` until `deadline`, giving up early if the replica is ejected meanwhile.
async fn wait<F: std::future::Future>(
    fut: F,
    deadline: Instant,
    health: &mut watch::Receiver<bool>,
) -> Result<F::Output, WaitError> {
    tokio::select! {
        biased;
        result = tokio::time::timeout_at(deadline, fut) => result.map_err(|_| WaitError::Timeout),
        Ok(_) = health.wait_for(|healthy| !*healthy) => Err(WaitError::Ejected),
    }
}

/// The first non-empty data chunk; empty when the stream ends without one.
async fn first_chunk(incoming: &mut Incoming) -> Result<Bytes, hyper::Error> {
    while let Some(frame) = incoming.frame().await {
        if let Ok(data) = frame?.into_data() {
            if !data.is_empty() {
                return Ok(data);
            }
        }
    }
    Ok(Bytes::new())
}

enum ReadError {
    TooLarge,
    Upstream(hyper::Error),
    Wait(WaitError),
}

async fn read_body(
    mut incoming: Incoming,
    limit: usize,
    deadline: Instant,
    health: &mut watch::Receiver<bool>,
) -> Result<Bytes, ReadError> {
    let mut buf = BytesMut::new();
    loop {
        let frame = match wait(incoming.frame(), deadline, health).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(ReadError::Upstream(e)),
            Err(e) => return Err(ReadError::Wait(e)),
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
}

fn transport_failure(
    replica: &Replica,
    reason: &'static str,
    error: &dyn std::fmt::Display,
) -> Failure {
    replica.record_failure(reason);
    tracing::debug!(replica = %replica.name(), reason, %error, "upstream attempt failed");
    Failure::Transport {
        reason,
        error: ApiError::Upstream {
            replica: replica.name().to_owned(),
            reason: error.to_string(),
        },
    }
}

fn timeout_failure(replica: &Replica, settings: &ProxySettings) -> Failure {
    replica.record_failure("timeout");
    let timeout_ms = u64::try_from(settings.first_byte_timeout.as_millis()).unwrap_or(u64::MAX);
    tracing::debug!(replica = %replica.name(), timeout_ms, "upstream first-byte timeout");
    Failure::Transport {
        reason: "timeout",
        error: ApiError::UpstreamTimeout {
            replica: replica.name().to_owned(),
            timeout_ms,
        },
    }
}

fn ejected_failure(replica: &Replica) -> Failure {
    // The ejection itself was the failure that counted; do not count again.
    Failure::Transport {
        reason: "ejected",
        error: ApiError::Upstream {
            replica: replica.name().to_owned(),
            reason: "replica was ejected while the request waited for its first byte".into(),
        },
    }
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

fn is_event_stream(head: &response::Parts) -> bool {
    head.headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

fn upstream_request(
    parts: &request::Parts,
    replica: &Replica,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, http::Error> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = replica.uri(path)?;
    let has_body = !body.is_empty();
    let length = body.len();
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri;
    headers::copy_end_to_end(&parts.headers, request.headers_mut());
    if has_body {
        request
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(request)
}

fn client_response(
    head: response::Parts,
    body: ProxyBody,
    replica: &Replica,
) -> Response<ProxyBody> {
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    headers::copy_end_to_end(&head.headers, response.headers_mut());
    if let Ok(value) = HeaderValue::from_str(replica.name()) {
        response.headers_mut().insert(REPLICA_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::HealthSettings;

    #[test]
    fn upstream_target_never_comes_from_the_request() {
        let health = HealthSettings {
            eject_after: 3,
            readmit_base_ms: 0,
            report_ttl_ms: 1_000,
            kv_pressure: 0.98,
        };
        let replica = Replica::new("http://127.0.0.1:9001", health, &Metrics::new()).unwrap();
        let (parts, ()) = Request::post("http://evil.example:666/v1/completions?x=1")
            .header(header::HOST, "evil.example")
            .header(header::AUTHORIZATION, "Bearer k")
            .body(())
            .unwrap()
            .into_parts();
        let request = upstream_request(&parts, &replica, Bytes::from_static(b"{}")).unwrap();
        assert_eq!(request.uri(), "http://127.0.0.1:9001/v1/completions?x=1");
        assert!(request.headers().get(header::HOST).is_none());
        assert_eq!(request.headers()[header::AUTHORIZATION], "Bearer k");
        assert_eq!(request.headers()[header::CONTENT_LENGTH], "2");
    }

    #[test]
    fn retryable_statuses() {
        for code in [429, 500, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()));
        }
        for code in [200, 400, 401, 404, 422, 501] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()));
        }
    }
}
