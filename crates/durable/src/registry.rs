//! Orchestrations and activities registered by name, with typed inputs and
//! outputs stored as JSON.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::context::OrchestrationContext;
use crate::types::{FailureDetails, InstanceId};

pub(crate) type OrchestratorFn = Arc<
    dyn Fn(OrchestrationContext, Value) -> BoxFuture<'static, Result<Value, FailureDetails>>
        + Send
        + Sync,
>;
pub(crate) type ActivityFn = Arc<
    dyn Fn(ActivityContext, Value) -> BoxFuture<'static, Result<Value, FailureDetails>>
        + Send
        + Sync,
>;

/// What an activity knows about the call it serves.
#[derive(Clone, Debug)]
pub struct ActivityContext {
    /// The calling instance.
    pub instance_id: InstanceId,
    /// Its execution.
    pub execution_id: String,
    /// The task id; with the two above, a stable idempotency key for side
    /// effects of an activity that may run more than once.
    pub task_id: u64,
    /// The activity name.
    pub name: String,
    /// 1 on the first delivery, more after a lease expired.
    pub attempt: u32,
}

/// The named functions an engine can run.
#[derive(Clone, Default)]
pub struct Registry {
    pub(crate) orchestrations: HashMap<String, OrchestratorFn>,
    pub(crate) activities: HashMap<String, ActivityFn>,
}

fn decode<I: DeserializeOwned>(what: &str, input: Value) -> Result<I, FailureDetails> {
    serde_json::from_value(input)
        .map_err(|e| FailureDetails::new("InvalidInput", format!("{what} input: {e}")))
}

fn encode<O: Serialize>(out: O) -> Result<Value, FailureDetails> {
    serde_json::to_value(out)
        .map_err(|e| FailureDetails::new("InvalidOutput", format!("output: {e}")))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an orchestrator. Its input is decoded from JSON; a mismatch
    /// fails the instance with an `InvalidInput` error.
    pub fn orchestration<I, O, E, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let f = Arc::new(f);
        let label = format!("orchestration '{name}'");
        let func: OrchestratorFn = Arc::new(move |ctx, input| {
            let f = f.clone();
            let decoded = decode::<I>(&label, input);
            async move {
                let out = f(ctx, decoded?)
                    .await
                    .map_err(|e| FailureDetails::new("OrchestrationFailed", e.to_string()))?;
                encode(out)
            }
            .boxed()
        });
        self.orchestrations.insert(name.to_string(), func);
        self
    }

    /// Registers an activity.
    pub fn activity<I, O, E, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
    {
        let f = Arc::new(f);
        let label = format!("activity '{name}'");
        let func: ActivityFn = Arc::new(move |ctx, input| {
            let f = f.clone();
            let decoded = decode::<I>(&label, input);
            async move {
                let out = f(ctx, decoded?)
                    .await
                    .map_err(|e| FailureDetails::new("ActivityFailed", e.to_string()))?;
                encode(out)
            }
            .boxed()
        });
        self.activities.insert(name.to_string(), func);
        self
    }

    /// True when an orchestration of this name is registered.
    pub fn has_orchestration(&self, name: &str) -> bool {
        self.orchestrations.contains_key(name)
    }

    /// The registered orchestration `name` names: itself, or else the one
    /// whose name differs only in ASCII case.
    pub fn orchestration_named(&self, name: &str) -> Option<&str> {
        match self.orchestrations.get_key_value(name) {
            Some((k, _)) => Some(k.as_str()),
            None => self
                .orchestrations
                .keys()
                .find(|k| k.eq_ignore_ascii_case(name))
                .map(String::as_str),
        }
    }

    /// Registered orchestration names, sorted.
    pub fn orchestration_names(&self) -> Vec<String> {
        let mut v: Vec<_> = self.orchestrations.keys().cloned().collect();
        v.sort();
        v
    }
}
