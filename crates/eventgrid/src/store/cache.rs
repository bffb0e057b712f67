//! A read cache per topic for what every publish reads and subscription
//! changes rarely alter: a topic's record (its keys) and its active
//! subscriptions. Every change this process makes clears it; on a shared
//! database another process's changes are seen within the cache's `ttl`.
//!
//! A generation counter keeps a read that began before a change from
//! being cached after it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StoreError;

pub(super) struct Cache<T> {
    /// `None`: entries stay until cleared (one process owns the data).
    ttl: Option<Duration>,
    generation: AtomicU64,
    entries: Mutex<HashMap<String, (Instant, T)>>,
}

impl<T: Clone> Cache<T> {
    pub(super) fn new(ttl: Option<Duration>) -> Self {
        Self {
            ttl,
            generation: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets everything (after a change).
    pub(super) fn forget(&self) {
        let mut entries = self.entries.lock().expect("cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }

    /// The entry for `key` (case-insensitive), loaded by `load` when
    /// missing or stale. Errors are not cached.
    pub(super) async fn get<F, Fut>(&self, key: &str, load: F) -> Result<T, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let key = key.to_lowercase();
        if let Some((at, value)) = self.entries.lock().expect("cache lock").get(&key) {
            if self.ttl.is_none_or(|ttl| at.elapsed() < ttl) {
                return Ok(value.clone());
            }
        }
        let (read_at, generation) = (Instant::now(), self.generation.load(Ordering::SeqCst));
        let value = load().await?;
        let mut entries = self.entries.lock().expect("cache lock");
        if self.generation.load(Ordering::SeqCst) == generation {
            entries.insert(key, (read_at, value.clone()));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loads_once_until_forgotten_and_never_caches_a_read_older_than_a_change() {
        let cache: Cache<u32> = Cache::new(None);
        assert_eq!(cache.get("T", || async { Ok(1) }).await.unwrap(), 1);
        assert_eq!(cache.get("t", || async { Ok(2) }).await.unwrap(), 1);
        cache.forget();
        assert_eq!(cache.get("t", || async { Ok(3) }).await.unwrap(), 3);
        // A change lands while a read is under way: the read's answer is
        // returned but not kept.
        let v = cache
            .get("u", || async {
                cache.forget();
                Ok(4)
            })
            .await
            .unwrap();
        assert_eq!(v, 4);
        assert_eq!(cache.get("u", || async { Ok(5) }).await.unwrap(), 5);
        assert!(cache
            .get("missing", || async {
                Err(StoreError::NoTopic("missing".into()))
            })
            .await
            .is_err());
        assert_eq!(cache.get("missing", || async { Ok(6) }).await.unwrap(), 6);
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let cache: Cache<u32> = Cache::new(Some(Duration::ZERO));
        assert_eq!(cache.get("t", || async { Ok(1) }).await.unwrap(), 1);
        assert_eq!(cache.get("t", || async { Ok(2) }).await.unwrap(), 2);
    }
}
