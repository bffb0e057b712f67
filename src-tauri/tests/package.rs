//! The packages players install, as they get them: the `.deb` and `.rpm`
//! that Tauri's bundler makes (`make test-package`, which `make test` runs
//! before the tests, builds them from a debug build; `make package` makes
//! the release ones the same way). The `.deb` is installed into a scratch
//! root with `dpkg-deb -x`, and the binary it installed passes the click
//! test in a real window; its menu entry and icon are checked as a desktop
//! environment reads them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{bail, ensure, Context, Result};
use support::{map_count, App, Display};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The one file with this extension in `<target>/debug/bundle/<kind>/`,
/// checked to be newer than the sources it was built from.
fn bundle(kind: &str) -> Result<PathBuf> {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = target
        .parent()
        .unwrap_or(&target)
        .join("debug/bundle")
        .join(kind);
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "no {kind} package in {}: run `make test-package` (make test does)",
                dir.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == kind))
        .collect();
    let [package] = found.as_slice() else {
        bail!("expected one .{kind} in {}, found {found:?}", dir.display());
    };
    let built = std::fs::metadata(package)?.modified()?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for src in [
        manifest.join("src"),
        manifest.join("../ui"),
        manifest.join("tauri.conf.json"),
    ] {
        if let Some(newer) = newest(&src)? {
            ensure!(
                newer <= built,
                "{} is older than {}: run `make test-package` (make test does)",
                package.display(),
                src.display()
            );
        }
    }
    Ok(package.clone())
}

/// The newest modification time under `path`.
fn newest(path: &Path) -> Result<Option<SystemTime>> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_dir() {
        return Ok(Some(meta.modified()?));
    }
    let mut best = None;
    for entry in std::fs::read_dir(path)? {
        best = best.max(newest(&entry?.path())?);
    }
    Ok(best)
}

/// Runs a command and gives its standard output, failing with its
/// standard error.
fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (make test installs it)"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The files a `.deb` installs (paths from its root, e.g. `usr/bin/x`).
fn installed_files(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push(path.strip_prefix(root)?.display().to_string());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort();
    Ok(files)
}

/// The `key=value` lines of a desktop entry's `[Desktop Entry]` group.
fn desktop_entry(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip_while(|l| l.trim() != "[Desktop Entry]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_a_menu_entry_and_an_app_that_works() -> Result<()> {
    let deb = bundle("deb")?;
    let deb_arg = deb.to_str().context("package path")?;
    let field = |name: &str| -> Result<String> {
        Ok(output("dpkg-deb", &["-f", deb_arg, name])?
            .trim()
            .to_string())
    };
    assert_eq!(field("Package")?, "galaxy-forge");
    assert_eq!(field("Version")?, VERSION);
    assert_eq!(field("Section")?, "games");
    let depends = field("Depends")?;
    ensure!(
        depends.contains("libwebkit2gtk-4.1-0"),
        "Depends: {depends}"
    );

    let root = tempfile::tempdir()?;
    output(
        "dpkg-deb",
        &["-x", deb_arg, root.path().to_str().context("root")?],
    )?;
    let files = installed_files(root.path())?;

    // The menu entry: valid, named, in the Game category, starting the
    // installed binary and showing the installed icon.
    let entries: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("usr/share/applications/") && f.ends_with(".desktop"))
        .collect();
    let [entry] = entries.as_slice() else {
        bail!("expected one menu entry, the package installs {files:?}");
    };
    let entry_path = root.path().join(entry);
    output(
        "desktop-file-validate",
        &[entry_path.to_str().context("entry")?],
    )?;
    let keys = desktop_entry(&std::fs::read_to_string(&entry_path)?);
    let get = |k: &str| {
        keys.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    assert_eq!(get("Name"), "Galaxy Forge");
    assert_eq!(get("Type"), "Application");
    ensure!(
        get("Categories").split(';').any(|c| c == "Game"),
        "Categories={}",
        get("Categories")
    );
    let exec = get("Exec").split_whitespace().next().unwrap_or_default();
    let binary = root.path().join("usr/bin").join(exec);
    ensure!(binary.is_file(), "Exec={exec} is not installed: {files:?}");
    let icon = get("Icon");
    let icons: Vec<&String> = files
        .iter()
        .filter(|f| {
            f.starts_with("usr/share/icons/hicolor/") && f.ends_with(&format!("/apps/{icon}.png"))
        })
        .collect();
    ensure!(!icons.is_empty(), "Icon={icon} is not installed: {files:?}");
    for icon in icons {
        let png = std::fs::read(root.path().join(icon))?;
        ensure!(png.starts_with(b"\x89PNG"), "{icon} is not a PNG");
    }

    // The desktop app runs on SQLite: no PostgreSQL client is linked in
    // (the backends are cargo features only galaxy-cloud turns on).
    let bytes = std::fs::read(&binary)?;
    ensure!(
        !bytes.windows(14).any(|w| w == b"tokio_postgres"),
        "the installed app links a PostgreSQL client"
    );

    // The installed binary: its version, then a player's first click.
    let version = output(binary.to_str().context("binary")?, &["--version"])?;
    assert_eq!(version.trim(), format!("galaxy-desktop {VERSION}"));
    let display = Display::start()?;
    let data = tempfile::tempdir()?;
    let app = App::launch_binary(&display, data.path(), &binary).await?;
    app.create_until_completed(1).await?;
    app.wait_js("the galaxy on the map", &map_count(1)).await?;
    app.screenshot("package-installed").await?;
    app.close().await?;
    Ok(())
}

#[test]
fn the_rpm_installs_the_same_files_and_names_its_libraries() -> Result<()> {
    let rpm = bundle("rpm")?;
    let rpm_arg = rpm.to_str().context("package path")?;
    let name_version = output(
        "rpm",
        &["-qp", "--queryformat", "%{NAME} %{VERSION}", rpm_arg],
    )?;
    assert_eq!(name_version, format!("galaxy-forge {VERSION}"));
    let requires = output("rpm", &["-qpR", rpm_arg])?;
    ensure!(
        requires.contains("libwebkit2gtk-4.1.so.0"),
        "requires: {requires}"
    );

    let root = tempfile::tempdir()?;
    let deb = bundle("deb")?;
    output(
        "dpkg-deb",
        &[
            "-x",
            deb.to_str().context("deb")?,
            root.path().to_str().context("root")?,
        ],
    )?;
    let deb_files = installed_files(root.path())?;
    let mut rpm_files: Vec<String> = output("rpm", &["-qlp", rpm_arg])?
        .lines()
        .map(|l| l.trim_start_matches('/').to_string())
        .collect();
    rpm_files.sort();
    assert_eq!(rpm_files, deb_files);
    Ok(())
}
