//! One app window per data directory: a second launch on the same data
//! brings the running window to the front and exits, instead of opening a
//! second window that could only show an error (the store admits one
//! process, and that lock stays the real guard).
//!
//! How: the first launch takes an exclusive lock on `app.lock` in the data
//! directory and listens on the Unix socket `app.sock` beside it. A later
//! launch that cannot take the lock connects to the socket, asks for focus
//! and waits for the answer. Only the lock holder ever removes or binds
//! the socket, so a stale socket left by a crash is replaced safely.
//!
//! Why not Tauri's single-instance plugin: on Linux it needs a D-Bus
//! session bus, which headless machines and some desktops lack; a lock
//! and a socket in the data directory work everywhere the app runs, and
//! scope the guard to the data (two players' data dirs may be open at
//! once). This module knows nothing of Tauri: [`Primary::serve`] calls a
//! plain function.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a second launch waits for the first to answer (it may still
/// be starting: the socket is bound before the window exists, and the
/// answer comes once it does).
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

const LOCK_FILE: &str = "app.lock";
const SOCKET_FILE: &str = "app.sock";
const FOCUS: &str = "focus\n";
const DONE: &str = "focused\n";

/// Why the app cannot tell whether it is the only one on its data.
#[derive(Debug, thiserror::Error)]
pub enum SingleInstanceError {
    #[error("cannot use the data folder {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "Galaxy Forge is already open on {dir}, but its window did not answer \
         within {}s ({reason}). Close it (or end the galaxy-desktop process) and start again.",
        waited.as_secs_f32()
    )]
    NoAnswer {
        dir: PathBuf,
        waited: Duration,
        reason: String,
    },
}

/// What a launch should do.
pub enum Launch {
    /// This is the only app on the data: open the window, then
    /// [`Primary::serve`] focus requests.
    First(Primary),
    /// Another app has the data and brought its window to the front.
    Focused,
}

/// The first app on a data directory: holds the lock (until dropped, or
/// the process ends) and the bound socket.
pub struct Primary {
    _lock: File,
    listener: Option<UnixListener>,
}

/// Claims the data directory `dir` (creating it) or asks the app that
/// holds it to come to the front.
pub fn claim(dir: &Path) -> Result<Launch, SingleInstanceError> {
    claim_waiting(dir, ANSWER_WITHIN)
}

/// [`claim`], waiting at most `wait` for the app that holds the data.
fn claim_waiting(dir: &Path, wait: Duration) -> Result<Launch, SingleInstanceError> {
    let data_err = |source| SingleInstanceError::DataDir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(data_err)?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(data_err)?;
    let socket = dir.join(SOCKET_FILE);
    if lock.try_lock().is_ok() {
        // A socket file left by a crashed app answers nobody: replace it.
        let _ = std::fs::remove_file(&socket);
        let listener = match UnixListener::bind(&socket) {
            Ok(l) => Some(l),
            Err(e) => {
                // E.g. a path too long for a socket address: the app runs,
                // a second launch then meets the store's lock instead.
                tracing::warn!(socket = %socket.display(), error = %e,
                    "cannot listen for second launches; they will not focus this window");
                None
            }
        };
        return Ok(Launch::First(Primary {
            _lock: lock,
            listener,
        }));
    }
    ask_for_focus(&socket, wait).map_err(|reason| SingleInstanceError::NoAnswer {
        dir: dir.to_path_buf(),
        waited: wait,
        reason,
    })?;
    Ok(Launch::Focused)
}

/// Connects to the running app (retrying while it binds its socket) and
/// waits for it to say its window is in front.
fn ask_for_focus(socket: &Path, wait: Duration) -> Result<(), String> {
    let until = Instant::now() + wait;
    let stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= until => return Err(format!("connecting: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let left = until
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    (&stream)
        .write_all(FOCUS.as_bytes())
        .map_err(|e| format!("asking: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| format!("waiting for the answer: {e}"))?;
    if answer == DONE {
        Ok(())
    } else {
        Err(format!("it answered {answer:?}"))
    }
}

impl Primary {
    /// Answers focus requests from later launches on a thread of its own:
    /// each runs `focus` (which brings the window to the front), then is
    /// told it is done.
    pub fn serve(mut self, focus: impl Fn() + Send + 'static) {
        let Some(listener) = self.listener.take() else {
            std::mem::forget(self); // keep the lock for the process's life
            return;
        };
        let _ = std::thread::Builder::new()
            .name("single-instance".into())
            .spawn(move || {
                let _held = self;
                for stream in listener.incoming().flatten() {
                    // A stuck client must not hold the others back.
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut line = String::new();
                    if BufReader::new(&stream).read_line(&mut line).is_ok() && line == FOCUS {
                        focus();
                        let _ = (&stream).write_all(DONE.as_bytes());
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn the_first_launch_holds_the_data_and_a_second_one_focuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let Launch::First(primary) = claim(dir.path()).unwrap() else {
            panic!("the first launch must own the data");
        };
        let focused = Arc::new(AtomicUsize::new(0));
        let seen = focused.clone();
        primary.serve(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        for n in 1..=2 {
            assert!(matches!(claim(dir.path()).unwrap(), Launch::Focused));
            // The answer comes after the focus ran.
            assert_eq!(focused.load(Ordering::SeqCst), n);
        }
    }

    #[test]
    fn a_socket_left_by_a_crash_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        // A dead app's socket: bound, then its listener gone.
        drop(UnixListener::bind(dir.path().join(SOCKET_FILE)).unwrap());
        let Launch::First(primary) = claim(dir.path()).unwrap() else {
            panic!("a stale socket must not stop the first launch");
        };
        primary.serve(|| {});
        assert!(matches!(claim(dir.path()).unwrap(), Launch::Focused));
    }

    #[test]
    fn a_holder_that_never_answers_is_a_readable_error() {
        let dir = tempfile::tempdir().unwrap();
        // The lock is held, but nobody listens on the socket.
        let lock = File::create(dir.path().join(LOCK_FILE)).unwrap();
        lock.try_lock().unwrap();
        let wait = Duration::from_millis(300);
        let started = Instant::now();
        let err = match claim_waiting(dir.path(), wait) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("no app answers: the launch must fail"),
        };
        assert!(started.elapsed() >= wait, "it waited for a starting app");
        assert!(err.contains("already open"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}
