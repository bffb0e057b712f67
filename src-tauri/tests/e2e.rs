//! The player's journey in the real app: a WebKitGTK window under Xvfb,
//! driven by tauri-driver + WebKitWebDriver. Each test gets its own display
//! and data directory. Screenshots go to `target/screenshots/`.
//!
//! The tests run one at a time (a lock): two WebKit apps at once on a
//! two-core machine only make each slower.

mod support;

use anyhow::{ensure, Result};
use durable::{InstanceFilter, InstanceQuery, SqliteStore, Store};
use support::{completed_rows, map_count, App, Display, ROWS};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_galaxy_shows_it_live_then_on_the_map_and_in_the_lists() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let display = Display::start()?;
    let data = tempfile::tempdir()?;
    let app = App::launch(&display, data.path()).await?;
    app.wait_js("an empty universe", &map_count(0)).await?;
    app.screenshot("01-empty").await?;

    app.create_until_completed(1).await?;
    app.wait_js("the galaxy on the map", &map_count(1)).await?;

    // The row shows the fan-out (two tasks side by side), then the write.
    let groups = app
        .eval(&format!(
            "return [...document.querySelectorAll('{ROWS} .task-group')]\
               .map(g => [...g.querySelectorAll('.task')].map(t => t.dataset.task + ':' + t.dataset.state))"
        ))
        .await?;
    assert_eq!(
        groups,
        serde_json::json!([
            ["Utility_Coords:Completed", "Utility_Name:Completed"],
            ["Galaxy_Create_Impl:Completed"]
        ])
    );
    // The new instance is open in the dock: its timeline and events.
    app.wait_js(
        "the timeline of the new instance",
        "return document.querySelector('#instance-detail .detail')?.dataset.status === 'Completed'",
    )
    .await?;
    let events = app
        .eval("return [...document.querySelectorAll('#instance-detail .events li')].map(li => li.dataset.kind)")
        .await?;
    let events: Vec<String> = serde_json::from_value(events)?;
    for kind in [
        "ExecutionStarted",
        "TaskScheduled",
        "TaskCompleted",
        "ExecutionCompleted",
    ] {
        ensure!(
            events.iter().any(|e| e == kind),
            "{kind} missing in {events:?}"
        );
    }
    assert_eq!(app.count("#instance-detail .lane[data-task]").await?, 3);
    // Its galaxy is selected on the map and named in the card, the row and the list.
    let name = app
        .eval("return window.galaxyForge.instance(document.querySelector('#instance-list li').dataset.id).galaxy.name")
        .await?;
    let name = name.as_str().unwrap_or_default().to_string();
    app.wait_js(
        "the galaxy card",
        &format!(
            "return document.querySelector('#galaxy-card h3')?.textContent === {}",
            serde_json::to_string(&name)?
        ),
    )
    .await?;
    app.screenshot("02-first-galaxy").await?;
    app.click("#tab-galaxies").await?;
    app.wait_js(
        "the galaxies list",
        &format!(
            "return [...document.querySelectorAll('#galaxy-list .gname')].map(e => e.textContent).join() === {}",
            serde_json::to_string(&name)?
        ),
    )
    .await?;
    app.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_quick_clicks_make_twenty_galaxies_that_survive_a_restart() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let display = Display::start()?;
    let data = tempfile::tempdir()?;
    let app = App::launch(&display, data.path()).await?;
    for _ in 0..20 {
        app.click("#create").await?;
    }
    app.wait_js("20 completed instances", &completed_rows(20))
        .await?;
    app.wait_js("20 galaxies on the map", &map_count(20))
        .await?;
    app.screenshot("03-twenty").await?;
    app.close().await?;

    let app = App::launch(&display, data.path()).await?;
    app.wait_js("the 20 instances after restart", &completed_rows(20))
        .await?;
    app.wait_js("the 20 galaxies after restart", &map_count(20))
        .await?;
    // Open the newest instance: the README screenshot shows the timeline.
    app.click(&format!("{ROWS}:first-child")).await?;
    app.wait_js(
        "the instance detail",
        "return document.querySelector('#instance-detail .detail')?.dataset.status === 'Completed'",
    )
    .await?;
    app.wait_js(
        "its galaxy selected",
        "return !!document.querySelector('#galaxy-card h3')",
    )
    .await?;
    app.screenshot("04-after-restart").await?;
    app.close().await?;
    Ok(())
}

