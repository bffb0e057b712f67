//! The [`Store`] operations: reads on the read connection, writes
//! through the writer's batches.

use super::*;

#[async_trait]
impl Store for SqliteStore {
    fn work_signal(&self) -> Arc<WorkSignal> {
        self.shared.signal.clone()
    }

    async fn create_instance(&self, instance: NewInstance) -> Result<(), StoreError> {
        let prepared = Box::new(PreparedInstance::new(instance));
        self.call(|r| Op::Create(prepared, r)).await
    }

    async fn create_instance_with_turn(
        &self,
        instance: NewInstance,
        commit: TurnCommit,
    ) -> Result<bool, StoreError> {
        let inst = Box::new(PreparedInstance::with_turn(instance));
        let prepared = Box::new(PreparedCommit::new(commit));
        self.call(|r| Op::CreateWithTurn(inst, prepared, r))
            .await
            .map(|()| true)
    }

    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError> {
        let id = instance_id.clone();
        let message = Json::new(message);
        self.call(|r| Op::Send(id, message, r)).await
    }

    async fn fetch_orchestration_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        let mut items = Vec::new();
        let mut marks = Vec::new();
        {
            let mut q = self.shared.queues.lock().expect("queues lock");
            q.promote();
            // Running instances first, but a quarter of each fetch (at least
            // one) is kept for new ones, so a stream of continuing work
            // (eternal orchestrations, timers) cannot starve starts.
            let new_share = max.div_ceil(4);
            let mut taken_new = 0;
            while items.len() < max {
                let take_new = taken_new < new_share
                    && (q.ready.is_empty() || items.len() + new_share - taken_new >= max);
                let next = if take_new {
                    q.ready_new.pop_front().or_else(|| q.ready.pop_front())
                } else {
                    q.ready.pop_front().or_else(|| q.ready_new.pop_front())
                };
                let Some(id) = next else { break };
                if take_new {
                    taken_new += 1;
                }
                let token = q.token('o');
                let expires = Instant::now() + lease;
                let Some(e) = q.entries.get_mut(&id) else {
                    continue;
                };
                e.queued = false;
                if e.lease.is_some() || e.visible.is_empty() {
                    continue;
                }
                e.lease = Some(Lease {
                    token: token.clone(),
                    expires,
                    committing: false,
                });
                e.attempts += 1;
                if e.attempts >= 2 {
                    marks.push((id.clone(), e.attempts));
                }
                items.push(OrchestrationWorkItem {
                    lock: WorkLock(token.clone()),
                    instance_id: id.clone(),
                    runtime_status: e.meta.status,
                    execution_id: e.meta.execution_id.clone(),
                    history_len: e.meta.history_len,
                    messages: e.visible.clone(),
                    attempts: e.attempts,
                });
                q.leases.insert((expires, token), id);
            }
        }
        if !marks.is_empty() {
            let _ = self.submit(Op::MarkFetched {
                instances: marks,
                activities: Vec::new(),
            });
        }
        Ok(items)
    }

    async fn load_history(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        let id = instance_id.as_str().to_string();
        self.read(move |c| read_history(c, &id, HistoryCap::ALL))
            .await
    }

    async fn commit_turn(&self, commit: TurnCommit) -> Result<(), StoreError> {
        let prepared = Box::new(PreparedCommit::new(commit));
        self.call(|r| Op::Commit(prepared, r)).await
    }

    async fn abandon_orchestration_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let mut q = self.shared.queues.lock().expect("queues lock");
        let found = q
            .entries
            .iter()
            .find(|(_, e)| {
                // A lease claimed by an in-flight commit is not abandoned
                // under it.
                e.lease
                    .as_ref()
                    .is_some_and(|l| l.token == lock.0 && !l.committing)
            })
            .map(|(id, _)| id.clone());
        let Some(id) = found else {
            return Err(StoreError::LeaseLost);
        };
        q.release(&id, &lock.0);
        // Re-lease it to nobody until the delay has passed: a lease that
        // expires then puts it back in the queue.
        let expires = Instant::now() + delay;
        let token = q.token('a');
        if let Some(e) = q.entries.get_mut(&id) {
            e.lease = Some(Lease {
                token: token.clone(),
                expires,
                committing: false,
            });
        }
        q.leases.insert((expires, token), id);
        drop(q);
        self.shared.signal.orchestrations.notify_one();
        Ok(())
    }

    async fn fetch_activity_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        let mut items = Vec::new();
        let mut marks = Vec::new();
        {
            let mut q = self.shared.queues.lock().expect("queues lock");
            q.promote();
            while items.len() < max {
                let Some(mut row) = q.act_ready.pop_front() else {
                    break;
                };
                row.attempts += 1;
                let token = q.token('t');
                let expires = Instant::now() + lease;
                if row.attempts >= 2 {
                    marks.push((row.activity.instance_id.clone(), row.id, row.attempts));
                }
                items.push(ActivityWorkItem {
                    lock: WorkLock(token.clone()),
                    activity: Arc::clone(&row.activity),
                    attempts: row.attempts,
                });
                q.act_leases.insert((expires, token.clone()), ());
                q.act_locked.insert(token, (row, expires));
            }
        }
        if !marks.is_empty() {
            let _ = self.submit(Op::MarkFetched {
                instances: Vec::new(),
                activities: marks,
            });
        }
        Ok(items)
    }

    /// When memory knows the instance is live, the result is delivered
    /// from memory: no write and no commit. The activity row stays until
    /// the turn that consumes the result deletes it in its own commit (as a
    /// message id that is the row id negated); a crash before that turn
    /// runs the activity again, which at-least-once allows, and a clean
    /// [`SqliteStore::close`] writes held results out. This took 9 of the
    /// 22 statements of a Galaxy_Create and two commits off its path.
    /// Otherwise (finished or unknown instance, lost lease) the writer
    /// completes it as before.
    async fn complete_activity_work(
        &self,
        lock: &WorkLock,
        result: Message,
    ) -> Result<(), StoreError> {
        self.complete_activities(vec![(lock.clone(), result)])
            .await
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Holds every result it can under one lock, so they become visible
    /// together (one turn for all); the others go to the writer.
    async fn complete_activities(
        &self,
        items: Vec<(WorkLock, Message)>,
    ) -> Vec<Result<(), StoreError>> {
        let mut out: Vec<Result<(), StoreError>> = Vec::with_capacity(items.len());
        let mut rest = Vec::new();
        {
            let mut q = self.shared.queues.lock().expect("queues lock");
            for (i, (lock, result)) in items.into_iter().enumerate() {
                out.push(Ok(()));
                if let Some(result) = q.hold_result(&lock, result) {
                    rest.push((i, lock, result));
                }
            }
        }
        if rest.len() < out.len() {
            self.wake_orchestrations();
        }
        for (i, lock, result) in rest {
            let result = Json::new(result);
            out[i] = self.call(|r| Op::CompleteActivity(lock, result, r)).await;
        }
        out
    }

    async fn abandon_activity_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let mut q = self.shared.queues.lock().expect("queues lock");
        // A lease claimed by an in-flight completion is not abandoned under it.
        if !q.act_lease_free(&lock.0) {
            return Err(StoreError::LeaseLost);
        }
        let Some((row, expires)) = q.act_locked.remove(&lock.0) else {
            return Err(StoreError::LeaseLost);
        };
        q.act_leases.remove(&(expires, lock.0.clone()));
        let token = q.token('a');
        let until = Instant::now() + delay;
        q.act_leases.insert((until, token.clone()), ());
        q.act_locked.insert(token, (row, until));
        Ok(())
    }

    async fn next_wake_at(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        let q = self.shared.queues.lock().expect("queues lock");
        let ready = match kind {
            WorkKind::Orchestration => !q.ready.is_empty() || !q.ready_new.is_empty(),
            WorkKind::Activity => !q.act_ready.is_empty(),
        };
        if ready {
            return Ok(Some(types::now()));
        }
        // Delayed messages stay in `delayed` until a fetch moves them, so
        // one that came due since gives a time already past.
        let (delayed, lease) = match kind {
            WorkKind::Orchestration => (
                q.delayed
                    .keys()
                    .next()
                    .map(|(ms, _)| types::from_millis(*ms)),
                q.leases.keys().next().map(|(t, _)| *t),
            ),
            WorkKind::Activity => (None, q.act_leases.keys().next().map(|(t, _)| *t)),
        };
        let now = Instant::now();
        let lease = lease.map(|t| {
            types::now()
                + chrono::Duration::from_std(t.saturating_duration_since(now)).unwrap_or_default()
        });
        Ok(match (delayed, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn read_status(
        &self,
        instance_id: &InstanceId,
        read: StatusRead,
    ) -> Result<Option<InstanceStatus>, StoreError> {
        let id = instance_id.as_str().to_string();
        self.read(move |c| {
            // With the history, one snapshot for both reads: a turn that
            // commits in between cannot make them disagree.
            let snapshot = match read.history {
                Some(_) => Some(c.unchecked_transaction().map_err(db_err)?),
                None => None,
            };
            let sql = format!(
                "SELECT {} FROM instances WHERE instance_id = ?1",
                status_columns(read.input)
            );
            let status = c
                .prepare_cached(&sql)
                .map_err(db_err)?
                .query_row([&id], status_from_row)
                .optional()
                .map_err(db_err)?;
            let Some((mut status, ())) = status else {
                return Ok(None);
            };
            if let Some(cap) = read.history {
                status.history = Some(read_history(c, &id, cap)?);
            }
            drop(snapshot);
            Ok(Some(status))
        })
        .await
    }

    async fn list_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        let query = query.clone();
        self.read(move |c| {
            let mut args = Vec::new();
            let mut where_ = filter_sql(&query.filter, &mut args);
            if let Some(token) = &query.continuation {
                let (ms, id) = decode_token(token)
                    .ok_or_else(|| StoreError::Database("invalid continuation token".into()))?;
                args.push(rusqlite::types::Value::Integer(ms));
                let a = args.len();
                args.push(rusqlite::types::Value::Text(id));
                let b = args.len();
                where_.push_str(&format!(
                    " AND (created_at < ?{a} OR (created_at = ?{a} AND instance_id < ?{b}))"
                ));
            }
            let size = query.page_size.clamp(1, 1000);
            // Without inputs, the column is read as JSON null: nothing of
            // a large input is loaded.
            let columns = status_columns(query.with_input);
            let sql = format!(
                "SELECT {columns} FROM instances WHERE {where_} ORDER BY created_at DESC, instance_id DESC LIMIT {}",
                size + 1
            );
            let mut stmt = c.prepare(&sql).map_err(db_err)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args), status_from_row)
                .map_err(db_err)?;
            let mut page = PageBuilder::new(size, PAGE_PAYLOAD_BYTES);
            for row in rows {
                if !page.push_instance(row.map_err(db_err)?.0) {
                    break;
                }
            }
            Ok(page.instance_page(|s| encode_token(s.created_at.timestamp_millis(), &s.instance_id)))
        })
        .await
    }

    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<PurgeOutcome, StoreError> {
        let id = instance_id.clone();
        self.call(|r| Op::Purge(id, r)).await
    }

    async fn purge_instances(
        &self,
        filter: &InstanceFilter,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let f = filter.clone();
        self.call(|r| Op::PurgeMany(f, limit.max(1), r)).await
    }

    async fn count_by_status(&self) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT runtime_status, count(*) FROM instances GROUP BY runtime_status",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (s, n) = row.map_err(db_err)?;
                if let Some(s) = RuntimeStatus::parse(&s) {
                    out.push((s, n as u64));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        let q = self.shared.queues.lock().expect("queues lock");
        let orch = q.entries.values().filter(|e| !e.visible.is_empty()).count() as u64;
        Ok((orch, (q.act_ready.len() + q.act_locked.len()) as u64))
    }

    fn lifecycle_signal(&self) -> Option<Arc<Notify>> {
        self.shared.lifecycle.clone()
    }

    fn health(&self) -> Result<(), String> {
        if self.shared.queues.is_poisoned() {
            return Err("the engine store's queues lock is poisoned (a panic)".into());
        }
        self.writer
            .alive()
            .map_err(|e| format!("the engine store's writer: {e}"))
    }

    async fn lifecycle_outbox(&self, limit: usize) -> Result<Vec<LifecycleEvent>, StoreError> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, instance_id, name, execution_id, runtime_status, history_events, at, failure \
                     FROM lifecycle_outbox ORDER BY seq LIMIT ?1",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map([limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, i64>(5)?,
                        r.get::<_, i64>(6)?,
                        r.get::<_, Option<String>>(7)?,
                    ))
                })
                .map_err(db_err)?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, instance_id, name, execution_id, status, history_events, at, failure) =
                    row.map_err(db_err)?;
                out.push(LifecycleEvent {
                    seq,
                    instance_id,
                    name,
                    execution_id,
                    runtime_status: RuntimeStatus::parse(&status)
                        .unwrap_or(RuntimeStatus::Failed),
                    history_events: history_events as u64,
                    at: types::from_millis(at),
                    failure: failure.as_deref().map(parse).transpose()?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn ack_lifecycle(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.call(|r| Op::AckLifecycle(seqs, r)).await
    }
}
