//! The galaxy workload end to end on a real engine, and the galaxies table.

use std::time::Duration;

use chrono::Utc;
use durable::RuntimeStatus;
use galaxy::{Coords, Galaxy, GalaxyTable, LocalConfig, LocalNode, TableError, GALAXY_CREATE};

fn galaxy(row_key: &str, name: &str) -> Galaxy {
    Galaxy {
        partition_key: "galaxies".into(),
        row_key: row_key.into(),
        timestamp: Utc::now(),
        name: name.into(),
        coords: Coords { x: 1, y: 2, z: 3 },
        instance_id: format!("i-{row_key}"),
        version: 0,
        origin: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn galaxy_create_writes_one_row_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let node = LocalNode::open(dir.path(), LocalConfig::default()).unwrap();
    let id = node
        .engine
        .start_orchestration(GALAXY_CREATE, None, serde_json::json!({"from": "test"}))
        .await
        .unwrap();
    let status = node
        .engine
        .wait_for_completion(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(serde_json::json!("Galaxy created!")));
    let history = node
        .engine
        .status(&id, true)
        .await
        .unwrap()
        .unwrap()
        .history
        .unwrap();
    let scheduled: Vec<_> = history
        .iter()
        .filter_map(|e| match &e.kind {
            durable::EventKind::TaskScheduled { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    // Coords and Name are scheduled in the same turn (fan-out), Impl after both.
    assert_eq!(
        scheduled,
        ["Utility_Coords", "Utility_Name", "Galaxy_Create_Impl"]
    );
    let rows = node.table.list(None, 10, None).unwrap().galaxies;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].instance_id, id.to_string());
    assert!(!rows[0].name.is_empty());
    assert!(rows[0].coords.x.abs() <= galaxy::coords::EXTENT);
    let again = node
        .table
        .get(&rows[0].partition_key, &rows[0].row_key)
        .unwrap();
    assert_eq!(again.as_ref(), Some(&rows[0]));
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_insert_of_the_same_galaxy_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let table = GalaxyTable::open(dir.path().join("g.db"), true).unwrap();
    assert!(table.insert(galaxy("k1", "Vega")).await.unwrap());
    let mut renamed = galaxy("k1", "Other");
    renamed.coords.x = 99;
    assert!(!table.insert(renamed).await.unwrap());
    assert_eq!(table.count().unwrap(), 1);
    assert_eq!(table.get("galaxies", "k1").unwrap().unwrap().name, "Vega");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_in_key_order_and_filters_by_name_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let table = GalaxyTable::open(dir.path().join("g.db"), true).unwrap();
    let inserts: Vec<_> = (0..25)
        .map(|i| {
            table.insert(galaxy(
                &format!("k{i:02}"),
                if i % 5 == 0 { "Andromeda" } else { "Kestrel" },
            ))
        })
        .collect();
    for r in futures::future::join_all(inserts).await {
        assert!(r.unwrap());
    }
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = table.list(None, 10, token.as_deref()).unwrap();
        assert!(page.galaxies.len() <= 10);
        seen.extend(page.galaxies.into_iter().map(|g| g.row_key));
        token = page.continuation;
        if token.is_none() {
            break;
        }
    }
    let expected: Vec<_> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(seen, expected);
    let andromeda = table.list(Some("Andro"), 100, None).unwrap();
    assert_eq!(andromeda.galaxies.len(), 5);
    assert!(andromeda.galaxies.iter().all(|g| g.name == "Andromeda"));
    assert!(matches!(
        table.list(None, 10, Some("no-separator")),
        Err(TableError::BadContinuation)
    ));
}

#[test]
fn a_file_that_is_not_ours_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE players (id TEXT); INSERT INTO players VALUES ('x');")
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = GalaxyTable::open(&path, true).unwrap_err();
    assert!(matches!(err, TableError::Incompatible(_)), "{err}");
    assert!(err.to_string().contains("not a galaxies database"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"this is not sqlite at all, just some bytes........").unwrap();
    let before = std::fs::read(&junk).unwrap();
    assert!(matches!(
        GalaxyTable::open(&junk, true),
        Err(TableError::Incompatible(_))
    ));
    assert_eq!(std::fs::read(&junk).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_the_old_name_index_keeps_its_rows_and_loses_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("galaxies.db");
    {
        let table = GalaxyTable::open(&path, true).unwrap();
        assert!(table.insert(galaxy("a", "Andromeda")).await.unwrap());
        table.close();
    }
    // What earlier versions created beside the table.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE INDEX galaxies_by_name ON galaxies(name);")
        .unwrap();
    drop(conn);

    let table = GalaxyTable::open(&path, true).unwrap();
    assert_eq!(table.count().unwrap(), 1);
    assert!(table.get("galaxies", "a").unwrap().is_some());
    table.close();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let indexes: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'galaxies_by_name'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_galaxies_table_locked_for_a_while_delays_galaxy_create_but_does_not_fail_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = LocalNode::open(dir.path(), LocalConfig::default()).unwrap();
    // Another process holds the table's write lock past its busy timeout.
    let lock = rusqlite::Connection::open(dir.path().join("galaxies.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let id = node
        .engine
        .start_orchestration(GALAXY_CREATE, None, serde_json::json!({}))
        .await
        .unwrap();
    let impl_failed = |history: &[durable::HistoryEvent]| {
        history
            .iter()
            .any(|e| matches!(&e.kind, durable::EventKind::TaskFailed { .. }))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = node.engine.status(&id, true).await.unwrap().unwrap();
        if impl_failed(status.history.as_deref().unwrap_or_default()) {
            assert_eq!(status.runtime_status, RuntimeStatus::Running, "{status:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed attempt: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The lock goes; the retry (after its durable timer) writes the galaxy.
    lock.execute_batch("ROLLBACK").unwrap();
    let status = node
        .engine
        .wait_for_completion(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    let history = node
        .engine
        .status(&id, true)
        .await
        .unwrap()
        .unwrap()
        .history
        .unwrap();
    let kinds: Vec<&str> = history
        .iter()
        .filter_map(|e| match &e.kind {
            durable::EventKind::TaskScheduled { name, .. } if name == "Galaxy_Create_Impl" => {
                Some("scheduled")
            }
            durable::EventKind::TaskFailed { .. } => Some("failed"),
            durable::EventKind::TimerFired { .. } => Some("timer"),
            _ => None,
        })
        .collect();
    assert_eq!(
        &kinds[..4],
        ["scheduled", "failed", "timer", "scheduled"],
        "{kinds:?}"
    );
    assert_eq!(node.table.list(None, 10, None).unwrap().galaxies.len(), 1);
    node.shutdown(Duration::from_secs(5)).await;
}