/// Instances of the data dir that are not finished, read from the engine
/// store while no app runs.
async fn unfinished(dir: &std::path::Path) -> Result<Vec<String>> {
    Ok(store_state(dir).await?.1)
}

/// How many instances the data dir holds, and which are not finished.
async fn store_state(dir: &std::path::Path) -> Result<(usize, Vec<String>)> {
    // A killed process's threads may still be exiting (its lock file held)
    // a moment after it shows as a zombie.
    let path = dir.join("engine.db");
    let mut opened = None;
    support::wait_for(
        "the killed app to release its store",
        support::DEADLINE,
        || {
            opened = SqliteStore::open(&path).ok();
            opened.is_some()
        },
    )?;
    let store = opened.expect("opened");
    // Every page: bursts that finished before their kill add up.
    let mut instances = Vec::new();
    let mut continuation = None;
    loop {
        let page = store
            .list_instances(&InstanceQuery {
                filter: InstanceFilter::default(),
                page_size: 1000,
                with_input: false,
                continuation,
            })
            .await?;
        instances.extend(page.instances);
        continuation = page.continuation;
        if continuation.is_none() {
            break;
        }
    }
    store.close();
    let left: Vec<String> = instances
        .iter()
        .filter(|s| !s.runtime_status.is_terminal())
        .map(|s| s.instance_id.to_string())
        .collect();
    eprintln!(
        "store after the kill: {} instances, {} unfinished",
        instances.len(),
        left.len()
    );
    Ok((instances.len(), left))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_killed_during_creation_finishes_the_instances_after_restart() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let display = Display::start()?;
    let data = tempfile::tempdir()?;
    // A burst of 300 clicks, then SIGKILL as soon as the first instance is
    // shown (the engine finishes one in a few ms, so a small burst is over
    // before the kill lands). Whether some are still unfinished at the kill depends on
    // timing, so the store is checked, and the burst repeated if needed.
    let mut left = Vec::new();
    let mut total = 0;
    for attempt in 1..=5 {
        let app = App::launch(&display, data.path()).await?;
        app.eval(
            "for (let i = 0; i < 300; i++) document.getElementById('create').click(); return true",
        )
        .await?;
        app.wait_js(
            "the first instance shown",
            "return !!document.querySelector('#instance-list li')",
        )
        .await?;
        app.kill()?;
        (total, left) = store_state(data.path()).await?;
        if !left.is_empty() {
            eprintln!(
                "attempt {attempt}: {} instances unfinished at the kill",
                left.len()
            );
            break;
        }
    }
    ensure!(!left.is_empty(), "every burst finished before the kill");

    let app = App::launch(&display, data.path()).await?;
    let ids = serde_json::to_string(&left)?;
    // The list shows the most recent instances, and resumed instances may
    // finish before the page has subscribed (it then shows the snapshot),
    // so older ones need not have a row: every resumed instance that is
    // listed shows Completed, at least one is listed, no row is still
    // running and nothing is forging; the store confirms all of them below.
    app.wait_js(
        "the unfinished instances to complete after restart",
        &format!(
            "const rows = {ids}.map(id => document.querySelector(`#instance-list li[data-id=\"${{id}}\"]`)); \
             return rows.some(r => r) \
               && rows.every(r => !r || r.dataset.status === 'Completed') \
               && !document.querySelector('#instance-list li[data-status=\"Running\"], #instance-list li[data-status=\"Pending\"]') \
               && document.getElementById('live-count').textContent.trim() === '0'"
        ),
    )
    .await?;
    app.screenshot("05-after-kill-restart").await?;
    // Exactly one galaxy per instance, none lost, none doubled (no instance
    // is created after the restart, so the store's count at the kill holds).
    app.wait_js("one galaxy per instance", &map_count(total))
        .await?;
    app.close().await?;
    ensure!(unfinished(data.path()).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_galaxy_made_offline_syncs_once_registered_and_another_devices_galaxy_appears_live(
) -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let display = Display::start()?;
    let data = tempfile::tempdir()?;
    // The cloud's address is known, but nothing listens there yet.
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    std::fs::write(
        data.path().join("settings.json"),
        serde_json::json!({ "cloudUrl": base }).to_string(),
    )?;
    let app = App::launch(&display, data.path()).await?;
    app.click("#create").await?;
    app.wait_js("the galaxy made offline", &map_count(1))
        .await?;
    app.wait_js(
        "the indicator to say offline",
        "return document.getElementById('connection-text').textContent === 'offline'",
    )
    .await?;

    // The cloud starts; the player registers from Settings.
    let cloud_dir = tempfile::tempdir()?;
    let keys = cloud::Keys::new("e2e-sync-function-key-01", "e2e-sync-master-key-0001")?;
    let cloud =
        cloud::server::spawn_local(cloud_dir.path(), &format!("127.0.0.1:{port}"), keys).await?;
    app.click("#open-settings").await?;
    app.click("#register").await?;
    app.wait_js(
        "the indicator to reach up to date with nothing pending",
        "return document.getElementById('connection').dataset.phase === 'upToDate' \
         && document.getElementById('pending-text').textContent === '0 to sync'",
    )
    .await?;
    app.screenshot("05-synced").await?;
    // The galaxy is in the cloud: its pull, with the app's own token.
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.path().join("settings.json"))?)?;
    let token = raw["account"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/api/sync/pull?client_id=probe"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    let local = app
        .eval("return [...document.querySelectorAll('#galaxy-list li')].length || window.galaxyForge.mapCount()")
        .await?;
    ensure!(local == serde_json::json!(1), "one galaxy here: {local}");
    ensure!(
        page["changes"].as_array().map(Vec::len) == Some(1),
        "the cloud has it: {page}"
    );

    // "Create in the cloud": the instance runs on galaxy-cloud, shows in
    // the orchestrations panel as a cloud instance, and its galaxy arrives
    // through sync.
    app.click("#settings-cancel").await?;
    app.click("#create-cloud").await?;
    app.wait_js(
        "the cloud instance to complete in the panel",
        "return [...document.querySelectorAll('#instance-list li.instance')]\
           .some(li => li.dataset.cloud === 'true' && li.dataset.status === 'Completed')",
    )
    .await?;
    app.wait_js("the cloud's galaxy on the map", &map_count(2))
        .await?;
    app.click("#open-settings").await?;

    // A headless device of the same player (the CLI's library) joins with
    // the code the app shows and creates a galaxy: it appears on the map
    // without any click.
    app.click("#make-code").await?;
    app.wait_js(
        "the link code",
        "return !document.getElementById('link-code').hidden",
    )
    .await?;
    let code = app
        .eval("return document.getElementById('link-code').textContent")
        .await?;
    let device_dir = tempfile::tempdir()?;
    let (device, _) =
        galaxy::PlayerDevice::open(device_dir.path(), None, sync::SyncerConfig::default())?;
    device
        .join(&base, code.as_str().unwrap_or_default(), "headless")
        .await?;
    device.create(1).await?;
    device.sync_once().await?;
    app.wait_js("the other device's galaxy on the map", &map_count(3))
        .await?;
    app.click("#settings-cancel").await?;
    app.click("#tab-galaxies").await?;
    app.wait_js(
        "the galaxy marked with its device",
        "return [...document.querySelectorAll('#galaxy-list li')].some(li => li.dataset.origin === 'headless')",
    )
    .await?;
    app.screenshot("06-from-another-device").await?;
    device.shutdown(std::time::Duration::from_secs(5)).await;
    app.close().await?;
    cloud.stop().await;
    Ok(())
}

