//! The monitor on a real node: the update stream becomes whole views and
//! galaxy notifications, including for instances it never saw created.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use durable::store::NewInstance;
use durable::{InstanceId, RuntimeStatus, SqliteStore, Store};
use galaxy::monitor::{self, LiveSink};
use galaxy::view::TaskState;
use galaxy::{Galaxy, InstanceView, LocalConfig, LocalNode, GALAXY_CREATE};
use tokio::sync::Notify;

#[derive(Default)]
struct Seen {
    views: Vec<InstanceView>,
    galaxies: Vec<Galaxy>,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

impl LiveSink for Recorder {
    fn instance(&self, view: &InstanceView) {
        self.seen.lock().unwrap().views.push(view.clone());
        self.changed.notify_waiters();
    }
    fn galaxy(&self, galaxy: &Galaxy) {
        self.seen.lock().unwrap().galaxies.push(galaxy.clone());
        self.changed.notify_waiters();
    }
    fn resync(&self) {}
}

impl Recorder {
    /// Waits (with a deadline) until `done` holds for what was seen.
    async fn wait_until(&self, done: impl Fn(&Seen) -> bool) {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if done(&self.seen.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("condition not reached within 30 s");
    }
}

fn completed(seen: &Seen, id: &str) -> bool {
    seen.views
        .iter()
        .any(|v| v.instance_id == id && v.runtime_status == RuntimeStatus::Completed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_as_a_whole_view_and_the_galaxy_follows() {
    let dir = tempfile::tempdir().unwrap();
    let node = LocalNode::open(dir.path(), LocalConfig::default()).unwrap();
    let sink = Recorder::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(monitor::forward(
        node.engine.clone(),
        node.table.clone(),
        node.engine.subscribe(),
        sink.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let id = node
        .engine
        .start_orchestration(GALAXY_CREATE, None, ())
        .await
        .unwrap();
    sink.wait_until(|s| completed(s, id.as_str()) && !s.galaxies.is_empty())
        .await;

    let (last, galaxy) = {
        let seen = sink.seen.lock().unwrap();
        let statuses: Vec<_> = seen.views.iter().map(|v| v.runtime_status).collect();
        assert_eq!(statuses.first(), Some(&RuntimeStatus::Pending));
        assert_eq!(statuses.last(), Some(&RuntimeStatus::Completed));
        assert!(statuses.contains(&RuntimeStatus::Running), "{statuses:?}");
        let versions: Vec<_> = seen.views.iter().map(|v| v.version).collect();
        assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
        let last = seen.views.last().unwrap().clone();
        let tasks: Vec<_> = last
            .tasks
            .iter()
            .map(|t| (t.name.as_str(), t.state))
            .collect();
        assert_eq!(
            tasks,
            vec![
                ("Utility_Coords", TaskState::Completed),
                ("Utility_Name", TaskState::Completed),
                ("Galaxy_Create_Impl", TaskState::Completed),
            ]
        );
        let galaxy = seen.galaxies[0].clone();
        assert_eq!(galaxy.instance_id, id.as_str());
        assert_eq!(Some(&galaxy.name), last.galaxy.as_ref().map(|g| &g.name));
        (last, galaxy)
    };

    // The views the queries return agree with the streamed one.
    let listed = monitor::recent_instances(&node.engine, vec![], 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].timeline, last.timeline);
    assert_eq!(
        monitor::all_galaxies(&node.table, 100).unwrap(),
        vec![galaxy]
    );
    let _ = stop_tx.send(());
    task.await.unwrap();
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_left_unfinished_is_read_back_and_followed_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    // An instance created by a process that died before running it.
    let id = InstanceId::new("left-behind").unwrap();
    {
        let store = SqliteStore::open(dir.path().join("engine.db")).unwrap();
        store
            .create_instance(NewInstance {
                instance_id: id.clone(),
                name: GALAXY_CREATE.into(),
                input: serde_json::Value::Null,
                execution_id: "e1".into(),
                parent: None,
                created_at: durable::types::now(),
                only_if_absent: false,
            })
            .await
            .unwrap();
        store.close();
    }
    let node = LocalNode::open(dir.path(), LocalConfig::default()).unwrap();
    let sink = Recorder::default();
    let updates = node.engine.subscribe();
    let (_stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(monitor::forward(
        node.engine.clone(),
        node.table.clone(),
        updates,
        sink.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let status = node
        .engine
        .wait_for_completion(&id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status.runtime_status, RuntimeStatus::Completed);
    if sink.seen.lock().unwrap().views.is_empty() {
        // The engine finished it before the subscription: nothing to follow.
        // The query path still shows it complete.
        let view = monitor::instance(&node.engine, &id).await.unwrap().unwrap();
        assert_eq!(view.tasks.len(), 3);
    } else {
        sink.wait_until(|s| completed(s, "left-behind")).await;
        let seen = sink.seen.lock().unwrap();
        let last = seen.views.last().unwrap();
        // Whole history, although the creation happened in another process.
        assert_eq!(last.timeline.first().unwrap().event_id, 0);
        assert!(last.timeline.iter().any(|e| e.kind == "ExecutionStarted"));
        assert_eq!(last.tasks.len(), 3);
        assert_eq!(seen.galaxies.len(), 1);
    }
    node.shutdown(Duration::from_secs(5)).await;
}
