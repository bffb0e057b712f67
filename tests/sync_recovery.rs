//! Sync when something was put back or left: a device that signs out and
//! links to the same player again, a cloud restored from a backup, a device
//! put back from an older copy of itself. Real `galaxy-cloud` processes and
//! devices driven through the `galaxy` CLI, as in `sync.rs`.

use std::path::Path;
use std::process::Child;

mod common;
use common::devices::{cloud, copy_dir, two_devices};
use common::{list, ok};

/// A device that signs out and links to the same player again goes on
/// from where it was: a delete made while signed out still reaches the
/// cloud, and a rename made meanwhile on the other device is not undone
/// by this device's stale copy (before, linking again rebased the device
/// as if the player were new: pending deletes dropped, every galaxy put
/// again over the others' changes).
#[test]
fn signing_out_and_linking_the_same_player_again_keeps_the_sync_state() {
    let cloud = cloud(&[]);
    let d = two_devices(&cloud.base);
    ok(&d.a, &["create", "-n", "2"]);
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 2 pulled 0");
    ok(&d.b, &["sync"]);
    let before = list(&d.a);
    let (gone, kept) = (before[0].0.clone(), before[1].0.clone());
    assert_eq!(ok(&d.a, &["sign-out"]).trim(), "signed out");
    ok(&d.a, &["delete", &gone]);
    ok(&d.b, &["rename", &kept, "Renamed on B"]);
    ok(&d.b, &["sync"]);
    let code = ok(&d.b, &["link"]).trim().to_string();
    ok(&d.a, &["link", &code, "--name", "laptop"]);
    let synced = ok(&d.a, &["sync"]);
    assert_eq!(synced.trim(), "pushed 1 pulled 1", "{synced}");
    ok(&d.b, &["sync"]);
    let a = list(&d.a);
    assert_eq!(a, vec![(kept, "Renamed on B".to_string())]);
    assert_eq!(list(&d.b), a);
    // Another player is a fresh start: everything here goes there.
    let other = tempfile::tempdir().unwrap();
    ok(
        other.path(),
        &["register", "--cloud", &cloud.base, "--name", "other"],
    );
    let code = ok(other.path(), &["link"]).trim().to_string();
    ok(&d.a, &["sign-out"]);
    ok(&d.a, &["link", &code, "--name", "laptop"]);
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 1 pulled 0");
    ok(other.path(), &["sync"]);
    assert_eq!(list(other.path()), a);
}

/// A cloud restored from a backup has lost galaxies it had confirmed. The
/// device, whose pull cursor is now beyond the cloud's latest version,
/// sends them again (before, it took this for a reset and wiped every
/// synced galaxy the restored cloud no longer had: lost everywhere).
#[test]
fn a_cloud_restored_from_a_backup_gets_back_what_it_lost_from_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let (data, backup) = (dir.path().join("cloud"), dir.path().join("backup"));
    let start = |at: &Path, listen: &str| {
        let (child, lines) = common::spawn_on(at, listen, &[]);
        let (_, base) = common::wait_listening(&lines);
        (child, base)
    };
    let stop = |mut child: Child| {
        child.kill().unwrap();
        child.wait().unwrap();
    };
    let (cloud, base) = start(&data, "127.0.0.1:0");
    let listen = base.trim_start_matches("http://").to_string();
    let d = two_devices(&base);
    ok(&d.a, &["create", "-n", "1"]);
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 1 pulled 0");
    stop(cloud);
    copy_dir(&data, &backup);
    let (cloud, _) = start(&data, &listen);
    ok(&d.a, &["create", "-n", "2"]);
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 2 pulled 0");
    stop(cloud);

    // The cloud comes back from the backup, on the same address: it has
    // the first galaxy only.
    let (cloud, _) = start(&backup, &listen);
    let told = ok(&d.a, &["sync"]);
    assert!(
        told.contains("The cloud lost changes it had confirmed"),
        "{told}"
    );
    assert_eq!(list(&d.a).len(), 3, "the device kept its galaxies");
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 3 pulled 0");
    ok(&d.b, &["sync"]);
    assert_eq!(list(&d.b), list(&d.a));
    stop(cloud);
}

/// A device whose data folder is put back from an older copy numbers its
/// new changes with ids the cloud settled for others. The cloud says so
/// (before, it skipped them as resends and the device dropped them from
/// its outbox: galaxies made there never left it), and the device takes a
/// new client id and pulls everything, getting back what its newer self
/// made too (a client's own writes are left out of its pulls).
#[test]
fn a_device_put_back_from_an_older_copy_loses_nothing_it_makes_afterwards() {
    let cloud = cloud(&[]);
    let d = two_devices(&cloud.base);
    ok(&d.a, &["create", "-n", "1"]);
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 1 pulled 0");
    let copy = d._dir.path().join("a-copy");
    copy_dir(&d.a, &copy);
    ok(&d.a, &["create", "-n", "2"]);
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 2 pulled 0");

    // The device's folder is put back from the copy; it makes two more.
    ok(&copy, &["create", "-n", "2"]);
    let told = ok(&copy, &["sync"]);
    assert!(told.contains("older copy"), "{told}");
    assert!(told.starts_with("pushed 2 pulled 2"), "{told}");
    ok(&d.b, &["sync"]);
    let all = list(&d.b);
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(list(&copy), all);
}

/// The same with a rename: an older copy of a device renames a galaxy
/// under a mutation id its newer self used for another rename. The cloud
/// keeps a digest of each client's last push and knows a resend from a
/// reused id (before, it skipped the rename as a resend and the device
/// dropped it from its outbox: the new name never left the device, and
/// the next pull did not bring the other one back either).
#[test]
fn a_device_put_back_from_an_older_copy_keeps_its_renames() {
    let cloud = cloud(&[]);
    let d = two_devices(&cloud.base);
    ok(&d.a, &["create", "-n", "2"]);
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 2 pulled 0");
    let ids: Vec<String> = list(&d.a).into_iter().map(|(id, _)| id).collect();
    let copy = d._dir.path().join("a-copy");
    copy_dir(&d.a, &copy);
    ok(&d.a, &["rename", &ids[0], "Newer"]);
    assert_eq!(ok(&d.a, &["sync"]).trim(), "pushed 1 pulled 0");

    // Put back from the copy, the device renames the other galaxy: its
    // mutation 3, as the newer self's rename was.
    ok(&copy, &["rename", &ids[1], "Older"]);
    let told = ok(&copy, &["sync"]);
    assert!(told.contains("older copy"), "{told}");
    ok(&d.b, &["sync"]);
    let names: Vec<String> = list(&d.b).into_iter().map(|(_, name)| name).collect();
    assert_eq!(names, ["Newer", "Older"]);
    assert_eq!(list(&copy), list(&d.b));
}
