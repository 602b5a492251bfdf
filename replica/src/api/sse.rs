//! Server-sent events framing (`data: <json>\n\n`, terminated by `data: [DONE]\n\n`), as OpenAI
//! clients and `vllm bench serve` expect.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;

use super::body::{streaming, ApiBody};
use super::error::ApiError;

/// The terminating event.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Appends one `data:` event holding `value` as JSON.
pub fn push_event<T: Serialize>(buf: &mut Vec<u8>, value: &T) {
    buf.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *buf, value).is_err() {
        // Serializing our own response types cannot fail; keep the stream well-formed anyway.
        buf.extend_from_slice(b"{}");
    }
    buf.extend_from_slice(b"\n\n");
}

/// Appends an error event (the OpenAI client raises `APIError` on it).
pub fn push_error(buf: &mut Vec<u8>, err: &ApiError) {
    push_event(buf, &err.body());
}

/// A `text/event-stream` response over `stream`.
pub fn response<S>(stream: S) -> Response<ApiBody>
where
    S: futures_util::Stream<Item = Bytes> + Send + 'static,
{
    let mut resp = Response::new(streaming(stream));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_events() {
        let mut buf = Vec::new();
        push_event(&mut buf, &serde_json::json!({"a": 1}));
        push_error(&mut buf, &ApiError::invalid("x"));
        buf.extend_from_slice(DONE);
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("data: {\"a\":1}\n\ndata: {\"error\":"));
        assert!(text.ends_with("\n\ndata: [DONE]\n\n"));
    }
}
