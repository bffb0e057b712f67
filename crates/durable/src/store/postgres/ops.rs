//! The [`Store`] operations.

use super::*;

#[async_trait]
impl Store for PostgresStore {
    fn work_signal(&self) -> Arc<WorkSignal> {
        self.shared.signal.clone()
    }

    fn remote_changes(&self) -> Option<tokio::sync::broadcast::Receiver<RemoteChange>> {
        Some(self.shared.remote.subscribe())
    }

    async fn create_instance(&self, instance: NewInstance) -> Result<(), StoreError> {
        let c = self.client().await?;
        if !create_in(&c, &self.sql, &instance, self.shared.worker).await? {
            return Err(StoreError::Conflict(instance.instance_id));
        }
        self.shared.announce(true, false);
        self.shared.changed(instance.instance_id.as_str(), 0, 0);
        Ok(())
    }

    async fn send_message(
        &self,
        instance_id: &InstanceId,
        message: Message,
    ) -> Result<(), StoreError> {
        let c = self.client().await?;
        let mut woken = Woken::default();
        send_in(&c, &self.sql, instance_id, &message, true, &mut woken).await?;
        self.after_commit(woken);
        Ok(())
    }

    async fn fetch_orchestration_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<OrchestrationWorkItem>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let c = self.lease_client().await?;
        let prefix = token_prefix();
        let stmt = c
            .prepare_cached(&self.sql.fetch_orchestrations)
            .await
            .map_err(db_err)?;
        let rows = c
            .query(
                &stmt,
                &[
                    &(max as i64),
                    &prefix,
                    &self.shared.worker,
                    &lease_ms(lease),
                    &self.affinity_ms,
                ],
            )
            .await
            .map_err(db_err)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // Each instance is read on its own: one that cannot be read (a
        // message written by a newer version, a damaged row) stays leased
        // until its lease runs out, and so is retried no faster than
        // that, while the others of the fetch go on. Failing the whole
        // fetch would leave all of them leased, again at each retry.
        let mut items = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut expiry = i64::MAX;
        for r in &rows {
            let id: String = r.get(0);
            expiry = expiry.min(r.get::<_, i64>(6));
            let status = match parse_status(r.get(1)) {
                Ok(s) => s,
                Err(e) => {
                    unreadable(&id, &e);
                    continue;
                }
            };
            items.push(OrchestrationWorkItem {
                lock: WorkLock(r.get(5)),
                instance_id: InstanceId::from_stored(id.clone()),
                runtime_status: status,
                execution_id: r.get(2),
                history_len: r.get::<_, i64>(3) as u64,
                messages: Vec::new(),
                attempts: r.get::<_, i32>(4) as u32,
            });
            ids.push(id);
        }
        self.shared.hint(WorkKind::Orchestration, expiry);
        let read = async {
            let stmt = c
                .prepare_cached(&self.sql.fetch_messages)
                .await
                .map_err(db_err)?;
            c.query(&stmt, &[&ids, &prefix]).await.map_err(db_err)
        };
        let rows = match read.await {
            Ok(rows) => rows,
            Err(e) => {
                // The leases are committed but their items never reach
                // the engine: hand them back now, not after the lease.
                drop(c);
                let back = match self.lease_client().await {
                    Ok(c) => self.release_fetched(&c, &ids, &prefix).await,
                    Err(e) => Err(e),
                };
                if let Err(back) = back {
                    tracing::warn!(error = %back, "cannot hand back the leases of a failed fetch");
                }
                return Err(e);
            }
        };
        let mut by_id: HashMap<String, Vec<StoredMessage>> = HashMap::new();
        let mut unread = std::collections::HashSet::new();
        for r in rows {
            let id: String = r.get(1);
            match parse(r.get(2)) {
                Ok(message) => by_id.entry(id).or_default().push(StoredMessage {
                    id: r.get(0),
                    message,
                }),
                Err(e) => {
                    unreadable(&id, &e);
                    unread.insert(id);
                }
            }
        }
        let mut out = Vec::with_capacity(items.len());
        let mut empty = Vec::new();
        for mut item in items {
            if unread.contains(item.instance_id.as_str()) {
                continue;
            }
            match by_id.remove(item.instance_id.as_str()) {
                Some(messages) => {
                    item.messages = messages;
                    out.push(item);
                }
                // Nothing visible after all (a replaced instance, a race
                // with a purge): given back untouched.
                None => empty.push(item.instance_id.as_str().to_string()),
            }
        }
        if !empty.is_empty() {
            // Failing here must not fail the fetch: its other items would
            // stay leased, unseen. These come back when their lease ends.
            if let Err(e) = self.release_fetched(&c, &empty, &prefix).await {
                tracing::warn!(error = %e, "cannot hand back fetched instances with nothing visible");
            }
        }
        // Oldest work first, as fetched.
        Ok(out)
    }

    async fn load_history(
        &self,
        instance_id: &InstanceId,
    ) -> Result<Vec<HistoryEvent>, StoreError> {
        let c = self.client().await?;
        read_history(&c, &self.sql, instance_id.as_str(), HistoryCap::ALL).await
    }

    async fn commit_turn(&self, commit: TurnCommit) -> Result<(), StoreError> {
        if batch::batchable(&commit) {
            self.commit_together(commit).await
        } else {
            self.commit_single(commit).await
        }
    }

    async fn create_instance_with_turn(
        &self,
        instance: NewInstance,
        commit: TurnCommit,
    ) -> Result<bool, StoreError> {
        if batch::batchable(&commit) {
            self.create_together(instance, commit).await?;
        } else {
            self.create_single(instance, commit, false).await?;
        }
        Ok(true)
    }

    async fn abandon_orchestration_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let Some(id) = token_key(lock) else {
            return Err(StoreError::LeaseLost);
        };
        self.abandon(
            &self.sql.abandon_instance,
            &id,
            lock,
            delay,
            WorkKind::Orchestration,
        )
        .await
    }

    async fn fetch_activity_work(
        &self,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ActivityWorkItem>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let c = self.lease_client().await?;
        let stmt = c
            .prepare_cached(&self.sql.fetch_activities)
            .await
            .map_err(db_err)?;
        let rows = c
            .query(
                &stmt,
                &[
                    &(max as i64),
                    &token_prefix(),
                    &self.shared.worker,
                    &lease_ms(lease),
                ],
            )
            .await
            .map_err(db_err)?;
        let mut items = Vec::with_capacity(rows.len());
        let mut expiry = None::<i64>;
        for r in rows {
            let due: i64 = r.get(8);
            expiry = Some(expiry.map_or(due, |e| e.min(due)));
            let instance_id: String = r.get(1);
            // As for orchestrations: one unreadable input stays leased
            // alone.
            let input = match parse(r.get(5)) {
                Ok(input) => input,
                Err(e) => {
                    unreadable(&instance_id, &e);
                    continue;
                }
            };
            items.push((
                r.get::<_, i64>(0),
                ActivityWorkItem {
                    lock: WorkLock(r.get(7)),
                    activity: Arc::new(NewActivity {
                        instance_id: InstanceId::from_stored(instance_id),
                        execution_id: r.get(2),
                        task_id: r.get::<_, i64>(3) as u64,
                        name: r.get(4),
                        input,
                    }),
                    attempts: r.get::<_, i32>(6) as u32,
                },
            ));
        }
        if let Some(e) = expiry {
            self.shared.hint(WorkKind::Activity, e);
        }
        items.sort_by_key(|(id, _)| *id);
        Ok(items.into_iter().map(|(_, i)| i).collect())
    }

    async fn complete_activity_work(
        &self,
        lock: &WorkLock,
        result: Message,
    ) -> Result<(), StoreError> {
        let Some((row_id, instance_id)) = activity_key(lock) else {
            return Err(StoreError::LeaseLost);
        };
        // Without waiting for its own flush (see `leases`): a result lost
        // in a server crash runs the activity again, which at-least-once
        // allows, and the turn that consumes it commits durably, flushing
        // it first.
        let mut c = self.lease_client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let done = tx
            .prepare_cached(&self.sql.complete_activity)
            .await
            .map_err(db_err)?;
        let send = tx.prepare_cached(&self.sql.send).await.map_err(db_err)?;
        // Both in one round trip (the token names the instance); if the
        // DELETE found no row under this token the lease was lost and the
        // rollback undoes the delivery too. The delivery goes first: it
        // locks the instance row before the DELETE locks the activity row,
        // the order every writer keeps (a purge locks the instance, then
        // deletes its activities), so the two cannot deadlock.
        let args = SendArgs::new(&instance_id, &result);
        let done_params: [&(dyn ToSql + Sync); 2] = [&row_id, &lock.0];
        let send_params = args.params();
        let (delivered, deleted) = futures::join!(
            tx.query_one(&send, &send_params),
            tx.query_opt(&done, &done_params),
        );
        if deleted.map_err(db_err)?.is_none() {
            // Awaited: the delivery holds the instance's row lock until
            // then, and a fetch right after this call must not skip it.
            let _ = tx.rollback().await;
            return Err(StoreError::LeaseLost);
        }
        let mut woken = Woken::default();
        sent(&delivered.map_err(db_err)?, &instance_id, false, &mut woken)?;
        tx.commit().await.map_err(db_err)?;
        self.after_commit(woken);
        Ok(())
    }

    async fn complete_activities(
        &self,
        items: Vec<(WorkLock, Message)>,
    ) -> Vec<Result<(), StoreError>> {
        if items.len() > 1 {
            match self.complete_batch(&items).await {
                Ok(out) => return out,
                // E.g. a deadlock with a turn sending to one of these
                // instances (rare: sub-orchestrations): one at a time.
                Err(e) => tracing::debug!(error = %e, "batch completion failed; one by one"),
            }
        }
        crate::store::complete_one_by_one(self, items).await
    }

    async fn abandon_activity_work(
        &self,
        lock: &WorkLock,
        delay: Duration,
    ) -> Result<(), StoreError> {
        let Some((row_id, _)) = activity_key(lock) else {
            return Err(StoreError::LeaseLost);
        };
        self.abandon(
            &self.sql.abandon_activity,
            &row_id,
            lock,
            delay,
            WorkKind::Activity,
        )
        .await
    }

    async fn next_wake_at(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        let c = self.lease_client().await?;
        let every = Duration::from_millis((self.dead_after_ms / 5).clamp(1, 1000) as u64);
        let look = self.liveness.lock().expect("liveness lock").due(every);
        let worker: &(dyn ToSql + Sync) = &self.shared.worker;
        let (wake, params): (_, &[&(dyn ToSql + Sync)]) = match kind {
            WorkKind::Orchestration => (&self.sql.wake_turns, &[worker, &self.affinity_ms]),
            WorkKind::Activity if look => (&self.sql.wake_activities, &[worker]),
            WorkKind::Activity => (&self.sql.wake_activities, &[]),
        };
        let sql = if look { &wake.look } else { &wake.only };
        let stmt = c.prepare_cached(sql).await.map_err(db_err)?;
        let asked = types::now();
        let row = c.query_one(&stmt, params).await.map_err(db_err)?;
        let wake: Option<i64> = row.get(0);
        let dead_workers: bool = row.get(1);
        self.shared.clock_read(row.get(3), asked, types::now());
        if look {
            let mut liveness = self.liveness.lock().expect("liveness lock");
            liveness.suspect = dead_workers;
            liveness.others = row.get(2);
        }
        self.shared.plan(kind, wake);
        let mut wake = wake;
        if dead_workers {
            let stmt = c.prepare_cached(&self.sql.reap).await.map_err(db_err)?;
            let row = c
                .query_one(&stmt, &[&self.shared.worker, &self.dead_after_ms])
                .await
                .map_err(db_err)?;
            let (orchestrations, activities): (i64, i64) = (row.get(0), row.get(1));
            if orchestrations > 0 || activities > 0 {
                tracing::info!(
                    orchestrations,
                    activities,
                    "took over the leases of a worker that is gone"
                );
                self.shared.announce(orchestrations > 0, activities > 0);
                return Ok(Some(types::now()));
            }
            // A worker without its connection, not yet dead: look again
            // when it would be (unless it reconnects first).
            let recheck: Option<i64> = row.get(2);
            wake = match (wake, recheck) {
                (Some(w), Some(r)) => Some(w.min(r)),
                (w, r) => w.or(r),
            };
            self.shared.plan(kind, wake);
        }
        let until = self
            .liveness
            .lock()
            .expect("liveness lock")
            .until_due(every);
        let wake = wake.map(|w| self.shared.on_host(w));
        if let Some(until) = until.filter(|_| !look) {
            // Wake up for the next look, so an idle process makes it too.
            let at = types::now() + chrono::Duration::milliseconds(until.as_millis() as i64);
            return Ok(Some(wake.map_or(at, |w| w.min(at))));
        }
        Ok(wake)
    }

    async fn read_status(
        &self,
        instance_id: &InstanceId,
        read: StatusRead,
    ) -> Result<Option<InstanceStatus>, StoreError> {
        let mut c = self.client().await?;
        let sql = format!(
            "SELECT {} FROM {}.instances WHERE instance_id = $1",
            status_columns(read.input),
            self.sql.s
        );
        let Some(cap) = read.history else {
            let row = c
                .query_opt(&sql, &[&instance_id.as_str()])
                .await
                .map_err(db_err)?;
            return row.map(|r| status_from_row(&r)).transpose();
        };
        // One snapshot for the status and its history: a turn that
        // commits in between cannot make them disagree.
        let tx = read_snapshot(&mut c).await.map_err(db_err)?;
        let row = tx
            .query_opt(&sql, &[&instance_id.as_str()])
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut status = status_from_row(&row)?;
        status.history = Some(read_history(&tx, &self.sql, instance_id.as_str(), cap).await?);
        tx.commit().await.map_err(db_err)?;
        Ok(Some(status))
    }

    async fn list_instances(&self, query: &InstanceQuery) -> Result<InstancePage, StoreError> {
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut where_ = filter_sql(&query.filter, &mut args);
        if let Some(token) = &query.continuation {
            let (ms, id) = decode_token(token)
                .ok_or_else(|| StoreError::Database("invalid continuation token".into()))?;
            args.push(Box::new(ms));
            let a = args.len();
            args.push(Box::new(id));
            let b = args.len();
            where_.push_str(&format!(
                " AND (created_at < ${a} OR (created_at = ${a} AND instance_id < ${b}))"
            ));
        }
        let size = query.page_size.clamp(1, 1000);
        // Without inputs, the column is read as JSON null: nothing of a
        // large input is loaded.
        let columns = status_columns(query.with_input);
        let sql = format!(
            "SELECT {columns} FROM {}.instances WHERE {where_} \
             ORDER BY created_at DESC, instance_id DESC LIMIT {}",
            self.sql.s,
            size + 1
        );
        let c = self.client().await?;
        // Rows stream in, so a page that fills its byte budget early
        // stops reading (the rest is never held).
        let rows = c
            .query_raw(&sql, params(&args).iter().copied())
            .await
            .map_err(db_err)?;
        futures::pin_mut!(rows);
        let mut page = PageBuilder::new(size, PAGE_PAYLOAD_BYTES);
        while let Some(row) = rows.next().await {
            if !page.push_instance(status_from_row(&row.map_err(db_err)?)?) {
                break;
            }
        }
        Ok(page.instance_page(|s| encode_token(s.created_at.timestamp_millis(), &s.instance_id)))
    }

    async fn purge_instance(&self, instance_id: &InstanceId) -> Result<PurgeOutcome, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let s = &self.sql.s;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT runtime_status FROM {s}.instances WHERE instance_id = $1 FOR UPDATE"
                ),
                &[&instance_id.as_str()],
            )
            .await
            .map_err(db_err)?;
        let Some(row) = row else {
            return Ok(PurgeOutcome::NotFound);
        };
        let status = parse_status(row.get(0))?;
        if !status.is_terminal() {
            // Release the row lock now, not whenever the drop's rollback
            // reaches the server: a fetch would skip the row meanwhile.
            let _ = tx.rollback().await;
            return Ok(PurgeOutcome::NotTerminal(status));
        }
        delete_instances(&tx, s, &[instance_id.as_str().to_string()]).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(PurgeOutcome::Deleted)
    }

    async fn purge_instances(
        &self,
        filter: &InstanceFilter,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let where_ = filter_sql(filter, &mut args);
        let sql = format!(
            "SELECT instance_id FROM {}.instances WHERE {where_} AND runtime_status IN ({}) \
             LIMIT {} FOR UPDATE SKIP LOCKED",
            self.sql.s,
            self.sql.terminal,
            limit.max(1)
        );
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        let ids: Vec<String> = tx
            .query(&sql, &params(&args))
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        delete_instances(&tx, &self.sql.s, &ids).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(ids.len() as u64)
    }

    async fn count_by_status(&self) -> Result<Vec<(RuntimeStatus, u64)>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &format!(
                    "SELECT runtime_status, count(*) FROM {}.instances GROUP BY runtime_status",
                    self.sql.s
                ),
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .filter_map(|r| RuntimeStatus::parse(r.get(0)).map(|s| (s, r.get::<_, i64>(1) as u64)))
            .collect())
    }

    fn lifecycle_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.shared.lifecycle.clone()
    }

    async fn lifecycle_outbox(&self, limit: usize) -> Result<Vec<LifecycleEvent>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.sql.read_lifecycle)
            .await
            .map_err(db_err)?;
        let rows = c.query(&st, &[&(limit as i64)]).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(LifecycleEvent {
                    seq: r.get(0),
                    instance_id: r.get(1),
                    name: r.get(2),
                    execution_id: r.get(3),
                    runtime_status: RuntimeStatus::parse(r.get(4)).unwrap_or(RuntimeStatus::Failed),
                    history_events: r.get::<_, i64>(5) as u64,
                    at: types::from_millis(r.get(6)),
                    failure: r.get::<_, Option<&str>>(7).map(parse).transpose()?,
                })
            })
            .collect()
    }

    async fn ack_lifecycle(&self, seqs: Vec<i64>) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let c = self.client().await?;
        let st = c
            .prepare_cached(&self.sql.ack_lifecycle)
            .await
            .map_err(db_err)?;
        c.execute(&st, &[&seqs]).await.map_err(db_err)?;
        Ok(())
    }

    async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        let c = self.client().await?;
        let s = &self.sql.s;
        let row = c
            .query_one(
                &format!(
                    "SELECT (SELECT count(DISTINCT instance_id) FROM {s}.messages WHERE due_ms <= {NOW}), \
                            (SELECT count(*) FROM {s}.activities)"
                ),
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }
}

/// Logs a leased instance the store cannot read; it stays leased (see
/// `fetch_orchestration_work`).
fn unreadable(id: &str, e: &StoreError) {
    tracing::error!(
        instance = id,
        error = %e,
        "cannot read a leased instance's work; it is left leased until its lease runs out"
    );
}

/// Deletes instances with their history, inbox and queued activities.
pub(super) async fn delete_instances(
    tx: &impl GenericClient,
    s: &str,
    ids: &[String],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    for table in ["history", "messages", "activities", "instances"] {
        tx.execute(
            &format!("DELETE FROM {s}.{table} WHERE instance_id = ANY($1)"),
            &[&ids],
        )
        .await
        .map_err(db_err)?;
    }
    Ok(())
}
