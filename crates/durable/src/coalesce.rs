//! Operations that arrive at the same moment, taken together.
//!
//! Work that a store must do once per call (a transaction, a statement, a
//! round trip) costs the same for one item as for a dozen when the
//! statement takes arrays. Callers that finish at the same moment (the
//! turns of one fetch, the results of a fan-out, the requests of many
//! clients) each [`Coalescer::join`]: the item is queued, the task yields
//! once so the others can queue theirs, and whichever call resumes first
//! takes everything queued and does it for all; the others find the queue
//! empty and wait for the answer it sends them. Nothing waits for a timer:
//! a call alone pays one yield.
//!
//! Used by the engine's batched activity completions, the PostgreSQL
//! store's batched turn commits and creations, and the galaxies table's
//! batched inserts.

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
    /// Queues `item`, yields once, then takes everything queued: `item`
    /// with whatever others queued meanwhile, or nothing when another
    /// call took it (and so must answer it) first.
    pub async fn join(&self, item: T) -> Vec<T> {
        self.queued.lock().expect("coalescer lock").push(item);
        tokio::task::yield_now().await;
        std::mem::take(&mut *self.queued.lock().expect("coalescer lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::Coalescer;

    #[tokio::test]
    async fn calls_at_the_same_moment_are_taken_by_the_first() {
        let c = Coalescer::default();
        let (a, b, d) = tokio::join!(c.join(1), c.join(2), c.join(3));
        // One call (whichever resumed first) took all three.
        let mut taken: Vec<Vec<i32>> = [a, b, d].into_iter().filter(|t| !t.is_empty()).collect();
        assert_eq!(taken.len(), 1, "{taken:?}");
        taken[0].sort();
        assert_eq!(taken[0], vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_call_alone_takes_its_own() {
        let c = Coalescer::default();
        assert_eq!(c.join(7).await, vec![7]);
        assert_eq!(c.join(8).await, vec![8]);
    }
}
