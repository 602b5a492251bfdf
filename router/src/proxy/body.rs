//! Response bodies the router sends: a buffered body, or an SSE relay.
//!
//! The relay forwards an upstream event stream frame by frame as it arrives (no buffering beyond
//! one incomplete event), holds the replica's [`InflightGuard`] until the replica has answered
//! (the OpenAI stream's `data: [DONE]` event is on its way to the client), the stream ends, fails,
//! or the client drops it, and never fails itself: if the upstream dies mid-stream, the client gets
//! one `data: {"error": ...}` event and a clean end of body.
//!
//! Event alignment: the relay forwards only whole SSE events (up to the last blank line seen) and
//! holds back the incomplete tail, so a cut never leaves half an event in front of the error
//! event. Replicas write one event per chunk, so in practice nothing is held back. A tail that
//! grows beyond [`MAX_HELD_BYTES`] without an event boundary is forwarded as is. The alignment
//! itself is [`EventAligner`] (public so it can be fuzzed on its own); it looks at each byte
//! once, so a replica dribbling a huge event byte by byte costs linear, not quadratic, time.

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
            aligner: EventAligner::new(),
            guard: Some(guard),
            finished: false,
        };
        relay.ready = relay.aligner.push(first);
        relay.release_if_answered();
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
    aligner: EventAligner,
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
                    Ok(data) => {
                        self.ready = self.aligner.push(data);
                        self.release_if_answered();
                    }
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) => {
                    // Clean end: whatever the replica sent is what it meant to send.
                    self.ready = self.aligner.finish();
                    self.finish();
                }
                Poll::Ready(Some(Err(error))) => {
                    self.aligner.discard();
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

    /// Release the replica once its `[DONE]` event is ready to go, before the client can see it:
    /// a client that sends its next request on `[DONE]` must not find the answered stream still
    /// counted on its prefix owner (the bounded-load rule would spill it elsewhere). The rest of
    /// the body (its end) is still read, so the upstream connection can be reused; a failure
    /// after `[DONE]` costs the client nothing and is not reported.
    fn release_if_answered(&mut self) {
        if self.guard.is_some() && self.ready.as_deref().is_some_and(ends_with_done_event) {
            self.guard = None;
        }
    }

    /// Release the replica as soon as the upstream is done, not when hyper drops the body.
    fn finish(&mut self) {
        self.finished = true;
        self.upstream = None;
        self.guard = None;
    }
}

/// Cuts a byte stream into runs of whole SSE events: [`EventAligner::push`] returns everything
/// up to the last event boundary (a blank line) seen so far and holds the incomplete tail back,
/// up to [`MAX_HELD_BYTES`]; [`EventAligner::finish`] returns the tail. Concatenating every
/// returned piece gives back exactly the bytes pushed.
#[derive(Debug, Default)]
pub struct EventAligner {
    held: BytesMut,
}

impl EventAligner {
    /// An aligner holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append `data` and take every complete event; `None` when there is none yet.
    pub fn push(&mut self, data: Bytes) -> Option<Bytes> {
        if self.held.is_empty() && ends_with_event_boundary(&data) {
            return (!data.is_empty()).then_some(data);
        }
        // `held` never contains a whole boundary, so a new one ends inside `data`.
        let scan_from = self.held.len();
        self.held.extend_from_slice(&data);
        let cut = match last_event_end(&self.held, scan_from) {
            Some(end) => end,
            None if self.held.len() > MAX_HELD_BYTES => self.held.len(),
            None => return None,
        };
        Some(self.held.split_to(cut).freeze())
    }

    /// The held incomplete tail (the stream ended); `None` when nothing is held.
    pub fn finish(&mut self) -> Option<Bytes> {
        let rest = self.held.split().freeze();
        (!rest.is_empty()).then_some(rest)
    }

    /// Drop the held tail (the stream failed: half an event must not reach the client).
    pub fn discard(&mut self) {
        self.held.clear();
    }

    /// Bytes held back.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }
}

