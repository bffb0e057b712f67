//! One SQLite write connection shared by a writer thread and its callers,
//! committing many operations per transaction under load and none of the
//! thread hand-offs when idle.
//!
//! Under load, operations queue for the writer thread, which takes
//! everything queued and applies it in one transaction (group commit: one
//! fsync for the lot). When nothing is queued and the connection is free,
//! the caller applies its operation itself, on its own thread: handing it
//! to the writer thread and being woken with the answer cost about 80 µs
//! per commit on this project's 2-core VM, a fifth of a quiet commit, and a
//! Galaxy_Create waits for four commits in a row.
//!
//! Async callers do not use the inline path ([`GroupCommit::run`]): they
//! [`GroupCommit::submit`], so a commit's fsync never runs on an async
//! worker thread (a slow disk would stall every request on the runtime);
//! `run` is for callers on threads of their own.
//!
//! Used by the engine's SQLite store (with its WAL checkpoints beside the
//! writer: [`GroupCommit::start_with_checkpoints`], [`super::checkpoint`]),
//! the galaxies table and the event router.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;

use super::checkpoint::Checkpointer;

/// Applies a batch of operations in one transaction and answers each.
type Apply<Op> = dyn Fn(&mut Connection, Vec<Op>) + Send + Sync;

struct Shared<Op> {
    conn: Mutex<Connection>,
    /// Operations handed to the writer thread and not yet applied. While it
    /// is not zero nobody applies inline, so an operation never overtakes
    /// one submitted before it.
    queued: AtomicUsize,
    apply: Box<Apply<Op>>,
    /// Told of every applied batch (each one transaction).
    checkpoints: Option<Checkpointer>,
}

impl<Op> Shared<Op> {
    fn apply(&self, conn: &mut Connection, batch: Vec<Op>) {
        (self.apply)(conn, batch);
        if let Some(c) = &self.checkpoints {
            c.committed();
        }
    }
}