/// A cloud instance's states cross on their way to the page: the live
/// stream's (through Rust) can arrive before the create command's answer
/// puts "Pending" (a full-suite run once saw a finished cloud instance
/// left "Pending" that way). A late "Pending" takes nothing back and
/// nothing follows an end. The states are sent as the Rust side sends
/// them, as `cloud-instance` events, one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_instance_s_late_states_take_nothing_back() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let display = Display::start()?;
    let data = tempfile::tempdir()?;
    let app = App::launch(&display, data.path()).await?;
    app.wait_js("an empty universe", &map_count(0)).await?;
    app.eval_async(
        "const done = arguments[arguments.length - 1]; \
         const send = (instanceId, runtimeStatus) => \
           window.__TAURI__.event.emit('cloud-instance', { instanceId, runtimeStatus }); \
         (async () => { \
           for (const s of ['Running', 'Completed', 'Pending', 'Running']) await send('crossed', s); \
           await send('marker', 'Running'); \
           done(true); \
         })();",
    )
    .await?;
    // Events reach the page in the order they were sent: once the marker
    // shows, every state before it was applied.
    app.wait_js(
        "the marker sent last",
        "return !!document.querySelector('#instance-list li[data-id=\"marker\"]')",
    )
    .await?;
    let shown = app
        .eval(
            "return [window.galaxyForge.instance('crossed').runtimeStatus, \
               document.querySelector('#instance-list li[data-id=\"crossed\"]').dataset.status]",
        )
        .await?;
    ensure!(
        shown == serde_json::json!(["Completed", "Completed"]),
        "a finished cloud instance was taken back: {shown}"
    );
    app.close().await?;
    Ok(())
}

