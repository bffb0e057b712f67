//! Keys and the data directory on disk, against the real `galaxy-cloud`:
//! a new data directory is the owner's only (0700); `keys.json` opened to
//! others is made 0600 again at start, with a warning; keys given by flag
//! or environment are never printed or logged; a status `Location` never
//! hands on the master key.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use reqwest::StatusCode;

mod common;

const FUNCTION_KEY: &str = "disk-function-key-00001";
const MASTER_KEY: &str = "disk-master-key-0000001";

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_data_directory_and_keys_stay_private_and_given_keys_unprinted() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("fresh/data");
    // Keys given by flag: the first start creates keys.json but prints
    // neither given key.
    let (mut child, lines) = common::spawn(
        &dir,
        &[
            "--function-key",
            FUNCTION_KEY,
            "--master-key",
            MASTER_KEY,
            "--samples",
        ],
    );
    let (printed, base) = common::wait_listening(&lines);
    let all = printed.join("\n");
    assert!(
        !all.contains(FUNCTION_KEY) && !all.contains(MASTER_KEY),
        "{all}"
    );
    assert!(all.contains("given with --function-key"), "{all}");
    assert_eq!(mode(&dir), 0o700, "a new data directory");
    assert_eq!(mode(&root.path().join("fresh")), 0o700, "its new parent");
    assert_eq!(mode(&dir.join("keys.json")), 0o600);
    assert!(!dir.join("keys.json.tmp").exists());

    // A live instance's 202 Location: asked with the master key, it
    // carries the function key.
    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "{base}/api/orchestrators/Sample_WaitForEvent/held?code={FUNCTION_KEY}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http
        .get(format!(
            "{base}/runtime/webhooks/durabletask/instances/held?showHistory=true&code={MASTER_KEY}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(!location.contains(MASTER_KEY), "{location}");
    let system = cloud::Keys::new(FUNCTION_KEY, MASTER_KEY)
        .unwrap()
        .system_key();
    assert!(
        location.ends_with(&format!("/instances/held?showHistory=true&code={system}")),
        "{location}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // Opened to others while stopped: the next start makes it 0600 again
    // and says so.
    std::fs::set_permissions(
        dir.join("keys.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (mut child, lines) = common::spawn_with(&dir, "127.0.0.1:0", &[], Stdio::piped(), &[]);
    common::wait_listening(&lines);
    assert_eq!(mode(&dir.join("keys.json")), 0o600);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("was readable by others (mode 644); made it 0600"),
        "{log}"
    );
}

/// Keys given by environment are never printed or logged either: not at
/// start, not in `--help`, and not in the trace log while requests carry
/// them (in the query and in the header).
#[tokio::test]
async fn keys_given_by_environment_are_never_printed_or_logged() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let log = root.path().join("cloud.log");
    let env = [
        ("GALAXY_FUNCTION_KEY", FUNCTION_KEY),
        ("GALAXY_MASTER_KEY", MASTER_KEY),
        ("GALAXY_LOG", "trace"),
    ];
    let (mut child, lines) = common::spawn_with(
        &dir,
        "127.0.0.1:0",
        &["--samples"],
        Stdio::from(std::fs::File::create(&log).unwrap()),
        &env,
    );
    let (printed, base) = common::wait_listening(&lines);
    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "{base}/api/orchestrators/Sample_WaitForEvent/env?code={FUNCTION_KEY}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "the env keys are in force"
    );
    let r = http
        .get(format!("{base}/runtime/webhooks/durabletask/instances/"))
        .header("x-functions-key", MASTER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .get(format!(
            "{base}/runtime/webhooks/durabletask/instances/env?code=wrong-key-000000000000"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    child.kill().unwrap();
    child.wait().unwrap();
    let mut seen = printed.join("\n");
    seen.push_str(&lines.try_iter().collect::<Vec<_>>().join("\n"));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("TRACE") || logged.contains("DEBUG"),
        "the log is verbose: {logged}"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_galaxy-cloud"))
        .arg("--help")
        .envs(env)
        .output()
        .unwrap();
    assert!(help.status.success());
    for text in [
        seen,
        logged,
        String::from_utf8_lossy(&help.stdout).to_string(),
        String::from_utf8_lossy(&help.stderr).to_string(),
    ] {
        assert!(
            !text.contains(FUNCTION_KEY) && !text.contains(MASTER_KEY),
            "a key was printed or logged: {text}"
        );
    }
}