/// A write connection with a writer thread. See the module docs.
pub struct GroupCommit<Op: Send + 'static> {
    shared: Arc<Shared<Op>>,
    sender: Mutex<Option<mpsc::Sender<Op>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<Op: Send + 'static> GroupCommit<Op> {
    /// Starts the writer thread `name`, which applies at most `max_batch`
    /// operations per call of `apply`.
    pub fn start(
        name: &str,
        conn: Connection,
        max_batch: usize,
        apply: impl Fn(&mut Connection, Vec<Op>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        Self::start_inner(name, conn, None, max_batch, apply)
    }

    /// [`GroupCommit::start`], with the WAL checkpoints of the database run
    /// beside the writer on `checkpoint_conn` (a second connection to the
    /// same file), not inside its commits ([`super::checkpoint`]).
    pub fn start_with_checkpoints(
        name: &str,
        conn: Connection,
        checkpoint_conn: Connection,
        max_batch: usize,
        apply: impl Fn(&mut Connection, Vec<Op>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let checkpoints =
            Checkpointer::start(&format!("{name}-checkpoint"), &conn, checkpoint_conn)?;
        Self::start_inner(name, conn, Some(checkpoints), max_batch, apply)
    }

    fn start_inner(
        name: &str,
        conn: Connection,
        checkpoints: Option<Checkpointer>,
        max_batch: usize,
        apply: impl Fn(&mut Connection, Vec<Op>) + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            conn: Mutex::new(conn),
            queued: AtomicUsize::new(0),
            apply: Box::new(apply),
            checkpoints,
        });
        let (tx, rx) = mpsc::channel::<Op>();
        let writer = shared.clone();
        // Fault injection (tests): `<name>-batch=panic` in FAILPOINTS.
        #[cfg(feature = "failpoints")]
        let failpoint = format!("{name}-batch");
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut conn = writer.conn.lock().unwrap_or_else(|e| e.into_inner());
                    let mut batch = vec![first];
                    while batch.len() < max_batch {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    let n = batch.len();
                    #[cfg(feature = "failpoints")]
                    fail::fail_point!(&failpoint);
                    writer.apply(&mut conn, batch);
                    drop(conn);
                    writer.queued.fetch_sub(n, Ordering::SeqCst);
                }
            })?;
        Ok(Self {
            shared,
            sender: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `op` for the writer thread. Gives it back once closed.
    pub fn submit(&self, op: Op) -> Result<(), Op> {
        let guard = self.sender.lock().expect("group commit lock");
        let Some(tx) = guard.as_ref() else {
            return Err(op);
        };
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        tx.send(op).map_err(|e| {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            e.0
        })
    }

    /// Applies `op` on this thread if the writer is idle, else queues it.
    /// Gives it back once closed.
    pub fn run(&self, op: Op) -> Result<(), Op> {
        let open = self.sender.lock().expect("group commit lock");
        if open.is_none() {
            return Err(op);
        }
        if self.shared.queued.load(Ordering::SeqCst) == 0 {
            if let Ok(mut conn) = self.shared.conn.try_lock() {
                // The connection is ours until the commit is done, so
                // close() cannot finish in between.
                drop(open);
                self.shared.apply(&mut conn, vec![op]);
                return Ok(());
            }
        }
        drop(open);
        self.submit(op)
    }

    /// Whether the writer still works: its thread has not died and no
    /// batch panicked halfway (which leaves the connection's lock poisoned
    /// and whatever the batch kept in memory in doubt).
    pub fn alive(&self) -> Result<(), String> {
        if self.shared.conn.is_poisoned() {
            return Err("a write batch panicked".into());
        }
        match self.thread.lock().expect("group commit lock").as_ref() {
            Some(t) if t.is_finished() => Err("the writer thread ended".into()),
            _ => Ok(()),
        }
    }

    /// Applies everything queued, then stops the writer thread. Later calls
    /// give their operation back.
    pub fn close(&self) {
        self.sender.lock().expect("group commit lock").take();
        if let Some(t) = self.thread.lock().expect("group commit lock").take() {
            let _ = t.join();
        }
        if let Some(c) = &self.shared.checkpoints {
            c.close();
        }
    }
}

impl<Op: Send + 'static> Drop for GroupCommit<Op> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;
    use std::thread::ThreadId;

    type Seen = Arc<Mutex<Vec<(ThreadId, Vec<u32>)>>>;

    /// A writer whose apply records who applied what, and waits for a go
    /// signal before applying an operation numbered 0.
    fn recording() -> (GroupCommit<u32>, Seen, std_mpsc::Sender<()>) {
        let seen: Seen = Arc::default();
        let (go_tx, go_rx) = std_mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let s = seen.clone();
        let writer = GroupCommit::start(
            "test-writer",
            Connection::open_in_memory().unwrap(),
            16,
            move |_, batch: Vec<u32>| {
                if batch.contains(&0) {
                    go_rx.lock().unwrap().recv().unwrap();
                }
                s.lock().unwrap().push((std::thread::current().id(), batch));
            },
        )
        .unwrap();
        (writer, seen, go_tx)
    }

    #[test]
    fn an_idle_writer_lets_the_caller_apply_on_its_own_thread() {
        let (writer, seen, _go) = recording();
        writer.run(7).unwrap();
        writer.run(8).unwrap();
        let me = std::thread::current().id();
        assert_eq!(*seen.lock().unwrap(), vec![(me, vec![7]), (me, vec![8])]);
    }

    #[test]
    fn a_busy_writer_takes_later_operations_in_order() {
        let (writer, seen, go) = recording();
        writer.submit(0).unwrap();
        // Operation 0 holds the connection (it waits for `go`) or is still
        // queued: either way these must not be applied here.
        writer.run(1).unwrap();
        writer.run(2).unwrap();
        go.send(()).unwrap();
        writer.close();
        let seen = seen.lock().unwrap();
        let me = std::thread::current().id();
        assert!(seen.iter().all(|(t, _)| *t != me), "{seen:?}");
        let order: Vec<u32> = seen.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn a_closed_writer_gives_operations_back() {
        let (writer, seen, _go) = recording();
        writer.close();
        assert_eq!(writer.run(3), Err(3));
        assert_eq!(writer.submit(4), Err(4));
        assert!(seen.lock().unwrap().is_empty());
    }
}
