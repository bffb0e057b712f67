//! The sync protocol between real device replicas (tracked galaxies tables
//! in SQLite files) and the cloud's real players store, with the round of
//! `sync::round` in between. No HTTP here (tests/sync.rs at the root runs
//! it through galaxy-cloud); this pins down the data rules.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use galaxy::players::{Device, Players, PlayersError};
use galaxy::{Coords, Galaxy, GalaxyReplica, GalaxyTable};
use sync::protocol::{Chain, Mutation, MutationStatus, PullResponse, PushRequest, PushResponse};
use sync::{run_round, Replica, RoundReport, Transport, TransportError};

/// The players store as a device's transport, in-process.
struct Direct {
    players: Players,
    device: Device,
}

fn map(e: PlayersError) -> TransportError {
    match e {
        PlayersError::ClientStateNotFound(m) => TransportError::ClientStateNotFound(m),
        e @ PlayersError::MutationGap { .. } => TransportError::MutationGap(e.to_string()),
        e @ PlayersError::MutationIdReused(_) => TransportError::MutationIdReused(e.to_string()),
        PlayersError::Unauthorized => TransportError::Unauthorized("revoked".into()),
        e => TransportError::Refused {
            status: 400,
            code: "Invalid".into(),
            message: e.to_string(),
        },
    }
}

impl Transport for Direct {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, TransportError> {
        self.players
            .push(&self.device, request.clone())
            .await
            .map_err(map)
    }

    async fn pull(
        &self,
        client_id: &str,
        cursor: u64,
        chain: Chain,
        limit: Option<usize>,
    ) -> Result<PullResponse, TransportError> {
        self.players
            .pull(&self.device, client_id, cursor, chain, limit)
            .await
            .map_err(map)
    }
}

struct Phone {
    replica: GalaxyReplica,
    link: Direct,
    _dir: tempfile::TempDir,
}

impl Phone {
    fn new(players: &Players, device: Device) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let table =
            Arc::new(GalaxyTable::open_tracked(dir.path().join("galaxies.db"), true).unwrap());
        Self {
            replica: GalaxyReplica::new(table),
            link: Direct {
                players: players.clone(),
                device,
            },
            _dir: dir,
        }
    }

    async fn create(&self, name: &str) -> String {
        let id = uuid::Uuid::now_v7().to_string();
        let g = Galaxy {
            partition_key: "galaxies".into(),
            row_key: id.clone(),
            timestamp: Utc::now(),
            name: name.into(),
            coords: Coords {
                x: 10,
                y: -20,
                z: 3,
            },
            instance_id: format!("inst-{id}"),
            version: 0,
            origin: String::new(),
        };
        assert!(self.replica.table().insert(g).await.unwrap());
        id
    }

    async fn sync(&self) -> RoundReport {
        run_round(&self.replica, &self.link, 500, |_| {})
            .await
            .unwrap()
    }

    fn all(&self) -> Vec<Galaxy> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .replica
                .table()
                .list(None, 1000, token.as_deref())
                .unwrap();
            all.extend(page.galaxies);
            match page.continuation {
                Some(t) => token = Some(t),
                None => return all,
            }
        }
    }

    fn names(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .all()
            .into_iter()
            .map(|g| (g.row_key, g.name))
            .collect();
        v.sort();
        v
    }
}

async fn player() -> (tempfile::TempDir, Players, Device, Device) {
    let dir = tempfile::tempdir().unwrap();
    let players = Players::open(dir.path().join("players.db")).unwrap();
    let (players, a, b) = two_devices_of_one_player(players).await;
    (dir, players, a, b)
}

