//! Operations that arrive at the same moment, taken together.
//!
//! Work that a store must do once per call (a transaction, a statement, a
//! round trip) costs the same for one item as for a dozen when the
//! statement takes arrays. Callers that finish at the same moment (the
//! turns of one fetch, the results of a fan-out, the requests of many
//! clients) each [`Coalescer::run`]: the item is queued, the task yields
//! once so the others can queue theirs, and whichever call resumes first
//! takes everything queued and does the work for all; the others find the
//! queue empty and wait for the answer the work sends them. Nothing waits
//! for a timer: a call alone pays one yield.
//!
//! Batches are not limited in number: letting at most one or two run at
//! once (group commit, so that items queue while they run) was measured
//! on PostgreSQL and made Galaxy_Create 1.1-5.6x slower: waiting for a slot
//! cost more than the larger batches saved (BENCHMARKS.md).
//!
//! Used by the engine's batched activity completions, the PostgreSQL
//! store's batched turn commits and creations, and the galaxies table's
//! batched inserts.

use std::future::Future;
use std::sync::Mutex;

/// A queue of items to take together. See the module docs.
#[derive(Debug)]
pub struct Coalescer<T> {
    queued: Mutex<Vec<T>>,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Self {
            queued: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Coalescer<T> {
    /// Queues `item`, yields once, then takes everything queued and runs
    /// `work` on it: `item` with whatever others queued meanwhile. When
    /// another call took `item` first, `work` is not run: that call
    /// answers it.
    pub async fn run<F, Fut>(&self, item: T, work: F)
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.queued.lock().expect("coalescer lock").push(item);
        tokio::task::yield_now().await;
        let batch = std::mem::take(&mut *self.queued.lock().expect("coalescer lock"));
        if !batch.is_empty() {
            work(batch).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::Coalescer;

    type Seen = Arc<Mutex<Vec<Vec<i32>>>>;

    async fn record(c: &Coalescer<i32>, item: i32, seen: &Seen) {
        c.run(
            item,
            |batch| async move { seen.lock().unwrap().push(batch) },
        )
        .await;
    }

    #[tokio::test]
    async fn calls_at_the_same_moment_are_taken_by_the_first() {
        let c = Coalescer::default();
        let seen = Seen::default();
        tokio::join!(
            record(&c, 1, &seen),
            record(&c, 2, &seen),
            record(&c, 3, &seen)
        );
        // One call (whichever resumed first) took all three.
        let mut taken = seen.lock().unwrap().clone();
        assert_eq!(taken.len(), 1, "{taken:?}");
        taken[0].sort();
        assert_eq!(taken[0], vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_call_alone_takes_its_own() {
        let c = Coalescer::default();
        let seen = Seen::default();
        record(&c, 7, &seen).await;
        record(&c, 8, &seen).await;
        assert_eq!(*seen.lock().unwrap(), vec![vec![7], vec![8]]);
    }
}