/// Where each panel is and whether it must scroll, as the page measures it.
const LAYOUT: &str = r##"
const vw = window.innerWidth, vh = window.innerHeight;
const out = { vw, vh, outside: [], clipped: [], ioVisible: false };
for (const sel of [".topbar", ".map-panel", ".side-panel", "#galaxy-card", "#instance-detail", "#instance-list"]) {
  const el = document.querySelector(sel);
  const r = el.getBoundingClientRect();
  if (r.left < 0 || r.top < 0 || r.right > vw + 0.5 || r.bottom > vh + 0.5 || r.width < 40 || r.height < 40) out.outside.push(`${sel} ${JSON.stringify(r)}`);
  const scrolls = ["auto", "scroll"].includes(getComputedStyle(el).overflowY);
  if (el.scrollHeight > el.clientHeight + 1 && !scrolls) out.clipped.push(sel);
}
// The top bar keeps one line, inside the window.
const bar = document.querySelector(".topbar").getBoundingClientRect();
out.topbar = [...document.querySelectorAll(".topbar > *")].filter((el) => el.offsetParent).flatMap((el) => {
  const r = el.getBoundingClientRect();
  return r.top < bar.top - 0.5 || r.bottom > bar.bottom + 0.5 || r.right > vw + 0.5 || (el.tagName === "BUTTON" && r.height > 40)
    ? [`${el.id || el.className} ${JSON.stringify(r)}`] : [];
});
// Nothing in a row pushes out sideways (a long name gives way instead).
out.sideways = [];
for (const li of document.querySelectorAll("#instance-list li, #galaxy-list li")) {
  const row = li.getBoundingClientRect();
  for (const part of li.querySelectorAll(".status, .took, .gcoords")) {
    const r = part.getBoundingClientRect();
    if (r.width > 0 && r.right > row.right + 0.5) out.sideways.push(`${li.dataset.id || li.dataset.key} ${part.className}`);
  }
}
for (const sel of ["#instance-list", "#galaxy-list"]) {
  const el = document.querySelector(sel);
  if (el.scrollWidth > el.clientWidth + 1) out.sideways.push(sel);
}
const detail = document.querySelector("#instance-detail").getBoundingClientRect();
const pres = [...document.querySelectorAll("#instance-detail .io pre")];
out.ioVisible = pres.length === 3 && pres.every((p) => {
  const r = p.getBoundingClientRect();
  return r.top >= detail.top && r.bottom <= detail.bottom + 0.5 && r.bottom <= vh;
});
return out;
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_fits_or_scrolls_inside_itself_at_three_window_sizes() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    for (width, height) in [(1024u32, 700u32), (1280, 800), (1920, 1080)] {
        let display = Display::start_sized(width, height)?;
        let data = tempfile::tempdir()?;
        let app = App::launch(&display, data.path()).await?;
        // Without a window manager the window keeps the size it asks for.
        app.client.set_window_size(width, height).await?;
        app.wait_js(
            "the window at its new size",
            &format!("return window.innerWidth === {width} && window.innerHeight === {height}"),
        )
        .await?;
        app.create_until_completed(1).await?;
        app.wait_js(
            "its detail open",
            "return document.querySelector('#instance-detail .detail')?.dataset.status === 'Completed'",
        )
        .await?;
        // A cloud instance's row, the widest kind (its mark, and here the
        // longest status), beside the local one.
        app.eval(
            "window.__TAURI__.event.emit('cloud-instance', \
               { instanceId: 'a-cloud-instance-with-a-long-id', runtimeStatus: 'Suspended' }); \
             return true",
        )
        .await?;
        app.wait_js(
            "the cloud row",
            "return document.querySelector('#instance-list li[data-cloud=\"true\"]')?.dataset.status === 'Suspended'",
        )
        .await?;
        // Its row holds no tasks and no galaxy yet, and says nothing of them.
        let cloud_row = app
            .eval("return document.querySelector('#instance-list li[data-cloud=\"true\"]').textContent")
            .await?;
        ensure!(
            !cloud_row.as_str().unwrap_or_default().contains("null"),
            "the cloud row reads {cloud_row}"
        );
        // The top bar as wide as it gets: a linked device's cloud button
        // and the time of the last sync.
        app.eval(
            "document.getElementById('create-cloud').hidden = false; \
             const last = document.getElementById('last-sync'); \
             last.hidden = false; last.textContent = '· synced 12:34:56 PM'; \
             document.getElementById('connection-text').textContent = 'up to date'; return true",
        )
        .await?;
        let layout = app.eval(LAYOUT).await?;
        app.screenshot(&format!("layout-{width}x{height}")).await?;
        ensure!(
            layout["sideways"] == serde_json::json!([]),
            "{width}x{height}: rows that spill sideways: {layout}"
        );
        ensure!(
            layout["topbar"] == serde_json::json!([]),
            "{width}x{height}: the top bar does not keep one line: {layout}"
        );
        ensure!(
            layout["outside"] == serde_json::json!([]),
            "{width}x{height}: panels outside the window: {layout}"
        );
        ensure!(
            layout["clipped"] == serde_json::json!([]),
            "{width}x{height}: panels that cut off their content: {layout}"
        );
        // From 1280x800 up, the open instance's input, output and custom
        // status show without scrolling.
        if width >= 1280 {
            ensure!(
                layout["ioVisible"] == true,
                "{width}x{height}: input/output/custom status cut off: {layout}"
            );
        }
        app.close().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyboard_reaches_everything_and_notices_are_spoken_once() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let display = Display::start()?;
    let data = tempfile::tempdir()?;
    let app = App::launch(&display, data.path()).await?;
    app.create_until_completed(1).await?;
    // Rows are buttons, with no alert inside that repaints would repeat.
    let rows = app
        .eval(&format!(
            "return [...document.querySelectorAll('{ROWS}')].map(li => li.firstElementChild.tagName)"
        ))
        .await?;
    assert_eq!(rows, serde_json::json!(["BUTTON"]));
    assert_eq!(
        app.count("#instance-list [role], #instance-detail [role=alert], #galaxy-list [role]")
            .await?,
        0
    );
    // The focused row keeps focus while its instance updates: an update
    // (a newer view, through the page's own event listener) redraws the
    // row in place.
    app.eval(&format!(
        "const li = document.querySelector('{ROWS}'); window.focusedRow = li.firstElementChild; \
         window.focusedRow.focus(); \
         const v = window.galaxyForge.instance(li.dataset.id); \
         window.__TAURI__.event.emit('instance-updated', {{ ...v, version: v.version + 1, customStatus: 'later' }}); \
         return true"
    ))
    .await?;
    app.wait_js(
        "the row redrawn with focus kept",
        &format!(
            "const li = document.querySelector('{ROWS}'); \
             return window.galaxyForge.instance(li.dataset.id).customStatus === 'later' \
               && li.firstElementChild === window.focusedRow \
               && document.activeElement === window.focusedRow"
        ),
    )
    .await?;
    app.create_until_completed(2).await?;
    // Tabs: the arrow keys move and select; only the selected tab is in
    // the Tab order.
    let tab = app
        .client
        .find(fantoccini::Locator::Css("#tab-orchestrations"))
        .await?;
    tab.send_keys("\u{E014}").await?; // ArrowRight
    app.wait_js(
        "the galaxies tab selected and focused",
        "return document.activeElement.id === 'tab-galaxies' \
         && document.getElementById('tab-galaxies').getAttribute('aria-selected') === 'true' \
         && document.getElementById('tab-galaxies').tabIndex === 0 \
         && document.getElementById('tab-orchestrations').tabIndex === -1 \
         && !document.getElementById('galaxies').hidden",
    )
    .await?;
    app.wait_js(
        "galaxy entries as buttons",
        "return [...document.querySelectorAll('#galaxy-list li')].length === 2 \
         && [...document.querySelectorAll('#galaxy-list li > button')].length === 2",
    )
    .await?;
    // The galaxies list is keyed as well: a galaxy made while an entry has
    // focus joins the list above it, and the focused node stays the same.
    app.eval(
        "const b = document.querySelector('#galaxy-list li > button'); \
         window.focusedGalaxy = b; b.focus(); \
         window.__TAURI__.core.invoke('create_galaxy'); return true",
    )
    .await?;
    app.wait_js(
        "the new galaxy listed above, focus kept on the same entry",
        "const items = [...document.querySelectorAll('#galaxy-list li > button')]; \
         return items.length === 3 && items[1] === window.focusedGalaxy \
           && document.activeElement === window.focusedGalaxy",
    )
    .await?;
    let tab = app
        .client
        .find(fantoccini::Locator::Css("#tab-galaxies"))
        .await?;
    tab.send_keys("\u{E012}").await?; // ArrowLeft
    app.wait_js(
        "back on the orchestrations tab",
        "return document.activeElement.id === 'tab-orchestrations' && document.getElementById('galaxies').hidden",
    )
    .await?;
    // Bad input in Settings gets the app's own readable message beside the
    // field (the page's built-in URL check, whose bubble WebKitGTK shows
    // empty, is off), spoken once: by that alert, not by a toast too, and
    // not again however often the panels repaint after it.
    let spoken = app
        .eval("return document.getElementById('announce-alert').textContent")
        .await?;
    app.click("#open-settings").await?;
    app.eval("document.getElementById('settings-url').value = '127.0.0.1:7071'; return true")
        .await?;
    app.eval("document.getElementById('settings-form').requestSubmit(); return true")
        .await?;
    app.wait_js(
        "the URL refused beside the field",
        "const e = document.getElementById('settings-error'); \
         return !e.hidden && e.textContent.includes('must start with http://') \
           && document.getElementById('settings').open",
    )
    .await?;
    // Enter in the link-code field joins at the typed URL (no cloud
    // listens there, so it says why), rather than saving the settings and
    // closing the dialog.
    app.eval("document.getElementById('settings-url').value = 'http://127.0.0.1:9'; return true")
        .await?;
    let code = app
        .client
        .find(fantoccini::Locator::Css("#join-code"))
        .await?;
    code.send_keys("K7QF-9M2D\u{E007}").await?; // Enter
    app.wait_js(
        "the join's failure beside the field, the dialog still open",
        "const e = document.getElementById('settings-error'); \
         return !e.hidden && !e.textContent.includes('must start with') \
           && e.textContent.includes('cannot be reached') && document.getElementById('settings').open",
    )
    .await?;
    app.click("#settings-cancel").await?;
    assert_eq!(
        app.eval("return document.getElementById('announce-alert').textContent")
            .await?,
        spoken,
        "a settings error was spoken twice"
    );
    app.create_until_completed(4).await?;
    assert_eq!(
        app.eval("return document.getElementById('announce-alert').textContent")
            .await?,
        spoken
    );
    // Less motion when asked: the stylesheet turns animations off.
    let calm = app
        .eval(
            "return [...document.styleSheets].some(s => [...s.cssRules].some(r => \
               r.media && r.media.mediaText.includes('prefers-reduced-motion') \
               && r.cssRules[0].style.getPropertyValue('animation-name') === 'none'))",
        )
        .await?;
    assert_eq!(calm, true);
    // N creates a galaxy, also while the map has focus (its own keys are
    // others).
    let canvas = app
        .client
        .find(fantoccini::Locator::Css("#map-canvas"))
        .await?;
    canvas.send_keys("n").await?;
    app.wait_js("a fifth galaxy from the N key", &completed_rows(5))
        .await?;
    app.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_launch_on_the_same_data_focuses_the_first_window() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let display = Display::start()?;
    let data = tempfile::tempdir()?;
    let app = App::launch(&display, data.path()).await?;
    app.create_until_completed(1).await?;
    let second = std::process::Command::new(support::APP)
        .env("DISPLAY", &display.name)
        .env(galaxy_desktop::DATA_DIR_ENV, data.path())
        .output()?;
    let said = String::from_utf8_lossy(&second.stderr);
    ensure!(
        second.status.success(),
        "second launch: {:?} {said}",
        second.status
    );
    ensure!(said.contains("already open"), "second launch said: {said}");
    app.wait_js(
        "the first window asked to come forward",
        "return window.galaxyForge.metrics.focusRequests === 1",
    )
    .await?;
    // The first app still works, on its data.
    app.create_until_completed(2).await?;
    app.close().await?;
    Ok(())
}

