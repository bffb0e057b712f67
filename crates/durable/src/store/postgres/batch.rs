//! Turn commits of several instances in one transaction.
//!
//! A turn's commit alone costs a transaction of its own and four or five
//! statements (status with history, consumed messages, new activities, the
//! due time, lifecycle rows), and on a small server each statement's fixed
//! cost (executor start, a round trip, a wake-up) is most of PostgreSQL's
//! CPU per Galaxy_Create. Turns that finish at the same moment (a fetch
//! hands out many instances at once, and they run side by side) are queued
//! here; whichever commit call runs next takes them all and commits them
//! together with one statement per kind, over arrays, so the fixed costs
//! are paid once per batch instead of once per turn.
//!
//! - **Which turns.** Only turns that write their own instance's rows:
//!   no sends to other instances, no sub-orchestrations, no replaced
//!   history (those lock other instances' rows or delete first; they keep
//!   the one-turn path, [`PostgresStore::commit_single`]). A batch of one
//!   takes that path too.
//! - **Lease check and lock order.** The first statement locks the batch's
//!   instance rows in id order, as the batched activity completion does, so
//!   the two cannot deadlock, and returns only the rows still leased under
//!   the turns' tokens: a turn whose lease was lost gets
//!   [`StoreError::LeaseLost`] and writes nothing. Its answer also carries
//!   each row's status before the turn, from which the lifecycle rows are
//!   computed, so every write goes out in one pipelined round trip after
//!   it.
//! - **Due times last.** As in the one-turn path, the due times are
//!   recomputed by the last statement, which takes its snapshot after the
//!   row locks were held: a message sent before a lock was taken is seen,
//!   one sent after waits for the commit and sets the due time itself.
//! - **New instances** with their first turns
//!   ([`Store::create_instance_with_turn`], one per started instance) are
//!   queued the same way, in a queue of their own: one statement inserts
//!   the rows (or replaces finished ones of the same ids, but for those
//!   marked `only_if_absent`) in id order, leased to their first turns
//!   under fresh tokens, and returns the ids it created (a live instance
//!   of the same id, or any for `only_if_absent`, is a
//!   [`StoreError::Conflict`] and gets nothing); then the same writes as a
//!   turn batch, without consumed messages (the start message a plain
//!   creation queues is never stored).
//! - **Failure.** If the batch's transaction fails as a whole (a deadlock
//!   with a rare cross-instance writer, a lost connection), it is rolled
//!   back and each turn is committed on its own.

use super::writes::settle;
use super::*;
use crate::store::lifecycle;
use tokio::sync::oneshot;

