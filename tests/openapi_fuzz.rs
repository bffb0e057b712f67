//! The OpenAPI document tells the truth: schemathesis (pinned by `make
//! test-clients`), driven by `/api/openapi.json` of the real binary,
//! sends thousands of requests (schema-valid and schema-violating, from
//! its coverage and fuzzing phases) and finds no server error, no request
//! the document calls valid rejected, and none it calls invalid accepted.
//!
//! The waivers (values only the server can make, such as continuation
//! tokens) are in tests/clients/schemathesis_hooks.py, each with its
//! reason. Live streams are left out: they never end, and
//! tests/stream_memory.rs and tests/cloud_http/ cover them.
//! `GF_FUZZ_SEED` and `GF_FUZZ_EXAMPLES` change the run (fixed by
//! default, so CI sees the same requests every time).

mod common;

use common::router::{Cloud, MASTER};

/// Cases per operation and phase unless `GF_FUZZ_EXAMPLES` says otherwise.
const EXAMPLES: &str = "60";
/// The fixed seed of the default run.
const SEED: &str = "20261202";
/// Fewer generated requests than this means the run did not reach the API.
const MIN_REQUESTS: u64 = 2000;

#[test]
fn the_openapi_document_matches_what_the_server_accepts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fuzzer = root.join("target/test-clients/schemathesis");
    assert!(
        fuzzer.join("schemathesis").is_dir(),
        "schemathesis is not in {}: run `make test` (it installs the pinned version there)",
        fuzzer.display()
    );
    let cloud = Cloud::start_with(tempfile::tempdir().unwrap(), &["--samples"]);
    let seed = std::env::var("GF_FUZZ_SEED").unwrap_or_else(|_| SEED.into());
    let examples = std::env::var("GF_FUZZ_EXAMPLES").unwrap_or_else(|_| EXAMPLES.into());
    // schemathesis keeps a cache in its working directory: not the repo.
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("python3")
        .current_dir(work.path())
        .args(["-m", "schemathesis.cli", "--no-color", "run"])
        .arg(format!("{}/api/openapi.json", cloud.base))
        .args(["--header", &format!("x-functions-key: {MASTER}")])
        // Streams never end; they are tested on their own.
        .args(["--exclude-path-regex", "(/stream$|^/api/sync/events$)"])
        .args([
            "--checks",
            "not_a_server_error,positive_data_acceptance,negative_data_rejection",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples, "--seed", &seed])
        // One worker: CPython 3.11's parser is not safe for the fuzzer's
        // threads (it fails with an AST recursion error).
        .args(["--workers", "1", "--request-timeout", "30"])
        .args(["--output-truncate", "false"])
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                fuzzer.display(),
                root.join("tests/clients").display()
            ),
        )
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found requests the document and the server disagree on (seed {seed}):\n{stdout}\n{stderr}"
    );
    // The run must have reached the API, not passed by testing nothing.
    let generated: u64 = stdout
        .lines()
        .find_map(|l| {
            let l = l.trim();
            let n = l.split_whitespace().next()?;
            l.contains("generated").then(|| n.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no 'N generated' line in:\n{stdout}"));
    assert!(
        generated >= MIN_REQUESTS,
        "only {generated} requests generated:\n{stdout}"
    );
    println!("schemathesis: {generated} requests, seed {seed}");
}
