//! Several processes on one PostgreSQL database create the same topic at
//! once (every galaxy-cloud creates the system topic when it starts):
//! each gets the topic, none fails.

use durable::testing::PgCluster;
use eventgrid::{RouterStore, Schema};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_creating_the_same_topic_at_once_all_get_it() {
    const PROCESSES: usize = 8;
    const ROUNDS: usize = 25;
    let url = PgCluster::shared().create_database().await.unwrap();
    let mut stores = Vec::new();
    for _ in 0..PROCESSES {
        stores.push(
            RouterStore::connect(&url, "eventgrid", std::time::Duration::from_secs(60))
                .await
                .unwrap(),
        );
    }
    for round in 0..ROUNDS {
        let name = format!("shared-{round}");
        let created = futures::future::join_all(
            stores
                .iter()
                .map(|s| s.put_topic(&name, Some(Schema::EventGridSchema))),
        )
        .await;
        for r in created {
            let topic = r.unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(topic.name, name);
        }
    }
    assert_eq!(stores[0].topics().await.unwrap().len(), ROUNDS);
}
