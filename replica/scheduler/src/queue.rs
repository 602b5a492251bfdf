//! The waiting queue: FCFS or priority order, with O(log n) push, pop and removal (abort).
//!
//! One ordered map serves both policies. An entry's key is `(rank, order)`:
//! * FCFS: rank 0, order = arrival; a preempted request gets an order below every other
//!   entry, so it goes back to the head of the queue.
//! * Priority: rank = priority, order = arrival, for new and preempted requests alike, so a
//!   preempted request simply returns to its place.

use std::collections::BTreeMap;

use crate::config::QueuePolicy;
use crate::request::RequestId;

/// Position of one entry; stored in the request so that abort can remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct QueueKey {
    rank: i64,
    order: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct WaitingQueue {
    policy: QueuePolicy,
    entries: BTreeMap<QueueKey, RequestId>,
    /// Next order for FCFS head insertions (decreasing, always below any arrival).
    next_front: i64,
}

impl WaitingQueue {
    pub fn new(policy: QueuePolicy) -> Self {
        Self {
            policy,
            entries: BTreeMap::new(),
            next_front: -1,
        }
    }

    /// Queues a request that has never run.
    pub fn push_new(&mut self, id: RequestId, priority: i32, arrival: u64) -> QueueKey {
        let key = self.key_by_arrival(priority, arrival);
        self.entries.insert(key, id);
        key
    }

    /// Queues a preempted request: head of the queue (FCFS) or its own place (priority).
    pub fn push_preempted(&mut self, id: RequestId, priority: i32, arrival: u64) -> QueueKey {
        let key = match self.policy {
            QueuePolicy::Fcfs => {
                let key = QueueKey {
                    rank: 0,
                    order: self.next_front,
                };
                self.next_front -= 1;
                key
            }
            QueuePolicy::Priority => self.key_by_arrival(priority, arrival),
        };
        self.entries.insert(key, id);
        key
    }

    fn key_by_arrival(&self, priority: i32, arrival: u64) -> QueueKey {
        let rank = match self.policy {
            QueuePolicy::Fcfs => 0,
            QueuePolicy::Priority => i64::from(priority),
        };
        // Arrivals are counted from 0 by the scheduler; they never reach i64::MAX.
        let order = i64::try_from(arrival).unwrap_or(i64::MAX);
        QueueKey { rank, order }
    }

    /// The request to admit next.
    pub fn peek(&self) -> Option<RequestId> {
        self.entries.first_key_value().map(|(_, &id)| id)
    }

    pub fn pop(&mut self) -> Option<RequestId> {
        self.entries.pop_first().map(|(_, id)| id)
    }

    /// Removes an entry (abort); false if it was not there.
    pub fn remove(&mut self, key: QueueKey) -> bool {
        self.entries.remove(&key).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries in admission order.
    pub fn iter(&self) -> impl Iterator<Item = (QueueKey, RequestId)> + '_ {
        self.entries.iter().map(|(&k, &id)| (k, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut WaitingQueue) -> Vec<RequestId> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn fcfs_order_and_preempted_at_head() {
        let mut q = WaitingQueue::new(QueuePolicy::Fcfs);
        q.push_new(1, 5, 0);
        q.push_new(2, -5, 1);
        q.push_new(3, 0, 2);
        q.push_preempted(9, 0, 9);
        q.push_preempted(8, 0, 8);
        assert_eq!(q.peek(), Some(8));
        assert_eq!(drain(&mut q), vec![8, 9, 1, 2, 3]);
    }

    #[test]
    fn priority_order_ties_by_arrival() {
        let mut q = WaitingQueue::new(QueuePolicy::Priority);
        q.push_new(1, 5, 0);
        q.push_new(2, -5, 1);
        q.push_new(3, 0, 2);
        q.push_new(4, 0, 3);
        q.push_preempted(9, 0, 1);
        assert_eq!(drain(&mut q), vec![2, 9, 3, 4, 1]);
    }

    #[test]
    fn remove_by_key() {
        let mut q = WaitingQueue::new(QueuePolicy::Fcfs);
        let a = q.push_new(1, 0, 0);
        q.push_new(2, 0, 1);
        assert!(q.remove(a));
        assert!(!q.remove(a));
        assert_eq!(q.len(), 1);
        assert_eq!(q.iter().map(|(_, id)| id).collect::<Vec<_>>(), vec![2]);
    }
}
