//! The app binary answers `--version` and `--help` without opening a
//! window (what a package's users and scripts ask first), and an unknown
//! option is a readable error, not a window.

use std::process::Command;

fn app(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_galaxy-desktop"))
        .args(args)
        .output()
        .expect("the app binary runs")
}

#[test]
fn version_and_help_print_and_exit() {
    let out = app(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("galaxy-desktop {}", env!("CARGO_PKG_VERSION"))
    );
    let out = app(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Galaxy Forge") && help.contains("--version"),
        "{help}"
    );
}

#[test]
fn an_unknown_option_is_a_readable_error() {
    let out = app(&["--no-such-option"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--no-such-option"), "{err}");
}