/// Work waiting for a batch, and where its answer goes.
pub(super) struct Queued<W> {
    work: W,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

/// A turn commit waiting for a batch.
pub(super) type QueuedTurn = Queued<TurnCommit>;

/// A new instance with its first turn waiting for a batch.
pub(super) type QueuedCreation = Queued<(NewInstance, TurnCommit)>;

/// Each queued item's outcome, or `Err` when the batch failed as a whole
/// (rolled back: nothing changed).
type BatchOutcome = Result<Vec<Result<(), StoreError>>, StoreError>;

/// Does a taken batch and answers each caller: an item alone goes through
/// `single`; several go through `together` in one transaction, and one by
/// one through `single` when that failed as a whole (its second argument
/// then true: the batch may have committed after all, its answer lost).
/// `together` hands the items back with the outcome.
async fn answer_batch<W, F, T>(
    mut batch: Vec<Queued<W>>,
    what: &'static str,
    single: impl Fn(W, bool) -> F,
    together: impl FnOnce(Vec<W>) -> T,
) where
    F: std::future::Future<Output = Result<(), StoreError>>,
    T: std::future::Future<Output = (Vec<W>, BatchOutcome)>,
{
    if batch.len() == 1 {
        let q = batch.pop().expect("one item");
        let _ = q.answer.send(single(q.work, false).await);
        return;
    }
    let (works, answers): (Vec<W>, Vec<_>) = batch.into_iter().map(|q| (q.work, q.answer)).unzip();
    let (works, outcome) = together(works).await;
    match outcome {
        Ok(results) => {
            for (answer, r) in answers.into_iter().zip(results) {
                let _ = answer.send(r);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, items = works.len(), "batched {what} failed; one by one");
            // Counted by tests (a callback), to know the path was taken.
            #[cfg(feature = "failpoints")]
            fail::fail_point!("durable-pg-batch-one-by-one");
            for (work, answer) in works.into_iter().zip(answers) {
                let _ = answer.send(single(work, true).await);
            }
        }
    }
}

/// The answer of a queued operation. Dropped unanswered only if the call
/// committing it was cancelled: its transaction then rolled back, or
/// committed; either way the caller treats the operation as failed (a
/// turn's lease settles it, a start is retried and conflicts or not).
async fn wait(answered: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), StoreError> {
    answered
        .await
        .unwrap_or_else(|_| Err(StoreError::Database("batched commit cancelled".into())))
}

/// Whether a commit writes only its own instance's rows (see the module
/// docs).
pub(super) fn batchable(commit: &TurnCommit) -> bool {
    !commit.replace_history && commit.messages.is_empty() && commit.new_instances.is_empty()
}

/// The batched statements' arguments, one entry per turn (or per row).
#[derive(Default)]
struct BatchArgs {
    ids: Vec<String>,
    statuses: Vec<&'static str>,
    executions: Vec<String>,
    inputs: Vec<Option<String>>,
    outputs: Vec<Option<String>>,
    customs: Vec<Option<String>>,
    failures: Vec<Option<String>>,
    events: Vec<i64>,
    bytes: Vec<i64>,
    updated: Vec<i64>,
    first_events: Vec<Option<i64>>,
    histories: Vec<Option<String>>,
    /// Consumed message ids and the instance of each.
    consumed: Vec<i64>,
    consumed_by: Vec<String>,
    /// Instances that finished: their inboxes go.
    finished: Vec<String>,
    /// Instances that did not: their due times are recomputed.
    live: Vec<String>,
    activities: ActivityRows,
    lifecycle: LifecycleRows,
}

#[derive(Default)]
struct ActivityRows {
    instances: Vec<String>,
    executions: Vec<String>,
    tasks: Vec<i64>,
    names: Vec<String>,
    inputs: Vec<String>,
}

#[derive(Default)]
struct LifecycleRows {
    instances: Vec<String>,
    names: Vec<String>,
    executions: Vec<String>,
    statuses: Vec<&'static str>,
    events: Vec<i64>,
    at: Vec<i64>,
    failures: Vec<Option<String>>,
}

/// The `batch_create` statement's arguments, one entry per new instance.
struct CreateRows {
    ids: Vec<String>,
    names: Vec<String>,
    executions: Vec<String>,
    inputs: Vec<String>,
    created: Vec<i64>,
    parents: Vec<Option<String>>,
    /// The token each row is created leased under, to its first turn.
    tokens: Vec<String>,
    /// The ids whose finished instance must not be replaced.
    only_if_absent: Vec<String>,
}

impl CreateRows {
    fn new<'a>(instances: impl Iterator<Item = &'a NewInstance>) -> Self {
        let mut rows = CreateRows {
            ids: Vec::new(),
            names: Vec::new(),
            executions: Vec::new(),
            inputs: Vec::new(),
            created: Vec::new(),
            parents: Vec::new(),
            tokens: Vec::new(),
            only_if_absent: Vec::new(),
        };
        for inst in instances {
            rows.ids.push(inst.instance_id.as_str().to_string());
            rows.names.push(inst.name.clone());
            rows.executions.push(inst.execution_id.clone());
            rows.inputs.push(json(&inst.input));
            rows.created.push(inst.created_at.timestamp_millis());
            rows.parents.push(
                inst.parent
                    .as_ref()
                    .map(|p| p.instance_id.as_str().to_string()),
            );
            rows.tokens
                .push(format!("create/{}", uuid::Uuid::new_v4().simple()));
            if inst.only_if_absent {
                rows.only_if_absent
                    .push(inst.instance_id.as_str().to_string());
            }
        }
        rows
    }

