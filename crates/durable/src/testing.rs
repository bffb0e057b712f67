//! A throwaway PostgreSQL cluster for tests and benchmarks (feature
//! `testing`).
//!
//! [`PgCluster::start`] runs `initdb` and `pg_ctl` (from
//! `/usr/lib/postgresql/*/bin`, or `GALAXY_PG_BIN`) in a fresh temporary
//! directory, on a free port, listening on 127.0.0.1 only. As root the
//! server binaries run as the `postgres` user through `runuser`, since
//! `initdb` refuses to run as root.
//!
//! # Why a supervisor process
//! The cluster is started and stopped by a small shell script that holds
//! the read end of a pipe from this process. When the pipe closes, because
//! the [`PgCluster`] was dropped, the test process exited, panicked or was
//! killed, the script stops the server and removes the directory. So a
//! cluster shared by a whole test binary ([`PgCluster::shared`], a static
//! that is never dropped) is cleaned up too, and no test failure leaves a
//! server running.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// Why a cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries on this machine.
    #[error("PostgreSQL server binaries not found ({0}); install the `postgresql` package (make test does) or set GALAXY_PG_BIN")]
    NotInstalled(String),
    /// initdb or the server failed; the message holds their log.
    #[error("the PostgreSQL test cluster did not start: {0}")]
    Start(String),
    /// A local I/O failure (temporary directory, spawning).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server refused a request (creating a database).
    #[error("PostgreSQL: {0}")]
    Database(String),
}

/// How the cluster is configured.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `fsync` on (commits survive power loss: what a benchmark should
    /// measure) or off (faster, enough for tests: the server is never
    /// crashed, only its clients).
    pub durable: bool,
    /// `max_connections` of the server.
    pub max_connections: u32,
    /// TLS on, with this certificate chain and key (PEM): for tests of
    /// `sslmode`. Off by default.
    pub tls: Option<ServerTls>,
}

/// A server certificate (chain) and its private key, PEM.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The certificate, then any intermediates.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl ClusterOptions {
    /// For tests: no fsync.
    pub fn fast() -> Self {
        Self {
            durable: false,
            max_connections: 300,
            tls: None,
        }
    }

    /// For benchmarks: PostgreSQL's durable defaults.
    pub fn durable() -> Self {
        Self {
            durable: true,
            max_connections: 300,
            tls: None,
        }
    }
}

/// A running throwaway cluster. Dropping it stops the server and removes
/// its directory (see the module docs for what happens if it is never
/// dropped).
#[derive(Debug)]
pub struct PgCluster {
    port: u16,
    dir: PathBuf,
    supervisor: Mutex<Option<(Child, ChildStdin)>>,
    databases: AtomicU32,
}

const SUPERVISOR: &str = r#"
DIR="$1"; PORT="$2"; BIN="$3"; EXTRA="$4"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  as_pg "$BIN/pg_ctl" -D "$DIR/data" stop -m immediate >/dev/null 2>&1
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 1' TERM INT HUP
if [ "$(id -u)" = 0 ]; then chown -R postgres "$DIR" || exit 1; fi
if ! as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 --locale=C -N >"$DIR/initdb.log" 2>&1; then
  echo "initdb failed:"; cat "$DIR/initdb.log"; exit 1
fi
if ! as_pg "$BIN/pg_ctl" -D "$DIR/data" -w -t 60 -l "$DIR/server.log" \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 $EXTRA" start >/dev/null 2>&1; then
  echo "server failed:"; cat "$DIR/server.log"; exit 1
fi
echo ready
read -r _
exit 0
"#;

/// The directory of `initdb` and `pg_ctl`.
fn server_bin() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("GALAXY_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| ClusterError::NotInstalled(format!("/usr/lib/postgresql: {e}")))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| ClusterError::NotInstalled("no /usr/lib/postgresql/*/bin/initdb".into()))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn temp_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "gf-pg-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

impl PgCluster {
    /// Starts a cluster. Takes a few seconds (initdb).
    pub fn start(options: ClusterOptions) -> Result<Self, ClusterError> {
        let bin = server_bin()?;
        let mut extra = format!("-c max_connections={}", options.max_connections);
        if !options.durable {
            extra.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        // The free port may be taken by someone else before the server binds
        // it; a new port is then tried.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin, &extra, options.tls.as_ref()) {
                Ok(c) => return Ok(c),
                Err(ClusterError::Start(log)) => last = log,
                Err(e) => return Err(e),
            }
        }
        Err(ClusterError::Start(last))
    }

    fn try_start(bin: &Path, extra: &str, tls: Option<&ServerTls>) -> Result<Self, ClusterError> {
        let dir = temp_dir()?;
        let port = free_port()?;
        let mut extra = extra.to_string();
        if let Some(tls) = tls {
            use std::os::unix::fs::PermissionsExt;
            let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::write(&cert, &tls.cert_pem)?;
            std::fs::write(&key, &tls.key_pem)?;
            // The server refuses a key others can read.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
            extra.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("pg-supervisor")
            .arg(&dir)
            .arg(port.to_string())
            .arg(bin)
            .arg(&extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().transpose()?;
        if first.as_deref() != Some("ready") {
            let mut log: Vec<String> = first.into_iter().collect();
            log.extend(lines.map_while(Result::ok));
            drop(stdin);
            let _ = child.wait();
            return Err(ClusterError::Start(log.join("\n")));
        }
        Ok(Self {
            port,
            dir,
            supervisor: Mutex::new(Some((child, stdin))),
            databases: AtomicU32::new(0),
        })
    }

    /// One cluster per process, started on first use, stopped when the
    /// process exits (see the module docs). Panics if it cannot start:
    /// only tests and benchmarks call this.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| match PgCluster::start(ClusterOptions::fast()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        })
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data, logs, socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A connection URL for `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?connect_timeout=10",
            self.port
        )
    }

    /// Creates an empty database with a fresh name and returns its URL.
    pub async fn create_database(&self) -> Result<String, ClusterError> {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::SeqCst)
        );
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .map_err(|e| ClusterError::Database(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let created = client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| ClusterError::Database(e.to_string()));
        drop(client);
        let _ = driver.await;
        created?;
        Ok(self.url(&name))
    }

    /// Stops the server and removes its directory; waits until both are
    /// done.
    pub fn stop(&self) {
        let taken = self.supervisor.lock().expect("supervisor lock").take();
        if let Some((mut child, mut stdin)) = taken {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            // The script stops the server (immediate mode) and removes the
            // directory, then exits.
            let _ = child.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
