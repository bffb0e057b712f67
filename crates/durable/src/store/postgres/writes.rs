//! The store's own machinery: connecting and closing, the turn commit
//! shared by `commit_turn` and `create_instance_with_turn`, batched
//! activity completions, lifecycle rows, wake-ups after a commit.

use super::*;

impl PostgresStore {
    /// Connects, creates the schema if the database has none, and starts the
    /// listener. Refuses a schema that is not ours or has another version.
    pub async fn connect(config: PostgresConfig) -> Result<Self, StoreError> {
        let s = quoted_schema(&config.schema)?;
        let target =
            PgTarget::parse(&config.url).map_err(|e| StoreError::Database(e.to_string()))?;
        let pg = target.config.clone();
        {
            let (mut client, conn) = target.connect().await.map_err(db_err)?;
            let driver = tokio::spawn(conn);
            let prepared = prepare_schema(&mut client, &config.schema).await;
            drop(client);
            let _ = driver.await;
            prepared?;
        }
        let manager = Manager::from_config(
            pg.clone(),
            target.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .build()
            .map_err(|e| StoreError::Database(format!("connection pool: {e}")))?;
        let mut relaxed = pg.clone();
        // Added to whatever options the URL carries, not instead of them.
        let options = match pg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c synchronous_commit=off"),
            _ => "-c synchronous_commit=off".to_string(),
        };
        relaxed.options(&options);
        let leases = Pool::builder(Manager::from_config(
            relaxed,
            target.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        ))
        .max_size(config.pool_size.div_ceil(2).max(2))
        .build()
        .map_err(|e| StoreError::Database(format!("connection pool: {e}")))?;
        let shared = Arc::new(Shared {
            signal: Arc::new(WorkSignal::default()),
            worker: rand::random::<i64>() & i64::MAX,
            channel: schema::channel_name(&config.schema),
            outbox: Mutex::new(Outbox::default()),
            kick: tokio::sync::Notify::new(),
            lifecycle: config
                .lifecycle_outbox
                .then(|| Arc::new(tokio::sync::Notify::new())),
            planned_wake: Mutex::default(),
            hint_sent: Mutex::default(),
            remote: tokio::sync::broadcast::channel(REMOTE_CHANGES).0,
            clock_offset: Default::default(),
        });
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let listener = tokio::spawn(listener::run(
            target,
            config.schema.clone(),
            shared.clone(),
            Some(ready_tx),
            stop_rx,
        ));
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StoreError::Database(
                    "store listener failed to start".into(),
                ))
            }
        }
        Ok(Self {
            pool,
            leases,
            sql: Arc::new(Sql::new(&s)),
            shared,
            affinity_ms: lease_ms(config.affinity),
            dead_after_ms: lease_ms(config.dead_after),
            liveness: Mutex::default(),
            turns: Default::default(),
            creations: Default::default(),
            closed: AtomicBool::new(false),
            stop,
            listener: Mutex::new(Some(listener)),
            schema: config.schema,
        })
    }

    /// The schema this store lives in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Stops the store: its leases become due at once (another process, or
    /// this one after a restart, takes them over without waiting for them to
    /// expire), its worker registration goes, the listener stops and the
    /// connections close. Later calls fail with [`StoreError::Closed`].
    /// Call it after the engine has stopped.
    pub async fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(client) = self.pool.get().await {
            let s = &self.sql.s;
            let mut freed = [false; 2];
            for (table, freed) in ["instances", "activities"].into_iter().zip(&mut freed) {
                *freed = client
                    .execute(
                        &format!(
                            "UPDATE {s}.{table} SET due_at = {NOW}, lock_owner = NULL WHERE lock_owner = $1"
                        ),
                        &[&self.shared.worker],
                    )
                    .await
                    .is_ok_and(|n| n > 0);
            }
            // Nobody need wait for this process to take its instances.
            // Only those that can be fetched: a finished or idle one's
            // home is never read (an idle one's affinity runs out once it
            // is due), and rewriting every row this process ever homed
            // would take one statement over the whole table.
            let _ = client
                .execute(
                    &format!(
                        "UPDATE {s}.instances SET home = NULL WHERE home = $1 AND due_at IS NOT NULL"
                    ),
                    &[&self.shared.worker],
                )
                .await;
            // After both (the others then find the rows free of this
            // home); the listener sends it before it stops.
            self.shared.announce(freed[0], freed[1]);
        }
        let _ = self.stop.send(true);
        let handle = self.listener.lock().expect("listener lock").take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.pool.close();
        self.leases.close();
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.pool.get().await.map_err(pool_err)
    }

    /// Returns a leased work item (instance or activity, by `sql` and its
    /// key) to its queue after `delay`, then wakes that queue's dispatchers
    /// at once, or hints the time it becomes due.
    pub(super) async fn abandon(
        &self,
        sql: &str,
        key: &(dyn tokio_postgres::types::ToSql + Sync),
        lock: &WorkLock,
        delay: Duration,
        kind: WorkKind,
    ) -> Result<(), StoreError> {
        let c = self.lease_client().await?;
        let stmt = c.prepare_cached(sql).await.map_err(db_err)?;
        let row = c
            .query_opt(&stmt, &[key, &lock.0, &lease_ms(delay)])
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Err(StoreError::LeaseLost);
        };
        if delay.is_zero() {
            self.shared
                .announce(kind == WorkKind::Orchestration, kind == WorkKind::Activity);
        } else {
            self.shared.hint(kind, row.get(0));
        }
        Ok(())
    }

    /// Hands the leases of one fetch back untouched (`ids` under tokens of
    /// `prefix`), then wakes the dispatchers for any that is due, or hints
    /// when the earliest becomes due.
    pub(super) async fn release_fetched(
        &self,
        c: &deadpool_postgres::Object,
        ids: &[String],
        prefix: &str,
    ) -> Result<(), StoreError> {
        let stmt = c
            .prepare_cached(&self.sql.release_fetched)
            .await
            .map_err(db_err)?;
        let rows = c.query(&stmt, &[&ids, &prefix]).await.map_err(db_err)?;
        let (mut due_now, mut later) = (false, None::<i64>);
        for r in rows {
            let (due, now): (Option<i64>, i64) = (r.get(0), r.get(1));
            match due {
                Some(d) if d <= now => due_now = true,
                Some(d) => later = Some(later.map_or(d, |l| l.min(d))),
                None => {}
            }
        }
        self.shared.announce(due_now, false);
        if let Some(at) = later {
            self.shared.hint(WorkKind::Orchestration, at);
        }
        Ok(())
    }

    /// A connection for lease bookkeeping (see [`PostgresStore::leases`]).
    pub(super) async fn lease_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        self.leases.get().await.map_err(pool_err)
    }

    /// Completes several activities in one transaction (on the relaxed
    /// pool, as [`Store::complete_activity_work`]): all their instance rows
    /// locked first, in id order (so batches cannot deadlock each other,
    /// and a purge, which also locks the instance first, cannot either),
    /// then the activity rows still held are deleted and their results
    /// delivered. An instance waiting for several results then takes one
    /// turn for them. `Err` when the transaction failed as a whole.
    pub(super) async fn complete_batch(
        &self,
        items: &[(WorkLock, Message)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let keys: Vec<Option<(i64, InstanceId)>> =
            items.iter().map(|(lock, _)| activity_key(lock)).collect();
        let mut instances: Vec<String> = keys
            .iter()
            .flatten()
            .map(|(_, i)| i.as_str().to_string())
            .collect();
        instances.sort_unstable();
        instances.dedup();
        let (rows, tokens): (Vec<i64>, Vec<String>) = items
            .iter()
            .zip(&keys)
            .filter_map(|((lock, _), key)| Some((key.as_ref()?.0, lock.0.clone())))
            .unzip();
        let mut c = self.lease_client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let lock = tx
            .prepare_cached(&self.sql.lock_instances)
            .await
            .map_err(db_err)?;
        let delete = tx
            .prepare_cached(&self.sql.complete_activities)
            .await
            .map_err(db_err)?;
        let send = tx
            .prepare_cached(&self.sql.send_many)
            .await
            .map_err(db_err)?;
        let lock_params: [&(dyn ToSql + Sync); 1] = [&instances];
        let delete_params: [&(dyn ToSql + Sync); 2] = [&rows, &tokens];
        let (locked, deleted) = futures::join!(
            tx.query(&lock, &lock_params),
            tx.query(&delete, &delete_params),
        );
        locked.map_err(db_err)?;
        // By row and token: two results for one row (a lease that ran out
        // and the re-fetch's) in one batch must not both pass.
        let held: std::collections::HashSet<(i64, String)> = deleted
            .map_err(db_err)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        // The results of the activities still held, in one statement (a
        // result for an instance gone or finished is dropped, as `send`
        // drops it); the others lost their lease.
        let mut sends = SendManyArgs::default();
        let mut out: Vec<Result<(), StoreError>> = Vec::with_capacity(items.len());
        for ((lock, result), key) in items.iter().zip(&keys) {
            match key {
                Some((row, instance)) if held.contains(&(*row, lock.0.clone())) => {
                    sends.push(SendArgs::new(instance, result));
                    out.push(Ok(()));
                }
                _ => out.push(Err(StoreError::LeaseLost)),
            }
        }
        let mut woken = Woken::default();
        if !sends.is_empty() {
            for row in tx.query(&send, &sends.params()).await.map_err(db_err)? {
                woken.due(row.get(0), row.get(1));
            }
        }
        tx.commit().await.map_err(db_err)?;
        self.after_commit(woken);
        Ok(out)
    }

    /// Writes a commit's lifecycle outbox rows (see
    /// [`crate::store::lifecycle`]) from the status before it (`before`:
    /// the status UPDATE's returned row). Returns whether it wrote any.
    pub(super) async fn write_lifecycle(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        id: &str,
        before: &Row,
        s: &StatusUpdate,
    ) -> Result<bool, StoreError> {
        let old: Option<String> = before.get(0);
        let old_execution: Option<String> = before.get(1);
        let events = crate::store::lifecycle::transitions(
            old.as_deref().and_then(RuntimeStatus::parse),
            old_execution.as_deref() == Some(s.execution_id.as_str()),
            s.runtime_status,
        );
        if events.is_empty() {
            return Ok(false);
        }
        let st = tx
            .prepare_cached(&self.sql.insert_lifecycle)
            .await
            .map_err(db_err)?;
        for status in events {
            let failure = (status == RuntimeStatus::Failed)
                .then(|| s.failure.as_ref().map(json))
                .flatten();
            tx.execute(
                &st,
                &[
                    &id,
                    &s.execution_id,
                    &status.as_str(),
                    &(s.history_events as i64),
                    &s.updated_at.timestamp_millis(),
                    &failure,
                ],
            )
            .await
            .map_err(db_err)?;
        }
        Ok(true)
    }

    /// One turn in a transaction of its own (see [`Store::commit_turn`]).
    pub(super) async fn commit_single(&self, commit: TurnCommit) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let done = self.finish_turn(tx, &commit).await?;
        self.committed(&commit, done);
        Ok(())
    }

    /// A turn's statements in `tx`, then [`settle`].
    async fn finish_turn(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        commit: &TurnCommit,
    ) -> Result<Committed, StoreError> {
        let done = self.commit_in(&tx, commit).await;
        settle(tx, done).await
    }

    /// A new instance and its first turn in a transaction of their own
    /// (see [`Store::create_instance_with_turn`]).
    pub(super) async fn create_single(
        &self,
        instance: NewInstance,
        mut commit: TurnCommit,
        retried: bool,
    ) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        // Retried after its batch failed as a whole, this very start may
        // be what is there: the batch's commit reached the server and only
        // its answer was lost. Execution ids are unique per start, so the
        // row tells; asked first, since a first turn that finished the
        // instance would let the create below replace it (run it again).
        let ours = retried
            && tx
                .query_opt(
                    &format!(
                        "SELECT 1 FROM {}.instances WHERE instance_id = $1 AND execution_id = $2",
                        self.sql.s
                    ),
                    &[&instance.instance_id.as_str(), &instance.execution_id],
                )
                .await
                .map_err(db_err)?
                .is_some();
        if ours {
            let _ = tx.rollback().await;
            // Its commit's wake-ups never went out.
            self.shared.announce(true, true);
            self.shared.changed(instance.instance_id.as_str(), 0, 0);
            return Ok(());
        }
        if !create_in(&tx, &self.sql, &instance, self.shared.worker).await? {
            let _ = tx.rollback().await;
            return Err(StoreError::Conflict(instance.instance_id));
        }
        // The turn consumed the start message create_in queued (the only
        // message of a row created in this transaction), and commits under
        // a token of its own: nobody else can see the row before this
        // transaction commits.
        let token = format!("create/{}", uuid::Uuid::new_v4().simple());
        let id = instance.instance_id.as_str();
        let claim = tx
            .prepare_cached(&self.sql.claim_created)
            .await
            .map_err(db_err)?;
        tx.execute(&claim, &[&id, &token]).await.map_err(db_err)?;
        commit.lock = WorkLock(token);
        commit.consumed.clear();
        let done = self.finish_turn(tx, &commit).await?;
        self.shared.changed(id, 0, 0);
        self.committed(&commit, done);
        Ok(())
    }

    /// A turn's statements inside `tx` (see [`Store::commit_turn`]);
    /// `LeaseLost` when the lease check failed (the caller rolls back).
    pub(super) async fn commit_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        commit: &TurnCommit,
    ) -> Result<Committed, StoreError> {
        let sql = self.sql.clone();
        let id = commit.instance_id.as_str();
        let s = &commit.status;
        let terminal = s.runtime_status.is_terminal();
        // Everything goes out pipelined in one round trip; the server runs
        // the statements in order. The status UPDATE comes first and is the
        // lease check: once it holds the row lock, each later statement
        // takes its snapshot after every send that committed before us, so
        // the due time recomputed last sees every message. If the lease was
        // lost, the UPDATE matched nothing and the whole transaction is
        // rolled back below, whatever the later statements did.
        let mut status_args: Vec<Box<dyn ToSql + Sync + Send>> = vec![
            Box::new(id.to_string()),
            Box::new(commit.lock.0.clone()),
            Box::new(s.runtime_status.as_str()),
            Box::new(s.execution_id.clone()),
            Box::new(s.input.as_ref().map(json)),
            Box::new(s.output.as_ref().map(json)),
            Box::new(s.custom_status.as_ref().map(json)),
            Box::new(s.failure.as_ref().map(json)),
            Box::new(s.history_events as i64),
            Box::new(s.history_bytes as i64),
            Box::new(s.updated_at.timestamp_millis()),
            // This process now holds the instance's run in its cache.
            Box::new(self.shared.worker),
        ];
        let mut plain: Vec<(tokio_postgres::Statement, Vec<Box<dyn ToSql + Sync + Send>>)> =
            Vec::new();
        let first = commit.history.first().map(|e| e.event_id as i64);
        // Appended history goes in with the status row, one statement; a
        // replaced history is deleted first, so it is written after.
        let status_sql = match first {
            Some(first) if !commit.replace_history => {
                status_args.push(Box::new(first));
                status_args.push(Box::new(json(&commit.history)));
                &sql.commit_status_history
            }
            _ => &sql.commit_status,
        };
        let st_status = tx.prepare_cached(status_sql).await.map_err(db_err)?;
        if commit.replace_history {
            let st = tx
                .prepare_cached(&sql.delete_history)
                .await
                .map_err(db_err)?;
            plain.push((st, vec![Box::new(id.to_string())]));
            if let Some(first) = first {
                let st = tx
                    .prepare_cached(&sql.insert_history)
                    .await
                    .map_err(db_err)?;
                plain.push((
                    st,
                    vec![
                        Box::new(id.to_string()),
                        Box::new(first),
                        Box::new(json(&commit.history)),
                    ],
                ));
            }
        }
        if terminal {
            // A finished instance takes no more work: drop what waits.
            let st = tx.prepare_cached(&sql.delete_inbox).await.map_err(db_err)?;
            plain.push((st, vec![Box::new(id.to_string())]));
        } else if !commit.consumed.is_empty() {
            let st = tx
                .prepare_cached(&sql.delete_consumed)
                .await
                .map_err(db_err)?;
            plain.push((
                st,
                vec![Box::new(id.to_string()), Box::new(commit.consumed.clone())],
            ));
        }
        // Activities grouped by (instance, execution): one statement each.
        let mut groups: Vec<((String, String), Vec<&NewActivity>)> = Vec::new();
        for a in &commit.activities {
            let key = (a.instance_id.as_str().to_string(), a.execution_id.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(a),
                None => groups.push((key, vec![a])),
            }
        }
        let mut woken = Woken::default();
        if !groups.is_empty() {
            woken.activities = true;
            let st = tx
                .prepare_cached(&sql.insert_activities)
                .await
                .map_err(db_err)?;
            for ((inst, exec), acts) in groups {
                let tasks: Vec<i64> = acts.iter().map(|a| a.task_id as i64).collect();
                let names: Vec<String> = acts.iter().map(|a| a.name.clone()).collect();
                let inputs: Vec<String> = acts.iter().map(|a| json(&a.input)).collect();
                plain.push((
                    st.clone(),
                    vec![
                        Box::new(inst),
                        Box::new(exec),
                        Box::new(tasks),
                        Box::new(names),
                        Box::new(inputs),
                    ],
                ));
            }
        }
        let children: Vec<CreateArgs> = commit
            .new_instances
            .iter()
            .map(|c| CreateArgs::new(c, self.shared.worker))
            .collect();
        let sends: Vec<SendArgs> = commit
            .messages
            .iter()
            .map(|m| SendArgs::new(&m.instance_id, &m.message))
            .collect();
        let st_create = tx
            .prepare_cached(&sql.upsert_instance)
            .await
            .map_err(db_err)?;
        let st_send = tx.prepare_cached(&sql.send).await.map_err(db_err)?;
        let st_recompute = tx
            .prepare_cached(&sql.recompute_due)
            .await
            .map_err(db_err)?;

        // A turn that writes to other instances (sends, children) first
        // locks their rows and its own in id order, as batched completions
        // and batched turns do: two turns sending to each
        // other would otherwise each hold its own row and wait for the
        // other's (40P01 after the server's deadlock timeout).
        let mut locked: Vec<&str> = commit
            .messages
            .iter()
            .map(|m| m.instance_id.as_str())
            .chain(commit.new_instances.iter().map(|c| c.instance_id.as_str()))
            .filter(|other| *other != id)
            .collect();
        if !locked.is_empty() {
            locked.push(id);
            locked.sort_unstable();
            locked.dedup();
            let st = tx
                .prepare_cached(&sql.lock_instances)
                .await
                .map_err(db_err)?;
            tx.execute(&st, &[&locked]).await.map_err(db_err)?;
        }
        let status_params = params(&status_args);
        let plain_params: Vec<_> = plain.iter().map(|(st, a)| (st, params(a))).collect();
        let child_params: Vec<_> = children.iter().map(CreateArgs::params).collect();
        let send_params: Vec<_> = sends.iter().map(SendArgs::params).collect();
        let id_param: [&(dyn ToSql + Sync); 1] = [&id];
        let (updated, plain_done, created, delivered, recomputed) = futures::join!(
            tx.query_opt(&st_status, &status_params),
            join_all(plain_params.iter().map(|(st, a)| tx.execute(*st, a))),
            join_all(child_params.iter().map(|a| tx.query_one(&st_create, a))),
            join_all(send_params.iter().map(|a| tx.query_one(&st_send, a))),
            async {
                if terminal {
                    None
                } else {
                    Some(tx.query_one(&st_recompute, &id_param).await)
                }
            },
        );
        let Some(before) = updated.map_err(db_err)? else {
            return Err(StoreError::LeaseLost);
        };
        for r in plain_done {
            r.map_err(db_err)?;
        }
        let mut conflicts = Vec::new();
        let mut children = Vec::new();
        for (child, row) in commit.new_instances.iter().zip(created) {
            if row.map_err(db_err)?.get::<_, i64>(0) == 1 {
                woken.orchestrations = true;
                children.push(child.instance_id.as_str());
            } else {
                conflicts.push(child_conflict(child));
            }
        }
        for (m, row) in commit.messages.iter().zip(delivered) {
            sent(&row.map_err(db_err)?, &m.instance_id, false, &mut woken)?;
        }
        let mut recomputed = recomputed.transpose().map_err(db_err)?;
        if !conflicts.is_empty() {
            // Rare: tell the parent, then recompute its due time again.
            for (parent, message) in &conflicts {
                send_in(tx, &sql, parent, message, false, &mut woken).await?;
            }
            if !terminal {
                recomputed = Some(tx.query_one(&st_recompute, &[&id]).await.map_err(db_err)?);
            }
        }
        if let Some(row) = recomputed {
            if let Some(due) = row.get::<_, Option<i64>>(0) {
                woken.due(due, row.get(1));
            }
        }
        let lifecycle = match &self.shared.lifecycle {
            Some(_) => self.write_lifecycle(tx, id, &before, s).await?,
            None => false,
        };
        Ok(Committed {
            woken,
            lifecycle,
            children: children.into_iter().map(str::to_string).collect(),
        })
    }

    /// After a turn's transaction committed: wake-ups, the lifecycle relay,
    /// and the change announced to the other processes.
    pub(super) fn committed(&self, commit: &TurnCommit, done: Committed) {
        self.after_commit(done.woken);
        if let (true, Some(n)) = (done.lifecycle, &self.shared.lifecycle) {
            n.notify_one();
        }
        self.announce_commit(commit);
        for child in done.children {
            self.shared.changed(&child, 0, 0);
        }
    }

    /// Tells the other processes a turn of `commit`'s instance committed.
    pub(super) fn announce_commit(&self, commit: &TurnCommit) {
        let to = commit.status.history_events;
        let from = if commit.replace_history {
            0
        } else {
            to.saturating_sub(commit.history.len() as u64)
        };
        self.shared.changed(commit.instance_id.as_str(), from, to);
    }

    pub(super) fn after_commit(&self, woken: Woken) {
        self.shared.announce(woken.orchestrations, woken.activities);
        if let Some(at) = woken.later {
            // Delayed messages: orchestration work.
            self.shared.hint(WorkKind::Orchestration, at);
        }
    }
}

/// Commits `tx` when its statements succeeded (`done`), else rolls it back,
/// awaited rather than left to the drop: the statements may hold row locks
/// (a send's target) that a fetch right after the call must not skip.
/// Nothing changed once rolled back.
pub(super) async fn settle<T>(
    tx: deadpool_postgres::Transaction<'_>,
    done: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match done {
        Ok(v) => {
            tx.commit().await.map_err(db_err)?;
            Ok(v)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}