    fn params<'a>(&'a self, home: &'a i64) -> [&'a (dyn ToSql + Sync); 9] {
        [
            &self.ids,
            &self.names,
            &self.executions,
            &self.inputs,
            &self.created,
            &self.parents,
            &self.tokens,
            home,
            &self.only_if_absent,
        ]
    }
}

/// A batched turn's instance row as the lock statement found it.
struct Before {
    status: Option<RuntimeStatus>,
    execution: String,
    name: String,
}

impl BatchArgs {
    /// Adds a turn; `consumed`: its consumed messages are deleted (a new
    /// instance's first turn consumed a start message never stored).
    fn push(&mut self, commit: &TurnCommit, consumed: bool, before: Option<&Before>) {
        let id = commit.instance_id.as_str().to_string();
        let s = &commit.status;
        self.ids.push(id.clone());
        self.statuses.push(s.runtime_status.as_str());
        self.executions.push(s.execution_id.clone());
        self.inputs.push(s.input.as_ref().map(json));
        self.outputs.push(s.output.as_ref().map(json));
        self.customs.push(s.custom_status.as_ref().map(json));
        self.failures.push(s.failure.as_ref().map(json));
        self.events.push(s.history_events as i64);
        self.bytes.push(s.history_bytes as i64);
        self.updated.push(s.updated_at.timestamp_millis());
        self.first_events
            .push(commit.history.first().map(|e| e.event_id as i64));
        self.histories
            .push((!commit.history.is_empty()).then(|| json(&commit.history)));
        if s.runtime_status.is_terminal() {
            self.finished.push(id.clone());
        } else {
            self.live.push(id.clone());
            if consumed {
                self.consumed.extend(&commit.consumed);
                self.consumed_by
                    .extend(commit.consumed.iter().map(|_| id.clone()));
            }
        }
        for a in &commit.activities {
            let rows = &mut self.activities;
            rows.instances.push(a.instance_id.as_str().to_string());
            rows.executions.push(a.execution_id.clone());
            rows.tasks.push(a.task_id as i64);
            rows.names.push(a.name.clone());
            rows.inputs.push(json(&a.input));
        }
        if let Some(before) = before {
            for status in lifecycle::transitions(
                before.status,
                before.execution == s.execution_id,
                s.runtime_status,
            ) {
                let rows = &mut self.lifecycle;
                rows.instances.push(id.clone());
                rows.names.push(before.name.clone());
                rows.executions.push(s.execution_id.clone());
                rows.statuses.push(status.as_str());
                rows.events.push(s.history_events as i64);
                rows.at.push(s.updated_at.timestamp_millis());
                rows.failures.push(
                    (status == RuntimeStatus::Failed)
                        .then(|| s.failure.as_ref().map(json))
                        .flatten(),
                );
            }
        }
    }
}

impl PostgresStore {
    /// Commits `commit` with whatever other turns are queued at the same
    /// moment (see the module docs).
    pub(super) async fn commit_together(&self, commit: TurnCommit) -> Result<(), StoreError> {
        let (answer, answered) = oneshot::channel();
        self.turns
            .run(
                Queued {
                    work: commit,
                    answer,
                },
                |batch| {
                    answer_batch(
                        batch,
                        "turn commit",
                        |commit, _| self.commit_single(commit),
                        |commits| async move {
                            let outcome = self.commit_batch(&commits).await;
                            (commits, outcome)
                        },
                    )
                },
            )
            .await;
        wait(answered).await
    }

    /// Creates `instance` with its first turn together with whatever other
    /// creations are queued at the same moment (see the module docs).
    pub(super) async fn create_together(
        &self,
        instance: NewInstance,
        commit: TurnCommit,
    ) -> Result<(), StoreError> {
        let (answer, answered) = oneshot::channel();
        let queued = Queued {
            work: (instance, commit),
            answer,
        };
        self.creations
            .run(queued, |batch| {
                answer_batch(
                    batch,
                    "creation",
                    |(instance, commit), retried| self.create_single(instance, commit, retried),
                    |creations| async move {
                        let outcome = self.create_batch(&creations).await;
                        (creations, outcome)
                    },
                )
            })
            .await;
        wait(answered).await
    }

