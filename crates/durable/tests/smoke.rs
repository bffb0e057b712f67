//! The smallest end-to-end check: fan-out, fan-in and a chain on a real store.

mod common;

use durable::{OrchestrationContext, Registry, RuntimeStatus};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_then_chain_completes() {
    let registry = Registry::new()
        .orchestration("Hello", |ctx: OrchestrationContext, n: u32| async move {
            let a = ctx.call_activity::<u32>("Double", n);
            let b = ctx.call_activity::<u32>("Double", n + 1);
            let (a, b) = futures::join!(a, b);
            let c: u32 = ctx.call_activity("Double", a? + b?).await?;
            Ok::<_, durable::TaskError>(c)
        })
        .activity(
            "Double",
            |_ctx, n: u32| async move { Ok::<_, String>(n * 2) },
        );
    let t = common::start(registry);
    let status = t.run("Hello", json!(3)).await;
    assert_eq!(
        status.runtime_status,
        RuntimeStatus::Completed,
        "{status:?}"
    );
    assert_eq!(status.output, Some(json!(28)));
    let full = t
        .engine
        .status(&status.instance_id, true)
        .await
        .unwrap()
        .unwrap();
    let kinds: Vec<_> = full
        .history
        .unwrap()
        .iter()
        .map(|e| e.kind.type_name())
        .collect();
    assert_eq!(kinds.first(), Some(&"OrchestratorStarted"));
    assert_eq!(kinds.last(), Some(&"ExecutionCompleted"));
    assert_eq!(kinds.iter().filter(|k| **k == "TaskScheduled").count(), 3);
}
