//! The PostgreSQL galaxies table against a throwaway cluster: the same
//! semantics as the SQLite table (a row is written once however often, and
//! from however many processes, the activity runs), paging and name prefix,
//! and a refusal of a `galaxies` table of another shape.

use std::collections::HashSet;

use durable::testing::PgCluster;
use galaxy::{Coords, Galaxies, Galaxy, PgGalaxyTable, TableError};

fn galaxy(row_key: &str, name: &str, instance: &str) -> Galaxy {
    Galaxy {
        partition_key: "galaxies".into(),
        row_key: row_key.into(),
        timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_123).unwrap(),
        name: name.into(),
        coords: Coords { x: 1, y: -2, z: 3 },
        instance_id: instance.into(),
        version: 0,
        origin: String::new(),
    }
}

/// Two handles (two processes) insert the same rows concurrently: each row
/// lands once and exactly one insert reports writing it; rows read back
/// equal to what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_written_once_across_handles() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let (a, b) = tokio::join!(
        PgGalaxyTable::connect(&url, "galaxy", 4),
        PgGalaxyTable::connect(&url, "galaxy", 4)
    );
    let (a, b): (Galaxies, Galaxies) = (
        std::sync::Arc::new(a.unwrap()).into(),
        std::sync::Arc::new(b.unwrap()).into(),
    );
    let rows: Vec<Galaxy> = (0..50)
        .map(|i| galaxy(&format!("rk{i:03}"), &format!("Name {i}"), &format!("i{i}")))
        .collect();
    let writes = rows
        .iter()
        .flat_map(|g| [a.insert(g.clone()), b.insert(g.clone())]);
    let wrote = futures::future::join_all(writes).await;
    let wrote: Vec<bool> = wrote.into_iter().map(Result::unwrap).collect();
    for pair in wrote.chunks(2) {
        assert_eq!(pair.iter().filter(|w| **w).count(), 1, "{pair:?}");
    }
    assert_eq!(a.count().await.unwrap(), 50);
    assert!(b.duplicate_instances().await.unwrap().is_empty());
    assert_eq!(
        a.get("galaxies", "rk007").await.unwrap(),
        Some(rows[7].clone())
    );
    assert_eq!(a.get("galaxies", "nope").await.unwrap(), None);

    // Pages of 20 in key order, each row once; a name prefix filters.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = b.list(None, 20, token.as_deref()).await.unwrap();
        seen.extend(page.galaxies.into_iter().map(|g| g.row_key));
        token = page.continuation;
        if token.is_none() {
            break;
        }
    }
    let expected: Vec<String> = rows.iter().map(|g| g.row_key.clone()).collect();
    assert_eq!(seen, expected);
    let ones = a.list(Some("Name 1"), 100, None).await.unwrap();
    let names: HashSet<String> = ones.galaxies.into_iter().map(|g| g.name).collect();
    let want: HashSet<String> = ["Name 1".to_string()]
        .into_iter()
        .chain((10..20).map(|i| format!("Name {i}")))
        .collect();
    assert_eq!(names, want);
    let r = a.list(None, 10, Some("no-separator")).await;
    assert!(matches!(r, Err(TableError::BadContinuation)), "{r:?}");

    // One handle given the same row twice at once (inserts that arrive
    // together share a statement): written once, reported once.
    let again = galaxy("rk-twice", "Twice", "i-twice");
    let twice = futures::future::join_all([a.insert(again.clone()), a.insert(again.clone())]).await;
    let twice: Vec<bool> = twice.into_iter().map(Result::unwrap).collect();
    assert_eq!(twice, [true, false]);
    assert_eq!(a.get("galaxies", "rk-twice").await.unwrap(), Some(again));
    a.close();
    b.close();
}

/// A `galaxies` table of another shape in the schema is refused, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_galaxies_table_is_refused() {
    let url = PgCluster::shared().create_database().await.unwrap();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE SCHEMA galaxy; CREATE TABLE galaxy.galaxies (id int)")
        .await
        .unwrap();
    let r = PgGalaxyTable::connect(&url, "galaxy", 2).await;
    assert!(
        matches!(&r, Err(TableError::Incompatible(m)) if m.contains("not a galaxies table")),
        "{r:?}"
    );
    let columns: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_schema = 'galaxy' AND table_name = 'galaxies'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 1, "the foreign table was changed");
}