    /// One transaction for several turns; `Err` when it failed as a whole
    /// (rolled back: nothing changed).
    async fn commit_batch(&self, commits: &[TurnCommit]) -> BatchOutcome {
        let mut ids: Vec<String> = commits
            .iter()
            .map(|c| c.instance_id.as_str().to_string())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let tokens: Vec<&str> = commits.iter().map(|c| c.lock.0.as_str()).collect();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let locked = async {
            let st = tx
                .prepare_cached(&self.sql.lock_turns)
                .await
                .map_err(db_err)?;
            tx.query(&st, &[&ids, &tokens]).await.map_err(db_err)
        }
        .await;
        let rows = match locked {
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        // Tokens name one row each: a token found is a lease held.
        let mut held: HashMap<String, Before> = rows
            .iter()
            .map(|r| {
                let status: String = r.get(1);
                (
                    r.get(0),
                    Before {
                        status: RuntimeStatus::parse(&status),
                        execution: r.get(2),
                        name: r.get(3),
                    },
                )
            })
            .collect();
        let lifecycle = self.shared.lifecycle.is_some();
        let mut args = BatchArgs::default();
        let mut out = Vec::with_capacity(commits.len());
        let mut written = Vec::new();
        for commit in commits {
            match held.remove(&commit.lock.0) {
                Some(before) => {
                    args.push(commit, true, lifecycle.then_some(&before));
                    written.push(commit);
                    out.push(Ok(()));
                }
                None => out.push(Err(StoreError::LeaseLost)),
            }
        }
        if written.is_empty() {
            let _ = tx.rollback().await;
            return Ok(out);
        }
        self.write_and_commit(tx, &args).await?;
        for commit in written {
            self.announce_commit(commit);
        }
        Ok(out)
    }

    /// New instances with their first turns in one transaction; `Err`
    /// when it failed as a whole (rolled back: nothing changed).
    async fn create_batch(&self, batch: &[(NewInstance, TurnCommit)]) -> BatchOutcome {
        // Rows inserted in id order (the order their locks are taken); an
        // id twice would make the upsert fail, so such a batch goes one by
        // one.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by(|&a, &b| batch[a].0.instance_id.cmp(&batch[b].0.instance_id));
        if order
            .windows(2)
            .any(|w| batch[w[0]].0.instance_id == batch[w[1]].0.instance_id)
        {
            return Err(StoreError::Database(
                "one instance id twice in a batch".into(),
            ));
        }
        let rows = CreateRows::new(order.iter().map(|&i| &batch[i].0));
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let created = async {
            let st = tx
                .prepare_cached(&self.sql.batch_create)
                .await
                .map_err(db_err)?;
            tx.query(&st, &rows.params(&self.shared.worker))
                .await
                .map_err(db_err)
        }
        .await;
        let created: std::collections::HashSet<String> = match created {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        let lifecycle = self.shared.lifecycle.is_some();
        let mut args = BatchArgs::default();
        let mut out = Vec::with_capacity(batch.len());
        for (instance, commit) in batch {
            if created.contains(instance.instance_id.as_str()) {
                let before = Before {
                    status: Some(RuntimeStatus::Pending),
                    execution: instance.execution_id.clone(),
                    name: instance.name.clone(),
                };
                args.push(commit, false, lifecycle.then_some(&before));
                out.push(Ok(()));
            } else {
                out.push(Err(StoreError::Conflict(instance.instance_id.clone())));
            }
        }
        if created.is_empty() {
            let _ = tx.rollback().await;
            return Ok(out);
        }
        self.write_and_commit(tx, &args).await?;
        // Fault injection (tests): the commit went through, its answer
        // did not (a connection lost at that moment).
        #[cfg(feature = "failpoints")]
        fail::fail_point!("durable-pg-create-batch-answer", |_| Err(
            StoreError::Database("injected: the batch's commit answer was lost".into())
        ));
        for (instance, commit) in batch {
            if created.contains(instance.instance_id.as_str()) {
                self.shared.changed(instance.instance_id.as_str(), 0, 0);
                self.announce_commit(commit);
            }
        }
        Ok(out)
    }

    /// Writes `args` in `tx` and commits (rolled back on failure), then
    /// the wake-ups.
    async fn write_and_commit(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        args: &BatchArgs,
    ) -> Result<(), StoreError> {
        let written = self.write_batch(&tx, args).await;
        let woken = settle(tx, written).await?;
        self.after_commit(woken);
        if let (false, Some(n)) = (args.lifecycle.instances.is_empty(), &self.shared.lifecycle) {
            n.notify_one();
        }
        Ok(())
    }

    /// The batch's writes, pipelined in one round trip; the due times
    /// last (see the module docs).
    async fn write_batch(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        a: &BatchArgs,
    ) -> Result<Woken, StoreError> {
        let sql = &self.sql;
        let st_status = tx.prepare_cached(&sql.batch_status).await.map_err(db_err)?;
        let st_consumed = tx
            .prepare_cached(&sql.batch_delete_consumed)
            .await
            .map_err(db_err)?;
        let st_inbox = tx
            .prepare_cached(&sql.batch_delete_inbox)
            .await
            .map_err(db_err)?;
        let st_activities = tx
            .prepare_cached(&sql.batch_insert_activities)
            .await
            .map_err(db_err)?;
        let st_lifecycle = tx
            .prepare_cached(&sql.batch_lifecycle)
            .await
            .map_err(db_err)?;
        let st_due = tx
            .prepare_cached(&sql.batch_recompute_due)
            .await
            .map_err(db_err)?;
        let status_params: [&(dyn ToSql + Sync); 13] = [
            &a.ids,
            &a.statuses,
            &a.executions,
            &a.inputs,
            &a.outputs,
            &a.customs,
            &a.failures,
            &a.events,
            &a.bytes,
            &a.updated,
            &a.first_events,
            &a.histories,
            &self.shared.worker,
        ];
        let act = &a.activities;
        let activity_params: [&(dyn ToSql + Sync); 5] = [
            &act.instances,
            &act.executions,
            &act.tasks,
            &act.names,
            &act.inputs,
        ];
        let life = &a.lifecycle;
        let lifecycle_params: [&(dyn ToSql + Sync); 7] = [
            &life.instances,
            &life.names,
            &life.executions,
            &life.statuses,
            &life.events,
            &life.at,
            &life.failures,
        ];
        let consumed_params: [&(dyn ToSql + Sync); 2] = [&a.consumed, &a.consumed_by];
        let inbox_params: [&(dyn ToSql + Sync); 1] = [&a.finished];
        // Statements with nothing to do are not sent; the rest go out in
        // this order, the due times last.
        let (status, consumed, inbox, activities, lifecycle, due) = futures::join!(
            tx.query_one(&st_status, &status_params),
            execute_if(tx, !a.consumed.is_empty(), &st_consumed, &consumed_params),
            execute_if(tx, !a.finished.is_empty(), &st_inbox, &inbox_params),
            execute_if(
                tx,
                !act.instances.is_empty(),
                &st_activities,
                &activity_params
            ),
            execute_if(
                tx,
                !life.instances.is_empty(),
                &st_lifecycle,
                &lifecycle_params
            ),
            async {
                if a.live.is_empty() {
                    Ok(Vec::new())
                } else {
                    tx.query(&st_due, &[&a.live]).await
                }
            },
        );
        let updated: i64 = status.map_err(db_err)?.get(0);
        if updated != a.ids.len() as i64 {
            return Err(StoreError::Database(format!(
                "batched turn commit updated {updated} of {} locked instances",
                a.ids.len()
            )));
        }
        for r in [consumed, inbox, activities, lifecycle] {
            r.map_err(db_err)?;
        }
        let mut woken = Woken {
            activities: !act.instances.is_empty(),
            ..Woken::default()
        };
        for row in due.map_err(db_err)? {
            woken.due(row.get(0), row.get(1));
        }
        Ok(woken)
    }
}

/// Runs `st` when `go`; sent when first polled, so a `join!` of these keeps
/// their order.
async fn execute_if(
    tx: &deadpool_postgres::Transaction<'_>,
    go: bool,
    st: &tokio_postgres::Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<u64>, tokio_postgres::Error> {
    if go {
        tx.execute(st, params).await.map(Some)
    } else {
        Ok(None)
    }
}
