//! Request and response bodies: bounded request reading (413) and the one response body type
//! used by every handler (a full buffer or a byte stream, e.g. SSE).

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Body, Frame};
use serde::Serialize;

use super::error::ApiError;

/// The response body of every endpoint.
pub type ApiBody = UnsyncBoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ApiBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// A streamed body; the stream (and anything it owns, such as a request guard) is dropped
/// when the client goes away.
pub fn streaming<S>(stream: S) -> ApiBody
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ApiBody> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(full(bytes));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => ApiError::Engine(format!("response serialization failed: {e}")).into_response(),
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<ApiBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// Reads a request body of at most `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::invalid(format!("cannot read request body: {e}"))),
    }
}

/// Parses a JSON request body; syntax and type errors are 400s with serde's message.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "malformed JSON"
            }
            _ => "invalid request",
        };
        ApiError::invalid(format!("{kind}: {e}"))
    })
}
