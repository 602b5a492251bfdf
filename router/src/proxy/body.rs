//! Response bodies the router sends: a buffered body, or an SSE relay.
//!
//! The relay forwards an upstream event stream frame by frame as it arrives (no buffering beyond
//! one incomplete event), holds the replica's [`InflightGuard`] until the stream ends, fails, or
//! the client drops it, and never fails itself: if the upstream dies mid-stream, the client gets
//! one `data: {"error": ...}` event and a clean end of body.
//!
//! Event alignment: the relay forwards only whole SSE events (up to the last blank line seen) and
//! holds back the incomplete tail, so a cut never leaves half an event in front of the error
//! event. Replicas write one event per chunk, so in practice nothing is held back. A tail that
//! grows beyond [`MAX_HELD_BYTES`] without an event boundary is forwarded as is.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::error::midstream_error_event;
use crate::fleet::InflightGuard;

/// Most bytes of an incomplete event held back.
pub const MAX_HELD_BYTES: usize = 1 << 20;

/// The body of every response the router sends.
#[derive(Debug)]
pub struct ProxyBody(Kind);

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Relay(Box<SseRelay>),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self(Kind::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// No body.
    pub fn empty() -> Self {
        Self(Kind::Full(None))
    }

    pub(crate) fn relay(first: Bytes, upstream: Incoming, guard: InflightGuard) -> Self {
        let mut relay = SseRelay {
            upstream: Some(upstream),
            ready: None,
            held: BytesMut::new(),
            guard: Some(guard),
            finished: false,
        };
        relay.ready = relay.complete_events(first);
        Self(Kind::Relay(Box::new(relay)))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Relay(relay) => relay.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Relay(relay) => relay.finished && relay.ready.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Relay(_) => SizeHint::default(),
        }
    }
}

#[derive(Debug)]
struct SseRelay {
    upstream: Option<Incoming>,
    ready: Option<Bytes>,
    held: BytesMut,
    guard: Option<InflightGuard>,
    finished: bool,
}

impl SseRelay {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        loop {
            if let Some(bytes) = self.ready.take() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if self.finished {
                return Poll::Ready(None);
            }
            let Some(upstream) = self.upstream.as_mut() else {
                self.finished = true;
                continue;
            };
            match Pin::new(upstream).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.ready = self.complete_events(data),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) => {
                    // Clean end: whatever the replica sent is what it meant to send.
                    let rest = self.held.split().freeze();
                    self.ready = (!rest.is_empty()).then_some(rest);
                    self.finish();
                }
                Poll::Ready(Some(Err(error))) => {
                    self.held.clear();
                    if let Some(guard) = &self.guard {
                        let replica = guard.replica();
                        replica.record_failure("midstream");
                        tracing::warn!(replica = %replica.name(), %error, "upstream stream failed mid-way");
                        self.ready =
                            Some(midstream_error_event(replica.name(), &error.to_string()));
                    }
                    self.finish();
                }
            }
        }
    }

    /// Release the replica as soon as the upstream is done, not when hyper drops the body.
    fn finish(&mut self) {
        self.finished = true;
        self.upstream = None;
        self.guard = None;
    }

    /// Append `data` and take every complete event; `None` when there is none yet.
    fn complete_events(&mut self, data: Bytes) -> Option<Bytes> {
        if self.held.is_empty() && ends_with_event_boundary(&data) {
            return (!data.is_empty()).then_some(data);
        }
        self.held.extend_from_slice(&data);
        let cut = match last_event_end(&self.held) {
            Some(end) => end,
            None if self.held.len() > MAX_HELD_BYTES => self.held.len(),
            None => return None,
        };
        Some(self.held.split_to(cut).freeze())
    }
}

fn ends_with_event_boundary(data: &[u8]) -> bool {
    data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n")
}

/// End (exclusive) of the last complete SSE event: the byte after the last blank line.
fn last_event_end(buf: &[u8]) -> Option<usize> {
    (1..buf.len()).rev().find_map(|i| {
        let blank = buf[i] == b'\n'
            && (buf[i - 1] == b'\n' || (i >= 2 && buf[i - 1] == b'\r' && buf[i - 2] == b'\n'));
        blank.then_some(i + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_event_boundaries() {
        assert_eq!(last_event_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(last_event_end(b"data: a\r\n\r\ndata: b\r\n"), Some(11));
        assert_eq!(last_event_end(b"data: a\n"), None);
        assert_eq!(last_event_end(b""), None);
        assert!(ends_with_event_boundary(b"data: x\n\n"));
        assert!(!ends_with_event_boundary(b"data: x\n"));
    }

    fn relay_without_upstream() -> SseRelay {
        SseRelay {
            upstream: None,
            ready: None,
            held: BytesMut::new(),
            guard: None,
            finished: false,
        }
    }

    #[test]
    fn holds_back_incomplete_events_only() {
        let mut relay = relay_without_upstream();
        assert_eq!(
            relay
                .complete_events(Bytes::from_static(b"data: 1\n\n"))
                .as_deref(),
            Some(&b"data: 1\n\n"[..])
        );
        assert_eq!(relay.complete_events(Bytes::from_static(b"data: 2")), None);
        assert_eq!(
            relay
                .complete_events(Bytes::from_static(b"\n\ndata: 3"))
                .as_deref(),
            Some(&b"data: 2\n\n"[..])
        );
        assert_eq!(&relay.held[..], b"data: 3");
    }

    #[test]
    fn full_body_reports_its_size() {
        let body = ProxyBody::full("abc");
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        assert!(ProxyBody::empty().is_end_stream());
    }
}
