//! [`EngineHandle`]: the async side's door to the engine thread.
//!
//! Commands go over a std channel (the engine blocks on it when idle, so an idle replica burns
//! no CPU); events come back on a per-request tokio channel. Every accepted request is covered
//! by a [`RequestGuard`] that aborts it when dropped early, e.g. when the HTTP client
//! disconnects and hyper drops the response body, so its KV blocks are freed at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use scheduler::SchedulerStats;
use tokio::sync::{mpsc as tmpsc, Notify};

use super::{EngineEvent, EngineRequest};

/// A command for the engine thread.
#[derive(Debug)]
pub(crate) enum Command {
    /// Start a request whose choices get the scheduler ids `ids`.
    Add {
        request: Box<EngineRequest>,
        ids: Vec<u64>,
        events: tmpsc::UnboundedSender<EngineEvent>,
    },
    /// Abort these scheduler ids (unknown or finished ids are ignored).
    Abort(Vec<u64>),
    /// Abort everything and stop the loop.
    Shutdown,
}

/// The load report served at `GET /load` (and used for admission control).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct LoadSnapshot {
    /// Scheduler requests holding KV blocks.
    pub running: usize,
    /// Scheduler requests queued, plus requests not yet picked up by the engine.
    pub waiting: usize,
    /// KV blocks in use, 0..=1.
    pub kv_usage: f64,
    /// Allocatable blocks.
    pub free_blocks: usize,
    /// All blocks.
    pub num_blocks: usize,
}

/// State shared by the handle(s) and the engine thread.
#[derive(Debug)]
pub(crate) struct Shared {
    next_id: AtomicU64,
    /// Scheduler requests accepted and not yet finished.
    pub(crate) in_flight: AtomicUsize,
    /// Of those, the ones whose last event has been sent this loop turn: their handlers may
    /// have answered already, but `in_flight` drops only at the turn's stats snapshot.
    pub(crate) ending: AtomicUsize,
    /// False once the engine thread has exited (normally or not).
    pub(crate) alive: AtomicBool,
    pub(crate) stats: Mutex<SchedulerStats>,
    /// Notified whenever `in_flight` drops to zero and when the engine exits.
    pub(crate) idle: Notify,
}

impl Shared {
    pub(crate) fn new(initial: SchedulerStats) -> Self {
        Self {
            next_id: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            ending: AtomicUsize::new(0),
            alive: AtomicBool::new(true),
            stats: Mutex::new(initial),
            idle: Notify::new(),
        }
    }

    pub(crate) fn stats(&self) -> SchedulerStats {
        match self.stats.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn set_stats(&self, s: SchedulerStats) {
        match self.stats.lock() {
            Ok(mut g) => *g = s,
            Err(poisoned) => *poisoned.into_inner() = s,
        }
    }

    /// A scheduler request's last event is about to be sent (see [`Shared::finished`]).
    pub(crate) fn ending(&self) {
        self.ending.fetch_add(1, Ordering::SeqCst);
    }

    /// Marks `n` ending scheduler requests as done. `in_flight` drops before `ending` does, and
    /// [`Shared::live`] reads them in the other order, so it may read low for an instant but
    /// never counts an answered request.
    pub(crate) fn finished(&self, n: usize) {
        let before = self.in_flight.fetch_sub(n, Ordering::SeqCst);
        self.ending.fetch_sub(n, Ordering::SeqCst);
        if before == n {
            self.idle.notify_waiters();
        }
    }

    /// Scheduler requests accepted and not yet answered.
    pub(crate) fn live(&self) -> usize {
        let ending = self.ending.load(Ordering::SeqCst);
        self.in_flight.load(Ordering::SeqCst).saturating_sub(ending)
    }
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The engine thread is gone.
    #[error("the engine is not running")]
    EngineDown,
    /// Too many requests in flight.
    #[error("server overloaded: {in_flight} sequences in flight (limit {limit}); retry later")]
    Overloaded {
        /// Sequences in flight now.
        in_flight: usize,
        /// The admission limit.
        limit: usize,
    },
}

/// Cloneable handle to the engine thread.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    inbox: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    /// Admission limit on in-flight scheduler requests (`max_num_seqs + max_waiting`).
    max_in_flight: usize,
}

impl EngineHandle {
    pub(crate) fn new(
        inbox: mpsc::Sender<Command>,
        shared: Arc<Shared>,
        max_in_flight: usize,
    ) -> Self {
        Self {
            inbox,
            shared,
            max_in_flight,
        }
    }

