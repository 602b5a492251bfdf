//! Errors the router answers itself, and their one mapping to HTTP.
//!
//! Every error body is OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`, so SDKs
//! raise the right exception class. Overload (429) and no-replica (503) answers carry
//! `retry-after: 1`. A stream cut mid-way is reported in-band as one SSE event
//! `data: {"error": {...}}` followed by the end of the body ([`midstream_error_event`]).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use serde_json::json;

use crate::proxy::{ProxyBody, REPLICA_HEADER};

/// A request the router answers without a replica's response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Path not served by the router.
    #[error("no route for {method} {path}")]
    NotFound {
        /// Request method.
        method: Method,
        /// Request path.
        path: String,
    },
    /// Router endpoint called with the wrong method.
    #[error("method {0} is not allowed on this endpoint")]
    MethodNotAllowed(Method),
    /// Body over `max_body_bytes`.
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The client's body did not arrive within `request_body_timeout_ms`.
    #[error("request body not received within {timeout_ms} ms; closing the connection")]
    BodyTimeout {
        /// The deadline in milliseconds.
        timeout_ms: u64,
    },
    /// The client's body could not be read.
    #[error("failed to read the request body: {0}")]
    BodyRead(String),
    /// No replica is healthy.
    #[error("no healthy replica is available")]
    NoHealthyReplica,
    /// Every healthy replica is at the hard in-flight cap.
    #[error("every replica is at its limit of {limit} in-flight requests; retry later")]
    Overloaded {
        /// The per-replica cap.
        limit: u64,
    },
    /// The last replica tried failed before answering.
    #[error("replica {replica} failed: {reason}")]
    Upstream {
        /// Base URL of the replica.
        replica: String,
        /// What went wrong.
        reason: String,
    },
    /// The last replica tried did not answer in time.
    #[error("replica {replica} did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        /// Base URL of the replica.
        replica: String,
        /// The first-byte timeout.
        timeout_ms: u64,
    },
}

impl ApiError {
    /// HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::NoHealthyReplica => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// OpenAI `type` and `code`.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::NotFound { .. } => ("invalid_request_error", "not_found"),
            Self::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            Self::BodyTooLarge { .. } => ("invalid_request_error", "request_too_large"),
            Self::BodyTimeout { .. } => ("invalid_request_error", "request_timeout"),
            Self::BodyRead(_) => ("invalid_request_error", "invalid_body"),
            Self::NoHealthyReplica => ("server_error", "no_healthy_replica"),
            Self::Overloaded { .. } => ("rate_limit_error", "overloaded"),
            Self::Upstream { .. } => ("server_error", "upstream_error"),
            Self::UpstreamTimeout { .. } => ("server_error", "upstream_timeout"),
        }
    }

    fn replica(&self) -> Option<&str> {
        match self {
            Self::Upstream { replica, .. } | Self::UpstreamTimeout { replica, .. } => Some(replica),
            _ => None,
        }
    }

    /// The response for this error.
    pub fn into_response(self) -> Response<ProxyBody> {
        let (kind, code) = self.kind();
        let body = json!({
            "error": {"message": self.to_string(), "type": kind, "param": null, "code": code}
        });
        let mut response = Response::new(ProxyBody::full(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self, Self::Overloaded { .. } | Self::NoHealthyReplica) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::BodyTimeout { .. }) {
            // the rest of the body may still be on its way: the connection cannot be reused
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(value) = self.replica().and_then(|r| HeaderValue::from_str(r).ok()) {
            headers.insert(REPLICA_HEADER, value);
        }
        response
    }
}

/// The SSE event that ends a stream whose replica failed after bytes were sent.
pub(crate) fn midstream_error_event(replica: &str, reason: &str) -> Bytes {
    let event = json!({
        "error": {
            "message": format!("replica {replica} failed mid-stream: {reason}"),
            "type": "server_error",
            "param": null,
            "code": "upstream_disconnected",
        }
    });
    Bytes::from(format!("data: {event}\n\n"))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn errors_are_openai_shaped() {
        let response = ApiError::Overloaded { limit: 4 }.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "overloaded");
        assert!(v["error"]["message"].as_str().unwrap().contains('4'));
    }

    #[test]
    fn body_timeout_is_a_408_that_closes_the_connection() {
        let response = ApiError::BodyTimeout { timeout_ms: 250 }.into_response();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn midstream_event_is_one_sse_event() {
        let event = midstream_error_event("http://r:1", "connection reset");
        let text = std::str::from_utf8(&event).unwrap();
        assert!(text.starts_with("data: {") && text.ends_with("}\n\n"));
        let v: serde_json::Value = serde_json::from_str(&text[6..text.len() - 2]).unwrap();
        assert_eq!(v["error"]["code"], "upstream_disconnected");
    }
}