async fn two_devices_of_one_player(players: Players) -> (Players, Device, Device) {
    let a = players.register(Some("laptop")).await.unwrap();
    let code = players
        .create_link_code(&players.authenticate(&a.token).await.unwrap())
        .await
        .unwrap();
    let b = players
        .join(&code.code.to_lowercase(), Some("phone"))
        .await
        .unwrap();
    assert_eq!(a.player_id, b.player_id);
    let a = players.authenticate(&a.token).await.unwrap();
    let b = players.authenticate(&b.token).await.unwrap();
    (players, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn galaxies_made_on_one_device_reach_the_other_once_marked_with_their_origin() {
    let (_d, players, a, b) = player().await;
    let (pa, pb) = (Phone::new(&players, a.clone()), Phone::new(&players, b));
    for n in ["Vega", "Altair", "Deneb"] {
        pa.create(n).await;
    }
    assert_eq!(pa.replica.pending_count(), 3);
    let r = pa.sync().await;
    assert_eq!((r.pushed, r.notices.len()), (3, 0));
    assert_eq!(pa.replica.pending_count(), 0);
    let r = pb.sync().await;
    assert_eq!(r.pulled, 3);
    assert_eq!(pa.names(), pb.names());
    let g = pb.all();
    assert!(
        g.iter().all(|g| g.origin == "laptop" && g.version > 0),
        "{g:?}"
    );
    // Nothing more to move either way, and the cloud holds three.
    assert_eq!(
        pa.sync().await,
        RoundReport {
            pushed: 0,
            pulled: 0,
            notices: vec![]
        }
    );
    assert_eq!(players.galaxy_count(&a.player_id).await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_beats_a_concurrent_rename_and_both_devices_converge_with_a_notice() {
    let (_d, players, a, b) = player().await;
    let (pa, pb) = (Phone::new(&players, a), Phone::new(&players, b));
    let id = pa.create("Vega").await;
    pa.sync().await;
    pb.sync().await;
    pb.replica.delete(&id).await.unwrap();
    pa.replica.rename(&id, "Vega Prime").await.unwrap();
    pb.sync().await;
    let r = pa.sync().await;
    assert_eq!(r.notices.len(), 1, "{r:?}");
    assert!(r.notices[0].contains("deleted on another device"), "{r:?}");
    assert!(
        pa.names().is_empty(),
        "the tombstone came back: {:?}",
        pa.names()
    );
    assert!(pb.names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_renames_end_in_the_servers_order_with_a_conflict_reported() {
    let (_d, players, a, b) = player().await;
    let (pa, pb) = (Phone::new(&players, a), Phone::new(&players, b));
    let id = pa.create("Vega").await;
    pa.sync().await;
    pb.sync().await;
    pa.replica.rename(&id, "From A").await.unwrap();
    pb.replica.rename(&id, "From B").await.unwrap();
    assert!(pa.sync().await.notices.is_empty());
    let r = pb.sync().await;
    assert!(
        r.notices.iter().any(|n| n.contains("also changed")),
        "{r:?}"
    );
    pa.sync().await;
    assert_eq!(pa.names(), vec![(id.clone(), "From B".to_string())]);
    assert_eq!(pb.names(), pa.names());
}

fn put(id: u64, entity: &str, name: &str) -> Mutation {
    Mutation {
        mutation_id: id,
        op: "put".into(),
        entity_id: entity.into(),
        base_version: 0,
        body: serde_json::json!({
            "name": name, "coords": {"x": 1, "y": 2, "z": 3},
            "createdAt": "2026-12-01T00:00:00Z", "instanceId": "i"
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_push_is_skipped_a_gap_applies_nothing_and_bad_mutations_do_not_wedge() {
    let (_d, players, a, _b) = player().await;
    let e1 = uuid::Uuid::now_v7().to_string();
    let e2 = uuid::Uuid::now_v7().to_string();
    let first = PushRequest {
        client_id: "client-1".into(),
        mutations: vec![put(1, &e1, "One"), put(2, &e2, "Two")],
    };
    let r = players.push(&a, first.clone()).await.unwrap();
    assert_eq!(r.last_mutation_id, 2);
    assert!(r
        .results
        .iter()
        .all(|m| m.status == MutationStatus::Applied));
    // The answer was lost; the client sends the same batch again.
    let again = players.push(&a, first).await.unwrap();
    assert!(again
        .results
        .iter()
        .all(|m| m.status == MutationStatus::Skipped));
    let pulled = players
        .pull(&a, "client-1", 0, Chain::Resumed, None)
        .await
        .unwrap();
    // Its own writes are not sent back to it; the cursor passes them.
    assert_eq!(
        (pulled.changes.len(), pulled.cursor, pulled.last_mutation_id),
        (0, 2, 2)
    );
    let other = players
        .pull(&a, "client-2", 0, Chain::Resumed, None)
        .await
        .unwrap();
    assert_eq!(
        (other.changes.len(), other.latest, other.last_mutation_id),
        (2, 2, 0)
    );

    let gap = players
        .push(
            &a,
            PushRequest {
                client_id: "client-1".into(),
                mutations: vec![put(4, &e1, "Four")],
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            gap,
            PlayersError::MutationGap {
                expected: 3,
                got: 4
            }
        ),
        "{gap}"
    );
    let unknown = players
        .push(
            &a,
            PushRequest {
                client_id: "client-2".into(),
                mutations: vec![put(7, &e1, "x")],
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, PlayersError::ClientStateNotFound(_)),
        "{unknown}"
    );

    let mut bad_op = put(4, &e1, "x");
    bad_op.op = "explode".into();
    let r = players
        .push(
            &a,
            PushRequest {
                client_id: "client-1".into(),
                mutations: vec![
                    put(3, "NOT-A-UUID", "x"),
                    bad_op,
                    put(5, &e2, &"n".repeat(81)),
                    put(6, &e2, "Fine"),
                ],
            },
        )
        .await
        .unwrap();
    let statuses: Vec<_> = r.results.iter().map(|m| m.status).collect();
    use MutationStatus::*;
    assert_eq!(statuses, vec![Rejected, Rejected, Rejected, Applied]);
    assert_eq!(r.last_mutation_id, 6);
    assert!(
        r.results[2].reason.as_deref().unwrap().contains("80"),
        "{r:?}"
    );
    assert_eq!(
        players
            .pull(&a, "client-1", 0, Chain::Resumed, None)
            .await
            .unwrap()
            .last_mutation_id,
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_cloud_forgot_renumbers_and_its_changes_still_arrive_once() {
    let (_d, players, a, b) = player().await;
    let pa = Phone::new(&players, a.clone());
    pa.create("Early").await;
    pa.sync().await;
    // A client id the cloud never saw, with outbox ids that do not start at 1.
    pa.create("Late").await;
    pa.replica.renumber().await.unwrap();
    pa.create("Later").await;
    {
        let st = pa.replica.state().await.unwrap();
        let pending = pa.replica.pending(10).await.unwrap();
        assert_eq!(
            pending.iter().map(|m| m.mutation_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_ne!(st.client_id, "");
    }
    // Another player's device cannot use this client id.
    let other = players.register(Some("stranger")).await.unwrap();
    let other = players.authenticate(&other.token).await.unwrap();
    let st = pa.replica.state().await.unwrap();
    let pending = pa.replica.pending(10).await.unwrap();
    players
        .push(
            &a,
            PushRequest {
                client_id: st.client_id.clone(),
                mutations: pending.clone(),
            },
        )
        .await
        .unwrap();
    let stolen = players
        .push(
            &other,
            PushRequest {
                client_id: st.client_id,
                mutations: pending,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(stolen, PlayersError::ClientStateNotFound(_)));
    let pb = Phone::new(&players, b);
    pb.sync().await;
    assert_eq!(pb.names().len(), 3);
    assert_eq!(players.galaxy_count(&other.player_id).await.unwrap(), 0);
    assert!(players
        .pull(&other, "x", 0, Chain::Resumed, None)
        .await
        .unwrap()
        .changes
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pulls_come_in_pages_and_old_cursors_get_a_reset() {
    let (_d, players, a, b) = player().await;
    let pa = Phone::new(&players, a.clone());
    for i in 0..1200 {
        pa.create(&format!("G{i}")).await;
    }
    let r = pa.sync().await;
    assert_eq!(r.pushed, 1200);
    let page = players
        .pull(&b, "c", 0, Chain::Resumed, Some(1000))
        .await
        .unwrap();
    assert!(page.has_more && page.changes.len() == 1000 && page.latest == 1200);
    let rest = players
        .pull(&b, "c", page.cursor, Chain::Resumed, Some(5000))
        .await
        .unwrap();
    assert!(!rest.has_more && rest.changes.len() == 200 && rest.cursor == 1200);

    let pb = Phone::new(&players, b.clone());
    let mut seen = Vec::new();
    let r = run_round(&pb.replica, &pb.link, 500, |p| seen.push(p))
        .await
        .unwrap();
    assert_eq!(r.pulled, 1200);
    assert_eq!(seen.len(), 3, "500 + 500 + 200: {seen:?}");
    assert_eq!(seen.last().unwrap().cursor, 1200);

    // A deletes one; the tombstone outlives no retention; B, still at 1200,
    // is below the floor and starts over.
    let victim = pa.names()[0].0.clone();
    pa.replica.delete(&victim).await.unwrap();
    pa.sync().await;
    assert_eq!(players.purge_tombstones(Duration::ZERO).await.unwrap(), 1);
    let stale = players
        .pull(&b, "c", 1200, Chain::Resumed, None)
        .await
        .unwrap();
    assert!(stale.reset);
    // ... but a chain of pages that began at 0 passes below the floor.
    assert!(
        !players
            .pull(&b, "c", 1, Chain::Fresh { latest: None }, None)
            .await
            .unwrap()
            .reset
    );
    let r = pb.sync().await;
    assert!(r.notices.iter().any(|n| n.contains("reloaded")), "{r:?}");
    assert_eq!(pb.names(), pa.names());
    assert_eq!(pb.names().len(), 1199);
    // A cursor beyond anything the cloud has also resets.
    assert!(
        players
            .pull(&b, "c", 999_999, Chain::Resumed, None)
            .await
            .unwrap()
            .reset
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_link_codes_and_revocation() {
    let (_d, players, a, b) = player().await;
    assert!(matches!(
        players.authenticate("gf1.x.y").await,
        Err(PlayersError::Unauthorized)
    ));
    let forged = format!("gf1.{}.{}", a.device_id, "0".repeat(64));
    assert!(matches!(
        players.authenticate(&forged).await,
        Err(PlayersError::Unauthorized)
    ));
    let code = players.create_link_code(&a).await.unwrap();
    let c = players.join(&code.code, None).await.unwrap();
    assert!(players.authenticate(&c.token).await.is_ok());
    assert!(matches!(
        players.join(&code.code, None).await,
        Err(PlayersError::BadLinkCode)
    ));
    assert!(matches!(
        players.join("AAAA-AAAA", None).await,
        Err(PlayersError::BadLinkCode)
    ));
    let me = players.me(&a).await.unwrap();
    assert_eq!(me.devices.len(), 3);
    // Another player cannot revoke this player's device.
    let other = players.register(None).await.unwrap();
    let other = players.authenticate(&other.token).await.unwrap();
    assert!(matches!(
        players.revoke(&other, &b.device_id).await,
        Err(PlayersError::NotFound(_))
    ));
    players.revoke(&a, &b.device_id).await.unwrap();
    players.revoke(&a, &c.device_id).await.unwrap();
    assert!(matches!(
        players.authenticate(&c.token).await,
        Err(PlayersError::Unauthorized)
    ));
    let me = players.me(&a).await.unwrap();
    assert!(me
        .devices
        .iter()
        .any(|d| d.device_id == b.device_id && d.revoked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_must_reset_gets_its_own_galaxies_back() {
    let (_d, players, a, b) = player().await;
    let (pa, pb) = (Phone::new(&players, a), Phone::new(&players, b));
    for i in 0..10 {
        pa.create(&format!("G{i}")).await;
    }
    pa.sync().await;
    pb.sync().await;
    let victim = pb.names()[0].0.clone();
    pb.replica.delete(&victim).await.unwrap();
    pb.sync().await;
    assert_eq!(players.purge_tombstones(Duration::ZERO).await.unwrap(), 1);
    // A's cursor (10) is below the floor (11): it resets, and its own
    // nine galaxies, which it wrote last, come back with the re-pull.
    let r = pa.sync().await;
    assert!(r.notices.iter().any(|n| n.contains("reloaded")), "{r:?}");
    assert_eq!(pa.names().len(), 9);
    assert_eq!(pa.names(), pb.names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_from_a_device_away_past_the_retention_does_not_bring_a_purged_galaxy_back() {
    let (_d, players, a, b) = player().await;
    rename_after_purge(players, a, b).await;
}

/// The same on the PostgreSQL players store (its purge raises the floor
/// and deletes the tombstones in two statements).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_holds_on_postgres_too() {
    let url = durable::testing::PgCluster::shared()
        .create_database()
        .await
        .unwrap();
    let players = Players::connect(&url, "galaxy").await.unwrap();
    let (players, a, b) = two_devices_of_one_player(players).await;
    rename_after_purge(players, a, b).await;
}

async fn rename_after_purge(players: Players, a: Device, b: Device) {
    let (pa, pb) = (Phone::new(&players, a), Phone::new(&players, b));
    let id = pa.create("Vega").await;
    let keep = pa.create("Deneb").await;
    pa.sync().await;
    pb.sync().await;
    // B renames offline; A deletes, and the tombstone is purged.
    pb.replica.rename(&id, "Vega Prime").await.unwrap();
    pa.replica.delete(&id).await.unwrap();
    pa.sync().await;
    assert_eq!(players.purge_tombstones(Duration::ZERO).await.unwrap(), 1);
    // B comes back: its rename is refused, and B loses the galaxy too.
    let r = pb.sync().await;
    assert!(
        r.notices
            .iter()
            .any(|n| n.contains("deleted on another device")),
        "{r:?}"
    );
    let r = pb.sync().await;
    assert!(r.notices.is_empty(), "{r:?}");
    assert_eq!(pb.names(), vec![(keep.clone(), "Deneb".to_string())]);
    pa.sync().await;
    assert_eq!(pa.names(), pb.names(), "the galaxy came back on A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_galaxy_created_and_renamed_offline_syncs_without_a_conflict_notice() {
    let (_d, players, a, b) = player().await;
    let (pa, pb) = (Phone::new(&players, a), Phone::new(&players, b));
    let id = pa.create("Vega").await;
    pa.replica.rename(&id, "Vega Prime").await.unwrap();
    let r = pa.sync().await;
    assert!(r.notices.is_empty(), "{r:?}");
    pb.sync().await;
    assert_eq!(pb.names(), vec![(id, "Vega Prime".to_string())]);
}

/// A link whose pulls fail after the first `pulls` of them.
struct CutOff<'a> {
    link: &'a Direct,
    pulls: std::sync::atomic::AtomicUsize,
}

impl Transport for CutOff<'_> {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, TransportError> {
        self.link.push(request).await
    }

    async fn pull(
        &self,
        client_id: &str,
        cursor: u64,
        chain: Chain,
        limit: Option<usize>,
    ) -> Result<PullResponse, TransportError> {
        let left = self.pulls.load(std::sync::atomic::Ordering::SeqCst);
        if left == 0 {
            return Err(TransportError::Unavailable("the link went down".into()));
        }
        self.pulls
            .store(left - 1, std::sync::atomic::Ordering::SeqCst);
        self.link.pull(client_id, cursor, chain, limit).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_cut_off_half_way_resumes_below_the_floor_without_a_reset() {
    let (_d, players, a, b) = player().await;
    let pa = Phone::new(&players, a);
    for i in 0..1200 {
        pa.create(&format!("G{i}")).await;
    }
    pa.sync().await;
    // A deletion purged since: the floor (1201) is above every page but
    // the last of B's first sync.
    let victim = pa.names()[0].0.clone();
    pa.replica.delete(&victim).await.unwrap();
    pa.sync().await;
    assert_eq!(players.purge_tombstones(Duration::ZERO).await.unwrap(), 1);

    let pb = Phone::new(&players, b);
    let cut = CutOff {
        link: &pb.link,
        pulls: 1.into(),
    };
    let first = run_round(&pb.replica, &cut, 500, |_| {}).await;
    assert!(first.is_err(), "the second page's pull fails");
    assert_eq!(pb.names().len(), 500);
    // The next round goes on from 500, below the floor, as the same chain.
    let r = pb.sync().await;
    assert!(r.notices.is_empty(), "{r:?}");
    assert_eq!(r.pulled, 699);
    assert_eq!(pb.names(), pa.names());
    // Once the chain is complete, a cursor below the floor resets again.
    assert_eq!(pb.replica.state().await.unwrap().chain, Chain::Resumed);
}

/// A first sync cut off half-way, while a galaxy its first page brought is
/// deleted and the deletion purged: when it resumes it resets (before, the
/// chain went on below the floor and the device kept that galaxy for ever,
/// deleted everywhere else).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_purged_while_a_first_sync_was_cut_off_still_reaches_the_device() {
    let (_d, players, a, b) = player().await;
    let pa = Phone::new(&players, a);
    for i in 0..1200 {
        pa.create(&format!("G{i}")).await;
    }
    pa.sync().await;
    let pb = Phone::new(&players, b);
    let cut = CutOff {
        link: &pb.link,
        pulls: 1.into(),
    };
    assert!(run_round(&pb.replica, &cut, 500, |_| {}).await.is_err());
    assert_eq!(pb.names().len(), 500);
    assert_eq!(
        pb.replica.state().await.unwrap().chain,
        Chain::Fresh { latest: Some(1200) }
    );

    let held = pb.names()[0].0.clone();
    pa.replica.delete(&held).await.unwrap();
    pa.sync().await;
    assert_eq!(players.purge_tombstones(Duration::ZERO).await.unwrap(), 1);
    let r = pb.sync().await;
    assert!(r.notices.iter().any(|n| n.contains("reloaded")), "{r:?}");
    assert_eq!(pb.names(), pa.names());
    assert_eq!(pb.names().len(), 1199);
    assert!(!pb.names().iter().any(|(k, _)| *k == held));
}

/// A link whose push reaches the cloud but whose answer is lost.
struct LostAnswer<'a>(&'a Direct);

impl Transport for LostAnswer<'_> {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, TransportError> {
        self.0.push(request).await?;
        Err(TransportError::Unavailable("the answer was lost".into()))
    }

    async fn pull(
        &self,
        client_id: &str,
        cursor: u64,
        chain: Chain,
        limit: Option<usize>,
    ) -> Result<PullResponse, TransportError> {
        self.0.pull(client_id, cursor, chain, limit).await
    }
}

/// A create whose answer was lost, deleted on another device before it
/// was sent again, its deletion purged before the creator pulled it: the
/// resend is settled without a version (another device wrote last). The
/// creator must still count the galaxy as synced, so a reset drops it;
/// before, it stayed as never synced (version 0), for ever, and a rename
/// pushed it to the cloud as a new galaxy, back on every device.
/// `pulled_before`: whether the creator had completed a pull before (its
/// cursor is past 0) or never had.
async fn a_lost_create_deleted_elsewhere_and_purged(pulled_before: bool) {
    let (_d, players, a, b) = player().await;
    let (pa, pb) = (Phone::new(&players, a), Phone::new(&players, b));
    let mut kept = Vec::new();
    if pulled_before {
        let altair = pa.create("Altair").await;
        pa.sync().await;
        assert!(pa.replica.state().await.unwrap().cursor > 0);
        kept.push((altair, "Altair".to_string()));
    }
    let vega = pa.create("Vega").await;
    let deneb = pa.create("Deneb").await;
    kept.push((deneb, "Deneb".to_string()));
    kept.sort();
    let lossy = LostAnswer(&pa.link);
    assert!(run_round(&pa.replica, &lossy, 500, |_| {}).await.is_err());

    pb.sync().await;
    pb.replica.delete(&vega).await.unwrap();
    pb.sync().await;
    // A sends its creates again (settled: skipped), and its pull fails.
    let cut = CutOff {
        link: &pa.link,
        pulls: 0.into(),
    };
    assert!(run_round(&pa.replica, &cut, 500, |_| {}).await.is_err());
    assert_eq!(pa.replica.pending_count(), 0, "the resend was settled");
    assert_eq!(players.purge_tombstones(Duration::ZERO).await.unwrap(), 1);

    let r = pa.sync().await;
    assert!(r.notices.iter().any(|n| n.contains("reloaded")), "{r:?}");
    assert_eq!(pa.names(), kept);
    assert!(pa.replica.rename(&vega, "Vega Prime").await.is_err());
    pa.sync().await;
    pb.sync().await;
    assert_eq!(pb.names(), pa.names());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_resent_after_its_galaxy_was_deleted_elsewhere_does_not_come_back() {
    a_lost_create_deleted_elsewhere_and_purged(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_on_a_device_that_never_completed_a_pull() {
    a_lost_create_deleted_elsewhere_and_purged(false).await;
}