    /// Submits a request; its events arrive on `events`. The returned guard aborts the request
    /// when dropped before [`RequestGuard::complete`].
    pub fn submit(
        &self,
        request: EngineRequest,
        events: tmpsc::UnboundedSender<EngineEvent>,
    ) -> Result<RequestGuard, SubmitError> {
        if !self.is_alive() {
            return Err(SubmitError::EngineDown);
        }
        let n = request.n.max(1);
        let in_flight = self.shared.in_flight.fetch_add(n, Ordering::AcqRel);
        if in_flight + n > self.max_in_flight && in_flight > 0 {
            self.shared.finished(n);
            return Err(SubmitError::Overloaded {
                in_flight,
                limit: self.max_in_flight,
            });
        }
        let first = self.shared.next_id.fetch_add(n as u64, Ordering::Relaxed);
        let ids: Vec<u64> = (first..first + n as u64).collect();
        let cmd = Command::Add {
            request: Box::new(request),
            ids: ids.clone(),
            events,
        };
        if self.inbox.send(cmd).is_err() {
            self.shared.finished(n);
            return Err(SubmitError::EngineDown);
        }
        Ok(RequestGuard {
            inbox: self.inbox.clone(),
            ids,
            armed: true,
        })
    }

    /// Aborts scheduler requests by id.
    pub fn abort(&self, ids: Vec<u64>) {
        // A closed inbox means the engine is gone and nothing is left to abort.
        let _ = self.inbox.send(Command::Abort(ids));
    }

    /// Asks the engine to abort everything and stop.
    pub fn shutdown(&self) {
        let _ = self.inbox.send(Command::Shutdown);
    }

    /// Whether the engine thread is running.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Scheduler requests accepted and not finished.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Resolves when nothing is in flight (or the engine is gone).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.shared.idle.notified();
            if self.in_flight() == 0 || !self.is_alive() {
                return;
            }
            // The timeout guards against a notification racing the check above.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), notified).await;
        }
    }

    /// Resolves when the engine thread has exited.
    pub async fn stopped(&self) {
        loop {
            let notified = self.shared.idle.notified();
            if !self.is_alive() {
                return;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), notified).await;
        }
    }

    /// The latest scheduler statistics.
    pub fn stats(&self) -> SchedulerStats {
        self.shared.stats()
    }

    /// The load report for the router: every accepted request not yet answered, `running` as
    /// the scheduler last counted it. Requests answered this engine turn are left out, though
    /// the last stats snapshot still holds them: a client that got its answer and sent the next
    /// request at once must not see its old request counted beside the new one (a router would
    /// take that as someone else's load and move the client off its prefix).
    pub fn load(&self) -> LoadSnapshot {
        let s = self.shared.stats();
        load_snapshot(&s, self.shared.live())
    }
}

fn load_snapshot(s: &SchedulerStats, live: usize) -> LoadSnapshot {
    let running = s.running.min(live);
    LoadSnapshot {
        running,
        waiting: live - running,
        kv_usage: s.kv_usage,
        free_blocks: s.free_blocks,
        num_blocks: s.num_blocks,
    }
}

/// Aborts its request when dropped, unless [`RequestGuard::complete`] was called.
#[derive(Debug)]
pub struct RequestGuard {
    inbox: mpsc::Sender<Command>,
    ids: Vec<u64>,
    armed: bool,
}

impl RequestGuard {
    /// The scheduler ids of the request's choices.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// The request ran to completion: nothing to abort on drop.
    pub fn complete(&mut self) {
        self.armed = false;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self
                .inbox
                .send(Command::Abort(std::mem::take(&mut self.ids)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(running: usize, waiting: usize) -> SchedulerStats {
        SchedulerStats {
            running,
            waiting,
            ..SchedulerStats::default()
        }
    }

    #[test]
    fn an_answered_request_leaves_the_load_at_once() {
        // The engine ran request A (the last snapshot says running 1) and has sent its answer;
        // the client already sent B. Load is B alone, not A beside B.
        let shared = Shared::new(stats(1, 0));
        shared.in_flight.store(1, Ordering::SeqCst);
        shared.ending();
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        assert_eq!(shared.live(), 1);
        let load = load_snapshot(&shared.stats(), shared.live());
        assert_eq!((load.running, load.waiting), (1, 0));
        // The turn ends: A leaves both counts.
        shared.finished(1);
        shared.set_stats(stats(0, 1));
        assert_eq!(shared.live(), 1);
        assert_eq!(shared.ending.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn accepted_requests_the_scheduler_has_not_seen_count_as_waiting() {
        let load = load_snapshot(&stats(2, 1), 5);
        assert_eq!((load.running, load.waiting), (2, 3));
        let load = load_snapshot(&stats(3, 0), 2);
        assert_eq!((load.running, load.waiting), (2, 0));
    }
}
