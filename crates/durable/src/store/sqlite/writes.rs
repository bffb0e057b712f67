//! What an operation does inside the writer's transaction: creations,
//! sends, turn commits, completions, purges, lease bookkeeping.

use super::*;

pub(super) fn insert_message(
    tx: &Stmts<'_>,
    shared: &Shared,
    id: &InstanceId,
    meta: Meta,
    message: Json<Message>,
) -> Result<Delivery, StoreError> {
    let Json {
        value: message,
        text,
    } = message;
    let message_id = shared.take_id();
    tx.prepare_cached(
        "INSERT INTO messages (instance_id, id, visible_at, message) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(db_err)?
    .execute(params![
        id.as_str(),
        message_id,
        message.visible_at.map(|t| t.timestamp_millis()),
        text
    ])
    .map_err(db_err)?;
    Ok(Delivery {
        instance_id: id.clone(),
        meta,
        message: StoredMessage {
            id: message_id,
            message,
        },
        fresh: false,
    })
}

/// Makes room for a new instance: a live one of that id is a conflict, a
/// finished one is deleted with its history and inbox.
pub(super) fn clear_finished(tx: &Stmts<'_>, id: &InstanceId) -> Result<(), StoreError> {
    if let Some((meta, _)) = read_meta(tx, id)? {
        if !meta.status.is_terminal() {
            return Err(StoreError::Conflict(id.clone()));
        }
        for sql in [
            "DELETE FROM instances WHERE instance_id = ?1",
            "DELETE FROM history WHERE instance_id = ?1",
            "DELETE FROM messages WHERE instance_id = ?1",
        ] {
            tx.prepare_cached(sql)
                .map_err(db_err)?
                .execute([id.as_str()])
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Runs `insert` (an `INSERT .. ON CONFLICT DO NOTHING` of an instance
/// row); when the id is taken, clears a finished instance of that id (a
/// live one, or any one when `only_if_absent`, is a conflict) and inserts
/// again. Ids are almost always new, so
/// the common case is one statement instead of a lookup and an insert.
pub(super) fn insert_or_replace_finished(
    tx: &Stmts<'_>,
    id: &InstanceId,
    only_if_absent: bool,
    insert: impl Fn() -> Result<usize, StoreError>,
) -> Result<(), StoreError> {
    if insert()? == 1 {
        return Ok(());
    }
    if only_if_absent {
        return Err(StoreError::Conflict(id.clone()));
    }
    clear_finished(tx, id)?;
    if insert()? == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(id.clone()))
    }
}

/// Inserts an instance's row (replacing a finished one of the same id)
/// and, unless its first turn comes with it, its start message.
pub(super) fn insert_instance(
    tx: &Stmts<'_>,
    shared: &Shared,
    prepared: PreparedInstance,
) -> Result<Option<Delivery>, StoreError> {
    let PreparedInstance {
        inst,
        input,
        started,
    } = prepared;
    let created = inst.created_at.timestamp_millis();
    insert_or_replace_finished(tx, &inst.instance_id, inst.only_if_absent, || {
        tx.prepare_cached(
            "INSERT INTO instances (instance_id, name, execution_id, runtime_status, input, created_at, last_updated_at, parent_instance_id) \
             VALUES (?1, ?2, ?3, 'Pending', ?4, ?5, ?5, ?6) ON CONFLICT (instance_id) DO NOTHING",
        )
        .map_err(db_err)?
        .execute(params![
            inst.instance_id.as_str(),
            inst.name,
            inst.execution_id,
            input,
            created,
            inst.parent.as_ref().map(|p| p.instance_id.as_str().to_string()),
        ])
        .map_err(db_err)
    })?;
    let meta = Meta {
        status: RuntimeStatus::Pending,
        execution_id: inst.execution_id.clone(),
        history_len: 0,
    };
    let Some(started) = started else {
        return Ok(None);
    };
    let mut d = insert_message(tx, shared, &inst.instance_id, meta, started)?;
    d.fresh = true;
    Ok(Some(d))
}

pub(super) fn create(tx: &Stmts<'_>, shared: &Shared, inst: PreparedInstance) -> OpResult<()> {
    let d = insert_instance(tx, shared, inst)?;
    Ok((Effect::Deliver(d.into_iter().collect()), ()))
}

/// Creates an instance and commits its first turn (see
/// [`Store::create_instance_with_turn`]): the turn's status update then
/// matches the row just inserted instead of a leased one.
pub(super) fn create_with_turn(
    tx: &Stmts<'_>,
    shared: &Shared,
    inst: PreparedInstance,
    mut prepared: PreparedCommit,
) -> OpResult<()> {
    let id = inst.inst.instance_id.clone();
    prepared.commit.consumed.clear();
    prepared.commit.lock = WorkLock(String::new());
    let (effect, ()) = commit_body(tx, prepared, shared, Row::Insert(&inst))?;
    Ok((Effect::Created(id, Box::new(effect)), ()))
}

/// How a commit writes its instance's row.
pub(super) enum Row<'a> {
    /// Updates the row, which must still be as the lease holder saw it
    /// (execution and history length); a row that changed is a lost lease.
    Update(Meta),
    /// Inserts the row of an instance created with this, its first turn,
    /// with the turn's status (no Pending row updated a moment later).
    Insert(&'a PreparedInstance),
}

/// Writes the lifecycle outbox rows of a commit whose instance row was
/// just written (its name comes from there).
pub(super) fn write_lifecycle(
    tx: &Stmts<'_>,
    shared: &Shared,
    id: &str,
    before: Option<(RuntimeStatus, bool)>,
    s: &StatusUpdate,
) -> Result<(), StoreError> {
    let (before, same) = before.map_or((None, true), |(b, same)| (Some(b), same));
    for status in crate::store::lifecycle::transitions(before, same, s.runtime_status) {
        let failure = (status == RuntimeStatus::Failed)
            .then(|| s.failure.as_ref().map(json))
            .flatten();
        tx.prepare_cached(
            "INSERT INTO lifecycle_outbox (instance_id, name, execution_id, runtime_status, history_events, at, failure) \
             SELECT instance_id, name, ?2, ?3, ?4, ?5, ?6 FROM instances WHERE instance_id = ?1",
        )
        .map_err(db_err)?
        .execute(params![
            id,
            s.execution_id,
            status.as_str(),
            s.history_events as i64,
            s.updated_at.timestamp_millis(),
            failure,
        ])
        .map_err(db_err)?;
        shared.lifecycle_written.store(true, Ordering::Relaxed);
    }
    Ok(())
}

pub(super) fn ack_lifecycle(tx: &Stmts<'_>, seqs: &[i64]) -> OpResult<()> {
    let (min, max) = match (seqs.iter().min(), seqs.iter().max()) {
        (Some(a), Some(b)) => (*a, *b),
        _ => return Ok((Effect::None, ())),
    };
    // What a relay acknowledges is a run of rows read in order: one range.
    let increasing = seqs.windows(2).all(|w| w[0] < w[1]);
    if increasing && (max - min + 1) as usize == seqs.len() {
        tx.prepare_cached("DELETE FROM lifecycle_outbox WHERE seq BETWEEN ?1 AND ?2")
            .map_err(db_err)?
            .execute([min, max])
            .map_err(db_err)?;
        return Ok((Effect::None, ()));
    }
    let mut del = tx
        .prepare_cached("DELETE FROM lifecycle_outbox WHERE seq = ?1")
        .map_err(db_err)?;
    for seq in seqs {
        del.execute([seq]).map_err(db_err)?;
    }
    Ok((Effect::None, ()))
}

/// Is this message one a terminal instance still takes?
pub(super) fn accepted_when_terminal(status: RuntimeStatus, kind: &EventKind) -> bool {
    status == RuntimeStatus::Failed && matches!(kind, EventKind::Rewound { .. })
}

/// Sends a message. `external` sends (client requests) get errors for a
/// missing or finished instance; internal ones (results) are dropped.
pub(super) fn send_inner(
    tx: &Stmts<'_>,
    shared: &Shared,
    id: &InstanceId,
    message: Json<Message>,
    external: bool,
) -> Result<Option<Delivery>, StoreError> {
    let Some((meta, _)) = read_meta(tx, id)? else {
        return if external {
            Err(StoreError::NotFound(id.clone()))
        } else {
            Ok(None)
        };
    };
    if meta.status.is_terminal() && !accepted_when_terminal(meta.status, &message.value.kind) {
        return if external {
            Err(StoreError::Finished(id.clone()))
        } else {
            Ok(None)
        };
    }
    insert_message(tx, shared, id, meta, message).map(Some)
}

pub(super) fn send(
    tx: &Stmts<'_>,
    shared: &Shared,
    id: &InstanceId,
    message: Json<Message>,
    external: bool,
) -> OpResult<()> {
    let d = send_inner(tx, shared, id, message, external)?;
    Ok((Effect::Deliver(d.into_iter().collect()), ()))
}

pub(super) fn commit(
    tx: &Stmts<'_>,
    prepared: PreparedCommit,
    shared: &Shared,
    claims: &mut Vec<Claim>,
) -> OpResult<()> {
    let (id, token) = (&prepared.commit.instance_id, &prepared.commit.lock.0);
    let held = shared
        .queues
        .lock()
        .expect("queues lock")
        .claim_instance(id, token);
    let Some(held) = held else {
        return Err(StoreError::LeaseLost);
    };
    claims.push(Claim::Instance(id.clone(), token.clone()));
    commit_body(tx, prepared, shared, Row::Update(held))
}

/// Writes a turn: its instance's row (see [`Row`]), history, consumed
/// messages, activities, children and outgoing messages.
pub(super) fn commit_body(
    tx: &Stmts<'_>,
    prepared: PreparedCommit,
    shared: &Shared,
    row: Row<'_>,
) -> OpResult<()> {
    let PreparedCommit {
        commit: c,
        history,
        activities: new_activities,
        messages,
        children,
    } = prepared;
    let id = c.instance_id.as_str();
    let s = &c.status;
    let terminal = s.runtime_status.is_terminal();
    let before = match &row {
        Row::Update(held) => Some((held.status, held.execution_id == s.execution_id)),
        Row::Insert(_) => None,
    };
    match row {
        // The status update goes first and doubles as the lease check:
        // memory is only updated after a batch commits, so a purge or a
        // re-create earlier in this batch may have deleted or replaced the
        // row the holder worked on, and then it matches nothing. Nothing was
        // written yet, so failing here leaves the batch intact.
        Row::Update(held) => {
            let updated = tx
                .prepare_cached(
                "UPDATE instances SET runtime_status = ?2, execution_id = ?3, input = COALESCE(?4, input), output = ?5, \
                 custom_status = ?6, failure = ?7, history_events = ?8, history_bytes = ?9, last_updated_at = ?10, attempts = 0 \
                 WHERE instance_id = ?1 AND execution_id = ?11 AND history_events = ?12",
            )
            .map_err(db_err)?
            .execute(params![
                id,
                s.runtime_status.as_str(),
                s.execution_id,
                s.input.as_ref().map(json),
                s.output.as_ref().map(json),
                s.custom_status.as_ref().map(json),
                s.failure.as_ref().map(json),
                s.history_events as i64,
                s.history_bytes as i64,
                s.updated_at.timestamp_millis(),
                held.execution_id,
                held.history_len as i64,
            ])
            .map_err(db_err)?;
            if updated == 0 {
                return Err(StoreError::LeaseLost);
            }
        }
        Row::Insert(new) => {
            let inst = &new.inst;
            insert_or_replace_finished(tx, &inst.instance_id, inst.only_if_absent, || {
                tx.prepare_cached(
                "INSERT INTO instances (instance_id, name, execution_id, runtime_status, input, output, custom_status, \
                 failure, created_at, last_updated_at, parent_instance_id, history_events, history_bytes) \
                 VALUES (?1, ?2, ?3, ?4, COALESCE(?5, ?6), ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                 ON CONFLICT (instance_id) DO NOTHING",
            )
            .map_err(db_err)?
            .execute(params![
                id,
                inst.name,
                s.execution_id,
                s.runtime_status.as_str(),
                s.input.as_ref().map(json),
                new.input,
                s.output.as_ref().map(json),
                s.custom_status.as_ref().map(json),
                s.failure.as_ref().map(json),
                inst.created_at.timestamp_millis(),
                s.updated_at.timestamp_millis(),
                inst.parent.as_ref().map(|p| p.instance_id.as_str().to_string()),
                s.history_events as i64,
                s.history_bytes as i64,
            ])
            .map_err(db_err)
            })?;
        }
    }
    if shared.lifecycle.is_some() {
        write_lifecycle(tx, shared, id, before, s)?;
    }
    if c.replace_history {
        tx.prepare_cached("DELETE FROM history WHERE instance_id = ?1")
            .map_err(db_err)?
            .execute([id])
            .map_err(db_err)?;
    }
    if let Some((first, events)) = history {
        tx.prepare_cached(
            "INSERT INTO history (instance_id, first_event_id, events) VALUES (?1, ?2, ?3)",
        )
        .map_err(db_err)?
        .execute(params![id, first as i64, events])
        .map_err(db_err)?;
    }
    {
        // A negative id is an activity result held in memory (see
        // `complete_activity_work`): consuming it deletes the activity row.
        let mut del = tx
            .prepare_cached("DELETE FROM messages WHERE instance_id = ?1 AND id = ?2")
            .map_err(db_err)?;
        let mut del_act = tx
            .prepare_cached("DELETE FROM activities WHERE instance_id = ?1 AND id = ?2")
            .map_err(db_err)?;
        for m in &c.consumed {
            if *m < 0 {
                del_act.execute(params![id, -m]).map_err(db_err)?;
            } else if !terminal {
                del.execute(params![id, m]).map_err(db_err)?;
            }
        }
    }
    if terminal {
        // A finished instance takes no more work: drop what waits for it.
        tx.prepare_cached("DELETE FROM messages WHERE instance_id = ?1")
            .map_err(db_err)?
            .execute([id])
            .map_err(db_err)?;
    }
    let mut activities = Vec::with_capacity(new_activities.len());
    {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO activities (instance_id, id, execution_id, task_id, name, input) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db_err)?;
        for (a, input) in new_activities {
            let activity_id = shared.take_id();
            ins.execute(params![
                a.instance_id.as_str(),
                activity_id,
                a.execution_id,
                a.task_id as i64,
                a.name,
                input
            ])
            .map_err(db_err)?;
            activities.push(ActRow {
                id: activity_id,
                activity: Arc::new(a),
                attempts: 0,
            });
        }
    }
    let mut deliveries = Vec::new();
    for child in children {
        let parent_link = child.inst.parent.clone();
        let created_at = child.inst.created_at;
        match insert_instance(tx, shared, child) {
            Ok(d) => deliveries.extend(d),
            Err(StoreError::Conflict(child_id)) => {
                let parent = parent_link
                    .as_ref()
                    .expect("sub-orchestrations have a parent");
                let message = Json::new(Message {
                    execution_id: Some(parent.execution_id.clone()),
                    visible_at: None,
                    sent_at: created_at,
                    kind: EventKind::SubOrchestrationFailed {
                        task_id: parent.task_id,
                        error: FailureDetails::new(
                            "Conflict",
                            format!("sub-orchestration instance '{child_id}' already exists and is not finished"),
                        ),
                    },
                });
                deliveries.extend(send_inner(tx, shared, &parent.instance_id, message, false)?);
            }
            Err(e) => return Err(e),
        }
    }
    for (to, message) in messages {
        deliveries.extend(send_inner(tx, shared, &to, message, false)?);
    }
    let meta = Meta {
        status: s.runtime_status,
        execution_id: s.execution_id.clone(),
        history_len: s.history_events,
    };
    Ok((
        Effect::Commit {
            instance_id: c.instance_id,
            token: c.lock.0,
            consumed: c.consumed,
            meta,
            cleared: terminal,
            deliveries,
            activities,
        },
        (),
    ))
}

pub(super) fn complete_activity(
    tx: &Stmts<'_>,
    lock: &WorkLock,
    message: Json<Message>,
    shared: &Shared,
    claims: &mut Vec<Claim>,
) -> OpResult<()> {
    let row = shared
        .queues
        .lock()
        .expect("queues lock")
        .claim_activity(&lock.0);
    let Some(row) = row else {
        return Err(StoreError::LeaseLost);
    };
    claims.push(Claim::Activity(lock.0.clone()));
    let (row_id, instance_id) = (row.id, row.activity.instance_id.clone());
    if !delete_activity_row(tx, &instance_id, row_id)? {
        // Purged earlier in this batch: nothing left to complete.
        return Err(StoreError::LeaseLost);
    }
    let d = send_inner(tx, shared, &instance_id, message, false)?;
    Ok((
        Effect::ActivityDone {
            token: lock.0.clone(),
            deliveries: d.into_iter().collect(),
        },
        (),
    ))
}

pub(super) fn purge_one(tx: &Stmts<'_>, id: &InstanceId) -> OpResult<PurgeOutcome> {
    match read_meta(tx, id)? {
        None => Ok((Effect::None, PurgeOutcome::NotFound)),
        Some((meta, _)) if !meta.status.is_terminal() => {
            Ok((Effect::None, PurgeOutcome::NotTerminal(meta.status)))
        }
        Some(_) => {
            delete_instance(tx, id.as_str())?;
            Ok((Effect::Purged(vec![id.clone()]), PurgeOutcome::Deleted))
        }
    }
}

pub(super) fn delete_instance(tx: &Stmts<'_>, id: &str) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM instances WHERE instance_id = ?1",
        "DELETE FROM history WHERE instance_id = ?1",
        "DELETE FROM messages WHERE instance_id = ?1",
        "DELETE FROM activities WHERE instance_id = ?1",
    ] {
        tx.prepare_cached(sql)
            .map_err(db_err)?
            .execute([id])
            .map_err(db_err)?;
    }
    Ok(())
}

pub(super) fn purge_many(tx: &Stmts<'_>, f: &InstanceFilter, limit: usize) -> OpResult<u64> {
    let mut args = Vec::new();
    let mut where_ = filter_sql(f, &mut args);
    where_.push_str(&format!(" AND runtime_status IN ({})", terminal_list()));
    let sql = format!("SELECT instance_id FROM instances WHERE {where_} LIMIT {limit}");
    let ids: Vec<String> = {
        let mut stmt = tx.prepare(&sql).map_err(db_err)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get(0))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    for id in &ids {
        delete_instance(tx, id)?;
    }
    let n = ids.len() as u64;
    Ok((
        Effect::Purged(ids.into_iter().map(InstanceId::from_stored).collect()),
        n,
    ))
}

pub(super) fn mark_fetched(
    tx: &Stmts<'_>,
    instances: &[(InstanceId, u32)],
    activities: &[(InstanceId, i64, u32)],
) -> Result<(), StoreError> {
    let mut upd = tx
        .prepare_cached("UPDATE instances SET attempts = ?2 WHERE instance_id = ?1")
        .map_err(db_err)?;
    for (id, n) in instances {
        upd.execute(params![id.as_str(), n]).map_err(db_err)?;
    }
    let mut upd = tx
        .prepare_cached("UPDATE activities SET attempts = ?3 WHERE instance_id = ?1 AND id = ?2")
        .map_err(db_err)?;
    for (instance, id, n) in activities {
        upd.execute(params![instance.as_str(), id, n])
            .map_err(db_err)?;
    }
    Ok(())
}

pub(super) fn persist_held(
    tx: &Stmts<'_>,
    shared: &Shared,
    held: Vec<(InstanceId, i64, Json<Message>)>,
) -> Result<(), StoreError> {
    for (id, row, message) in held {
        if delete_activity_row(tx, &id, row)? {
            send_inner(tx, shared, &id, message, false)?;
        }
    }
    Ok(())
}

/// Deletes one activity row; false when it was already gone (purged).
pub(super) fn delete_activity_row(
    tx: &Stmts<'_>,
    id: &InstanceId,
    row: i64,
) -> Result<bool, StoreError> {
    let deleted = tx
        .prepare_cached("DELETE FROM activities WHERE instance_id = ?1 AND id = ?2")
        .map_err(db_err)?
        .execute(params![id.as_str(), row])
        .map_err(db_err)?;
    Ok(deleted > 0)
}
