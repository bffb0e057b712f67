//! Runs the real app in a real window for end-to-end tests and the
//! benchmark: a private Xvfb display, tauri-driver (with WebKitWebDriver)
//! per app launch, and a WebDriver client. Every wait is a condition
//! checked until a deadline, never a fixed sleep.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// The app under test, built by Cargo for this test binary.
pub const APP: &str = env!("CARGO_BIN_EXE_galaxy-desktop");

/// How long any one condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The rows of the orchestrations panel.
pub const ROWS: &str = "#instance-list li.instance";

/// A script true when the panel shows exactly `n` rows, all Completed.
pub fn completed_rows(n: usize) -> String {
    format!(
        "return document.querySelectorAll('{ROWS}[data-status=\"Completed\"]').length === {n} \
         && document.querySelectorAll('{ROWS}').length === {n}"
    )
}

/// A script true when the map and the header both count `n` galaxies.
pub fn map_count(n: usize) -> String {
    format!(
        "return document.getElementById('map').dataset.count === '{n}' \
         && document.getElementById('galaxy-count').textContent === '{n}'"
    )
}

/// Where screenshots go: `<target>/screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(&tmp).join("screenshots");
    std::fs::create_dir_all(&dir).expect("create screenshot dir");
    dir
}

fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// True while a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `cond` until it holds or `deadline` passes.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let until = Instant::now() + deadline;
    while !cond() {
        if Instant::now() > until {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A private X display (`Xvfb -displayfd`: the server picks a free display
/// number and prints it once it accepts clients). Stopped on drop.
pub struct Display {
    child: Child,
    /// e.g. `:7`
    pub name: String,
}

impl Display {
    /// Starts Xvfb with a 1280x800 screen.
    pub fn start() -> Result<Self> {
        Self::start_sized(1280, 800)
    }

    /// Starts Xvfb with a screen of this size (the window, without a
    /// window manager, keeps the size the app asks for, clipped to it).
    pub fn start_sized(width: u32, height: u32) -> Result<Self> {
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                &format!("{width}x{height}x24"),
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting Xvfb (make test installs it: apt package xvfb)")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading Xvfb's display number")?;
        let n: u32 = line
            .trim()
            .parse()
            .map_err(|_| anyhow!("Xvfb printed {line:?} instead of a display number"))?;
        Ok(Self {
            child,
            name: format!(":{n}"),
        })
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        send_signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct ports free at the moment (all held while they are picked,
/// so two of them cannot be the same).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("its address").port())
}

fn tauri_driver() -> PathBuf {
    if let Some(p) = std::env::var_os("TAURI_DRIVER") {
        return p.into();
    }
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tauri-driver"))
            .find(|p| p.is_file())
    });
    in_path.unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .unwrap_or_default();
        home.join("bin").join("tauri-driver")
    })
}

/// One launch of the app, driven over WebDriver.
pub struct App {
    driver: Child,
    /// The WebDriver session.
    pub client: Client,
    /// The app's process id.
    pub pid: u32,
    /// When the launch was requested.
    pub launched_at: Instant,
    /// When the WebDriver session (which starts the app) was requested.
    pub session_requested_at: std::time::SystemTime,
}

impl App {
    /// Starts tauri-driver on `display` with the app's data in `data_dir`,
    /// opens a session (which starts the app) and waits until the page has
    /// loaded its state.
    pub async fn launch(display: &Display, data_dir: &Path) -> Result<Self> {
        Self::launch_binary(display, data_dir, Path::new(APP)).await
    }