/// What cannot be undone asks for a second press, a refused rename says
/// why beside the field, and focus stays in the panel it was in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_and_purging_ask_twice_and_focus_stays_in_its_panel() -> Result<()> {
    let _one = ONE_AT_A_TIME.lock().await;
    let display = Display::start()?;
    let data = tempfile::tempdir()?;
    let app = App::launch(&display, data.path()).await?;
    app.create_until_completed(1).await?;
    app.wait_js(
        "the galaxy card",
        "return !!document.querySelector('#galaxy-card .rename-input')",
    )
    .await?;

    // A blank name is refused beside the field; what was typed stays.
    app.eval(
        "const i = document.querySelector('#galaxy-card .rename-input'); i.focus(); i.value = '   '; \
         document.querySelector('#galaxy-card .galaxy-edit').requestSubmit(); return true",
    )
    .await?;
    app.wait_js(
        "the refusal beside the field",
        "const p = document.getElementById('rename-error'); \
         const i = document.querySelector('#galaxy-card .rename-input'); \
         return !p.hidden && p.textContent.length > 0 && i.getAttribute('aria-invalid') === 'true' \
           && i.value === '   ' && document.activeElement === i",
    )
    .await?;
    app.eval(
        "const i = document.querySelector('#galaxy-card .rename-input'); i.value = 'Second Home'; \
         document.querySelector('#galaxy-card .galaxy-edit').requestSubmit(); return true",
    )
    .await?;
    app.wait_js(
        "the new name, the message gone, focus still in the field",
        "return document.querySelector('#galaxy-card h3')?.textContent === 'Second Home' \
           && document.getElementById('rename-error').hidden \
           && document.activeElement === document.querySelector('#galaxy-card .rename-input')",
    )
    .await?;

    // Delete: the first press only asks.
    app.click("#galaxy-card .delete").await?;
    app.wait_js(
        "the delete button asking again",
        "return document.querySelector('#galaxy-card .delete').textContent === 'Press again to delete'",
    )
    .await?;
    app.wait_js("the galaxy still there", &map_count(1)).await?;
    app.click("#galaxy-card .delete").await?;
    app.wait_js("the galaxy deleted", &map_count(0)).await?;
    app.wait_js(
        "focus on the card's hint",
        "return document.activeElement === document.querySelector('#galaxy-card .hint')",
    )
    .await?;

    // Purge: the same, and focus stays in the detail.
    app.click("#instance-detail [data-action=\"purge\"]")
        .await?;
    app.wait_js(
        "the purge button asking again",
        "return document.querySelector('#instance-detail [data-action=\"purge\"]').textContent === 'Press again to purge' \
           && document.querySelectorAll('#instance-list li').length === 1",
    )
    .await?;
    app.click("#instance-detail [data-action=\"purge\"]")
        .await?;
    app.wait_js(
        "the instance purged, focus on the detail's note",
        "return document.querySelectorAll('#instance-list li').length === 0 \
           && document.activeElement === document.querySelector('#instance-detail .hint')",
    )
    .await?;
    app.close().await?;
    Ok(())
}
