//! Request and response bodies: bounded request reading (413 over the size limit, 408 past the
//! read deadline) and the one response body type used by every handler (a full buffer or a byte
//! stream, e.g. SSE).

use std::convert::Infallible;
use std::time::Duration;

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

/// Reads a request body of at most `limit` bytes within `deadline`. A body that declares more
/// (its `Content-Length`, seen through the size hint) is refused before anything is read, and a
/// body that has not fully arrived when `deadline` passes is a 408: a client cannot hold a
/// connection and a task by announcing a body and then sending it slowly or not at all.
pub async fn read_limited<B>(body: B, limit: usize, deadline: Duration) -> Result<Bytes, ApiError>
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Err(_elapsed) => Err(ApiError::BodyTimeout {
            timeout_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Ok(Err(e)) => Err(ApiError::invalid(format!("cannot read request body: {e}"))),
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use hyper::body::SizeHint;

    use super::*;

    /// Long enough never to fire in the tests that are not about the deadline.
    const NO_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

    /// A body that announces `declared` bytes and never delivers any.
    struct Announced {
        declared: u64,
    }

    impl Body for Announced {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(self.declared)
        }
    }

    #[tokio::test]
    async fn a_declared_oversize_body_is_refused_without_waiting_for_it() {
        // Regression: the limit used to be checked only while reading, so a client declaring
        // `Content-Length: 1000000000000` and sending nothing kept the request hanging.
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_limited(Announced { declared: 1 << 40 }, 4096, NO_DEADLINE),
        )
        .await
        .expect("refused at once");
        assert_eq!(got, Err(ApiError::PayloadTooLarge { limit: 4096 }));
    }

    #[tokio::test]
    async fn bodies_within_the_limit_are_read() {
        let body = Full::new(Bytes::from_static(b"{}"));
        assert_eq!(
            read_limited(body, 2, NO_DEADLINE).await.unwrap(),
            Bytes::from_static(b"{}")
        );
        let body = Full::new(Bytes::from_static(b"{\"a\": 1}"));
        assert_eq!(
            read_limited(body, 4, NO_DEADLINE).await,
            Err(ApiError::PayloadTooLarge { limit: 4 })
        );
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_with_408() {
        // A client that announces 100 bytes (within the limit) and then sends nothing used to
        // hold the request (and its connection) forever.
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_limited(
                Announced { declared: 100 },
                4096,
                std::time::Duration::from_millis(50),
            ),
        )
        .await
        .expect("the deadline fired");
        assert_eq!(got, Err(ApiError::BodyTimeout { timeout_ms: 50 }));
        assert!(started.elapsed() >= std::time::Duration::from_millis(50));
        let err = got.unwrap_err();
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(err.to_string().contains("50 ms"), "{err}");
    }
}