    /// [`App::launch`] of another build of the app (e.g. the binary a
    /// package installed).
    pub async fn launch_binary(display: &Display, data_dir: &Path, binary: &Path) -> Result<Self> {
        let launched_at = Instant::now();
        let [port, native_port] = free_ports::<2>();
        let driver_path = tauri_driver();
        let driver = Command::new(&driver_path)
            .args([
                "--port",
                &port.to_string(),
                "--native-port",
                &native_port.to_string(),
            ])
            .env("DISPLAY", &display.name)
            .env("GALAXY_DESKTOP_DATA_DIR", data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (make test installs it: cargo install tauri-driver --version 2.1.0 --locked)",
                    driver_path.display()
                )
            })?;
        let mut app = AppStart {
            driver: Some(driver),
        };
        // Both tauri-driver and the WebKitWebDriver it starts must listen.
        wait_for("tauri-driver to listen", DEADLINE, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && TcpStream::connect(("127.0.0.1", native_port)).is_ok()
        })?;
        let caps = json!({
            "browserName": "wry",
            "tauri:options": { "application": binary },
        });
        let session_requested_at = std::time::SystemTime::now();
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.as_object().expect("object").clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .context("opening a WebDriver session (starts the app)")?;
        let mut this = Self {
            driver: app.driver.take().expect("driver"),
            client,
            pid: 0,
            launched_at,
            session_requested_at,
        };
        this.wait_js(
            "the page to load its state",
            "return document.getElementById('app')?.dataset.state === 'ready'",
        )
        .await?;
        this.pid = this
            .eval("return window.galaxyForge.pid()")
            .await?
            .as_u64()
            .ok_or_else(|| anyhow!("no pid"))? as u32;
        Ok(this)
    }

    /// Runs a script (with `return`) and gives its value.
    pub async fn eval(&self, script: &str) -> Result<Value> {
        self.client
            .execute(script, vec![])
            .await
            .with_context(|| format!("running {script}"))
    }

    /// Runs an asynchronous script: its last argument is the callback that
    /// gives its value (WebDriver's "execute async script").
    pub async fn eval_async(&self, script: &str) -> Result<Value> {
        self.client
            .execute_async(script, vec![])
            .await
            .with_context(|| format!("running {script}"))
    }

    /// Waits until a script returns `true`.
    pub async fn wait_js(&self, what: &str, script: &str) -> Result<()> {
        let until = Instant::now() + DEADLINE;
        loop {
            match self.client.execute(script, vec![]).await {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(_) => {}
                Err(e) if Instant::now() > until => return Err(e).context(what.to_string()),
                Err(_) => {}
            }
            if Instant::now() > until {
                let state = self
                    .eval("return document.body.innerText.slice(0, 2000)")
                    .await
                    .unwrap_or_default();
                bail!("timed out waiting for {what}; the page shows:\n{state}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Clicks the element with this CSS selector (waiting for it to exist).
    pub async fn click(&self, css: &str) -> Result<()> {
        let el = self
            .client
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("finding {css}"))?;
        el.click()
            .await
            .with_context(|| format!("clicking {css}"))?;
        Ok(())
    }

    /// Clicks Create Galaxy and waits until the panel shows `rows` rows,
    /// all Completed.
    pub async fn create_until_completed(&self, rows: usize) -> Result<()> {
        self.click("#create").await?;
        self.wait_js(
            &format!("{rows} completed instances"),
            &completed_rows(rows),
        )
        .await
    }

    /// Number of elements matching a selector.
    pub async fn count(&self, css: &str) -> Result<u64> {
        let v = self
            .eval(&format!(
                "return document.querySelectorAll({}).length",
                serde_json::to_string(css)?
            ))
            .await?;
        v.as_u64().ok_or_else(|| anyhow!("not a number: {v}"))
    }

    /// Saves a screenshot of the window to `<target>/screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await.context("screenshot")?;
        let path = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Ends the session (the app closes its window and exits cleanly) and
    /// stops tauri-driver. Fails if the app does not exit.
    pub async fn close(mut self) -> Result<()> {
        let pid = self.pid;
        // Closing the last window ends the app (RunEvent::Exit: the node
        // shuts down cleanly); ending the session alone leaves it running.
        let _ = self.client.close_window().await;
        let _ = self.client.clone().close().await;
        let exited = wait_for("the app to exit", DEADLINE, || !alive(pid));
        self.stop_driver();
        if exited.is_err() {
            send_signal(pid, "KILL");
        }
        exited
    }

    /// SIGKILLs the app (a crash), then stops tauri-driver.
    pub fn kill(mut self) -> Result<()> {
        send_signal(self.pid, "KILL");
        wait_for("the killed app to go", DEADLINE, || !alive(self.pid))?;
        self.stop_driver();
        Ok(())
    }

    fn stop_driver(&mut self) {
        // SIGTERM, not SIGKILL: tauri-driver then stops WebKitWebDriver too.
        send_signal(self.driver.id(), "TERM");
        let _ = self.driver.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if self.driver.try_wait().ok().flatten().is_none() {
            self.stop_driver();
        }
        if self.pid != 0 && alive(self.pid) {
            send_signal(self.pid, "KILL");
        }
    }
}

/// Stops tauri-driver if the launch fails half way.
struct AppStart {
    driver: Option<Child>,
}

impl Drop for AppStart {
    fn drop(&mut self) {
        if let Some(mut d) = self.driver.take() {
            send_signal(d.id(), "TERM");
            let _ = d.wait();
        }
    }
}