/// `data` ends with the OpenAI stream's terminal event, `data: [DONE]` and its blank line.
fn ends_with_done_event(data: &[u8]) -> bool {
    let end = data
        .iter()
        .rposition(|&b| b != b'\n' && b != b'\r')
        .map_or(0, |i| i + 1);
    if end == data.len() {
        return false; // no blank line after it yet: not a whole event
    }
    let body = &data[..end];
    let line = body
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(body, |i| &body[i + 1..]);
    line == b"data: [DONE]" || line == b"data:[DONE]"
}

fn ends_with_event_boundary(data: &[u8]) -> bool {
    data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n")
}

/// End (exclusive) of the last complete SSE event whose blank line ends at or after `from`: the
/// byte after that blank line.
fn last_event_end(buf: &[u8], from: usize) -> Option<usize> {
    (from.max(1)..buf.len()).rev().find_map(|i| {
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
        assert_eq!(last_event_end(b"data: a\n\ndata: b", 0), Some(9));
        assert_eq!(last_event_end(b"data: a\r\n\r\ndata: b\r\n", 0), Some(11));
        assert_eq!(last_event_end(b"data: a\n", 0), None);
        assert_eq!(last_event_end(b"", 0), None);
        assert_eq!(last_event_end(b"data: a\n\n", 8), Some(9));
        assert_eq!(last_event_end(b"data: a\n\n", 9), None);
        assert!(ends_with_event_boundary(b"data: x\n\n"));
        assert!(!ends_with_event_boundary(b"data: x\n"));
    }

    #[test]
    fn finds_the_done_event_at_the_end_only() {
        assert!(ends_with_done_event(b"data: [DONE]\n\n"));
        assert!(ends_with_done_event(
            b"data: {\"a\":1}\n\ndata: [DONE]\r\n\r\n"
        ));
        assert!(ends_with_done_event(b"data:[DONE]\n\n"));
        assert!(!ends_with_done_event(b"data: [DONE]"));
        assert!(!ends_with_done_event(b"data: [DONE]\n\ndata: {}\n\n"));
        assert!(!ends_with_done_event(
            b"data: {\"text\":\"data: [DONE]\"}\n\n"
        ));
        assert!(!ends_with_done_event(b"\n\n"));
        assert!(!ends_with_done_event(b""));
    }

    #[test]
    fn holds_back_incomplete_events_only() {
        let mut aligner = EventAligner::new();
        assert_eq!(
            aligner.push(Bytes::from_static(b"data: 1\n\n")).as_deref(),
            Some(&b"data: 1\n\n"[..])
        );
        assert_eq!(aligner.push(Bytes::from_static(b"data: 2")), None);
        assert_eq!(
            aligner.push(Bytes::from_static(b"\n\ndata: 3")).as_deref(),
            Some(&b"data: 2\n\n"[..])
        );
        assert_eq!(aligner.held_len(), 7);
        assert_eq!(aligner.finish().as_deref(), Some(&b"data: 3"[..]));
        assert_eq!(aligner.finish(), None);
    }

    #[test]
    fn boundary_split_across_pushes_is_found() {
        let mut aligner = EventAligner::new();
        assert_eq!(aligner.push(Bytes::from_static(b"data: 1\r\n")), None);
        assert_eq!(aligner.push(Bytes::from_static(b"\r")), None);
        assert_eq!(
            aligner.push(Bytes::from_static(b"\ndata: 2")).as_deref(),
            Some(&b"data: 1\r\n\r\n"[..])
        );
    }

    #[test]
    fn oversized_event_is_flushed_and_dribbling_is_linear() {
        // Regression: the boundary search used to rescan the whole held tail on every push, so
        // an event dribbled one byte at a time cost O(n^2) (about 5e11 steps at the 1 MiB cap).
        let mut aligner = EventAligner::new();
        let mut out = 0;
        let started = std::time::Instant::now();
        for _ in 0..=MAX_HELD_BYTES {
            if let Some(b) = aligner.push(Bytes::from_static(b"x")) {
                out += b.len();
            }
        }
        assert_eq!(out, MAX_HELD_BYTES + 1);
        assert_eq!(aligner.held_len(), 0);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn full_body_reports_its_size() {
        let body = ProxyBody::full("abc");
        assert_eq!(body.size_hint().exact(), Some(3));
        assert!(!body.is_end_stream());
        assert!(ProxyBody::empty().is_end_stream());
    }
}
