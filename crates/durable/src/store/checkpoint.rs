//! WAL checkpoints beside a SQLite writer, not inside its commits.
//!
//! SQLite checkpoints a WAL database in the commit that takes the log past
//! `wal_autocheckpoint` pages (1,000 by default): that commit copies the
//! log into the database file and fsyncs it, a stall of tens of
//! milliseconds for whoever waits on it (every operation of a group
//! commit's batch). A [`Checkpointer`] gives the writer a far threshold as
//! a backstop and runs PASSIVE checkpoints on a thread and connection of
//! its own, woken every [`COMMITS_PER_CHECKPOINT`] commits. A checkpoint
//! beside the writer cannot reset the log while the writer keeps
//! appending, so under sustained load the log is only reset by the
//! writer's own checkpoint at [`WRITER_CHECKPOINT_FRAMES`].
//!
//! [`crate::store::group_commit::GroupCommit::start_with_checkpoints`]
//! runs one for its writer; the engine's SQLite store uses that. (The
//! galaxies table and the event router keep SQLite's own checkpoints: with
//! a checkpoint thread the event router's publish latency and throughput
//! did not move beyond this machine's drift, and each thread and
//! connection costs memory; BENCHMARKS.md.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Mutex;
use std::thread::JoinHandle;

use rusqlite::Connection;

/// Commits between two background checkpoints.
pub const COMMITS_PER_CHECKPOINT: u32 = 32;

/// The writer checkpoints itself only past this many log frames (64 MiB
/// of 4 KiB pages).
pub const WRITER_CHECKPOINT_FRAMES: u32 = 16_384;

/// A checkpoint thread for one writer. See the module docs.
pub struct Checkpointer {
    commits: AtomicU32,
    /// Wakes the thread; `None` once closed.
    wake: Mutex<Option<SyncSender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    /// Sets `writer`'s far threshold and starts the thread `name` on
    /// `conn`, a second connection to the same database file.
    pub fn start(name: &str, writer: &Connection, conn: Connection) -> std::io::Result<Self> {
        writer
            .execute_batch(&format!(
                "PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_FRAMES};"
            ))
            .map_err(std::io::Error::other)?;
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while woken.recv().is_ok() {
                    // Busy (the writer's own checkpoint) or failed: the
                    // next wake-up tries again.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })?;
        Ok(Self {
            commits: AtomicU32::new(0),
            wake: Mutex::new(Some(wake)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Counts a commit of the writer; every [`COMMITS_PER_CHECKPOINT`]th
    /// wakes the thread.
    pub fn committed(&self) {
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= COMMITS_PER_CHECKPOINT {
            self.commits.store(0, Ordering::Relaxed);
            if let Some(wake) = self.wake.lock().expect("checkpoint lock").as_ref() {
                // Full: a checkpoint is already due.
                let _ = wake.try_send(());
            }
        }
    }

    /// Stops the thread (after its current checkpoint).
    pub fn close(&self) {
        self.wake.lock().expect("checkpoint lock").take();
        if let Some(t) = self.thread.lock().expect("checkpoint lock").take() {
            let _ = t.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_do_not_checkpoint_and_the_thread_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v BLOB);")
            .unwrap();
        let c = Checkpointer::start("test-checkpoint", &writer, Connection::open(&path).unwrap())
            .unwrap();
        let threshold: u32 = writer
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(threshold, WRITER_CHECKPOINT_FRAMES);
        // About 2,000 pages, twice SQLite's own threshold: with the far one
        // no commit copies the log into the database file.
        for _ in 0..40 {
            writer
                .execute("INSERT INTO t VALUES (zeroblob(200000))", [])
                .unwrap();
        }
        let size = || std::fs::metadata(&path).unwrap().len();
        assert!(size() < 100_000, "a commit checkpointed: {} bytes", size());
        for _ in 0..COMMITS_PER_CHECKPOINT {
            c.committed();
        }
        // Closing lets the thread finish the checkpoint it was woken for.
        c.close();
        assert!(size() > 8_000_000, "no checkpoint ran: {} bytes", size());
    }
}
