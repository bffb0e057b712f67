//! An official Durable Functions client library, unchanged, against the
//! real `galaxy-cloud` binary: the Node.js `durable-functions` package's
//! `DurableClient` (pinned by `make test-clients`), built from the client
//! data a Functions host would hand it, pointing at galaxy-cloud. The
//! script (tests/clients/durable_client.mjs) uses every method galaxy-cloud
//! serves and prints one JSON line per check.

use serde_json::Value;

mod common;

use common::router::{Cloud, KEY, MASTER};

/// Every check the script makes, in order.
const CHECKS: &[&str] = &[
    "start-generated-id",
    "status-completed",
    "start-more",
    "start-with-id",
    "start-live-id-conflicts",
    "status-running",
    "status-options",
    "status-unknown",
    "raise-event",
    "raise-event-finished",
    "raise-event-unknown",
    "suspend",
    "resume",
    "terminate",
    "terminate-finished",
    "rewind",
    "rewind-not-failed",
    "suspend-resume-finished",
    "list-all-pages",
    "list-by-filter-pages",
    "purge-one",
    "purge-one-unknown",
    "purge-by-filter-needs-master-key",
    "purge-by-filter",
    "wait-for-completion",
    "wait-for-completion-failed",
    "wait-for-completion-times-out",
    "management-payload",
    "wrong-key",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_durable_client_works_unchanged() {
    let clients = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-clients/node");
    assert!(
        clients.join("node_modules/durable-functions").is_dir(),
        "the durable-functions package is not in {}: run `make test` (it installs the pinned version there)",
        clients.display()
    );
    let cloud = Cloud::start_with(tempfile::tempdir().unwrap(), &["--samples"]);
    // ES modules resolve packages from the script's own directory.
    let script = clients.join("durable_client.mjs");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/durable_client.mjs"),
        &script,
    )
    .unwrap();
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .args([&cloud.base, KEY, MASTER])
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the client run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names, CHECKS, "{stdout}");
    assert!(steps.iter().all(|s| s["ok"] == true), "{stdout}");
}
