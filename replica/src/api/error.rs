//! [`ApiError`]: every failure the HTTP layer can report, mapped to a status and OpenAI's error
//! body `{"error": {"message", "type", "param", "code"}}` in exactly one place.
//!
//! `code` is the HTTP status as an integer (vLLM's convention; the OpenAI client accepts it).
//! Overload and drain answers carry `Retry-After`; client errors carry `x-should-retry: false`
//! so OpenAI clients do not retry them.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use super::body::{full, ApiBody};

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, wrong types, bad values, over-long prompts (400).
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The offending parameter, when known.
        param: Option<&'static str>,
    },
    /// Missing or wrong API key (401).
    #[error("Unauthorized: invalid or missing API key")]
    Unauthorized,
    /// Unknown model name (404).
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// Unknown path (404).
    #[error("Not found: {0}")]
    RouteNotFound(String),
    /// Known path, wrong method (405).
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// Request body over the limit (413).
    #[error("Request body too large: the limit is {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The request body did not arrive within the read deadline (408; the connection is closed).
    #[error("Request body not received within {timeout_ms} ms; closing the connection")]
    BodyTimeout {
        /// The deadline in milliseconds.
        timeout_ms: u64,
    },
    /// Shutting down (503).
    #[error("The server is shutting down and does not accept new requests")]
    Draining,
    /// Too many requests waiting (503).
    #[error("{0}")]
    Overloaded(String),
    /// The engine thread is not running (503).
    #[error("The engine is not running")]
    EngineDown,
    /// A generation step failed (500).
    #[error("{0}")]
    Engine(String),
    /// `tool_choice` required / named and the model produced no matching call (500).
    #[error("{0}")]
    ToolCallMissing(String),
}

impl ApiError {
    /// A 400 about `param`.
    pub fn bad(param: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: Some(param),
        }
    }

    /// A 400 without a specific parameter.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: None,
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::ModelNotFound(_) | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Draining | Self::Overloaded(_) | Self::EngineDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Engine(_) | Self::ToolCallMissing(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "BadRequestError",
            Self::Unauthorized => "AuthenticationError",
            Self::ModelNotFound(_) | Self::RouteNotFound(_) => "NotFoundError",
            Self::MethodNotAllowed => "MethodNotAllowedError",
            Self::PayloadTooLarge { .. } => "PayloadTooLargeError",
            Self::BodyTimeout { .. } => "RequestTimeoutError",
            Self::Draining | Self::Overloaded(_) | Self::EngineDown => "ServiceUnavailableError",
            Self::Engine(_) | Self::ToolCallMissing(_) => "InternalServerError",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            Self::BadRequest { param, .. } => *param,
            Self::ModelNotFound(_) => Some("model"),
            Self::ToolCallMissing(_) => Some("tool_choice"),
            _ => None,
        }
    }

    /// The JSON error object (also sent as an SSE event mid-stream).
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.status().as_u16(),
            }
        })
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<ApiBody> {
        let status = self.status();
        let body = Bytes::from(self.body().to_string());
        let mut resp = Response::new(full(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            Self::Draining | Self::Overloaded(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::Unauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body may still be on its way: the connection cannot be reused.
            Self::BodyTimeout { .. } => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        if status.is_client_error() {
            h.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_bodies() {
        let cases = [
            (ApiError::bad("temperature", "bad"), 400, "BadRequestError"),
            (ApiError::Unauthorized, 401, "AuthenticationError"),
            (ApiError::ModelNotFound("x".into()), 404, "NotFoundError"),
            (
                ApiError::PayloadTooLarge { limit: 10 },
                413,
                "PayloadTooLargeError",
            ),
            (
                ApiError::BodyTimeout { timeout_ms: 5 },
                408,
                "RequestTimeoutError",
            ),
            (ApiError::Draining, 503, "ServiceUnavailableError"),
            (ApiError::Engine("boom".into()), 500, "InternalServerError"),
        ];
        for (err, status, kind) in cases {
            let body = err.body();
            assert_eq!(err.status().as_u16(), status);
            assert_eq!(body["error"]["type"], kind);
            assert_eq!(body["error"]["code"], status);
        }
        assert_eq!(
            ApiError::ModelNotFound("x".into()).body()["error"]["param"],
            "model"
        );
        let resp = ApiError::Overloaded("busy".into()).into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let resp = ApiError::BodyTimeout { timeout_ms: 5 }.into_response();
        assert_eq!(resp.headers()[header::CONNECTION], "close");
    }
}
