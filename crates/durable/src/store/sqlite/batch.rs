//! The writer's batches: operations queued by callers, applied in one
//! transaction by the group-commit thread, answered after it commits.

use super::*;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A value and its JSON, made on the caller's thread (see the module docs).
pub(super) struct Json<T> {
    pub(super) value: T,
    pub(super) text: String,
}

impl<T: serde::Serialize> Json<T> {
    pub(super) fn new(value: T) -> Self {
        let text = json(&value);
        Self { value, text }
    }
}

/// A new instance with its JSON made ahead.
pub(super) struct PreparedInstance {
    pub(super) inst: NewInstance,
    pub(super) input: String,
    /// Its start message; none when its first turn comes with it.
    pub(super) started: Option<Json<Message>>,
}

impl PreparedInstance {
    pub(super) fn new(inst: NewInstance) -> Self {
        let started = Some(Json::new(inst.start_message()));
        Self {
            input: json(&inst.input),
            inst,
            started,
        }
    }

    /// One whose first turn is committed with it (no start message).
    pub(super) fn with_turn(inst: NewInstance) -> Self {
        Self {
            input: json(&inst.input),
            inst,
            started: None,
        }
    }
}

/// A turn commit with its JSON made ahead; `commit` keeps the status and
/// bookkeeping, the rest is moved into the prepared fields.
pub(super) struct PreparedCommit {
    pub(super) commit: TurnCommit,
    /// The turn's history events as one JSON array (one row).
    pub(super) history: Option<(u64, String)>,
    pub(super) activities: Vec<(NewActivity, String)>,
    pub(super) messages: Vec<(InstanceId, Json<Message>)>,
    pub(super) children: Vec<PreparedInstance>,
}

impl PreparedCommit {
    pub(super) fn new(mut commit: TurnCommit) -> Self {
        let history = commit
            .history
            .first()
            .map(|first| (first.event_id, json(&commit.history)));
        commit.history = Vec::new();
        let activities = std::mem::take(&mut commit.activities)
            .into_iter()
            .map(|a| {
                let input = json(&a.input);
                (a, input)
            })
            .collect();
        let messages = std::mem::take(&mut commit.messages)
            .into_iter()
            .map(|m| (m.instance_id, Json::new(m.message)))
            .collect();
        let children = std::mem::take(&mut commit.new_instances)
            .into_iter()
            .map(PreparedInstance::new)
            .collect();
        Self {
            commit,
            history,
            activities,
            messages,
            children,
        }
    }
}

pub(super) enum Op {
    Create(Box<PreparedInstance>, Reply<()>),
    CreateWithTurn(Box<PreparedInstance>, Box<PreparedCommit>, Reply<()>),
    Send(InstanceId, Json<Message>, Reply<()>),
    Commit(Box<PreparedCommit>, Reply<()>),
    CompleteActivity(WorkLock, Json<Message>, Reply<()>),
    Purge(InstanceId, Reply<PurgeOutcome>),
    PurgeMany(InstanceFilter, usize, Reply<u64>),
    /// Deletes published lifecycle outbox rows.
    AckLifecycle(Vec<i64>, Reply<()>),
    /// Persists delivery counts of redeliveries so poison detection
    /// survives crashes. First deliveries are not written (most work is
    /// delivered once); at open, queued work counts as delivered once, which
    /// over-counts work that was never delivered by at most one.
    MarkFetched {
        instances: Vec<(InstanceId, u32)>,
        activities: Vec<(InstanceId, i64, u32)>,
    },
    /// At close: the activity results held in memory become what they
    /// stand for, a deleted activity row and a message (see
    /// [`SqliteStore::complete_activity_work`]).
    PersistHeld(Vec<(InstanceId, i64, Json<Message>)>),
}

pub(super) enum Outcome {
    Unit(Reply<()>, Result<(), StoreError>),
    Purge(Reply<PurgeOutcome>, Result<PurgeOutcome, StoreError>),
    Count(Reply<u64>, Result<u64, StoreError>),
    Silent,
}

/// The statements of one batch. Each is taken from rusqlite's statement
/// cache once per batch and kept until the batch ends: a cache lookup
/// hashes the whole SQL text and putting a statement back clears its
/// bindings, together about a fourteenth of the writer's CPU when every
/// statement went through the cache (14 per Galaxy_Create). Keyed by the
/// address and length of the `'static` SQL text.
pub(super) struct Stmts<'c> {
    pub(super) conn: &'c Connection,
    pub(super) kept: RefCell<Vec<(usize, usize, CachedStatement<'c>)>>,
}

impl<'c> Stmts<'c> {
    pub(super) fn new(conn: &'c Connection) -> Self {
        Self {
            conn,
            kept: RefCell::new(Vec::with_capacity(16)),
        }
    }

    /// The statement for `sql`, returned to this batch's set when dropped.
    pub(super) fn prepare_cached(&self, sql: &'static str) -> rusqlite::Result<Kept<'_, 'c>> {
        let key = (sql.as_ptr() as usize, sql.len());
        let found = {
            let mut kept = self.kept.borrow_mut();
            kept.iter()
                .position(|(p, n, _)| (*p, *n) == key)
                .map(|i| kept.swap_remove(i).2)
        };
        let stmt = match found {
            Some(stmt) => stmt,
            None => self.conn.prepare_cached(sql)?,
        };
        Ok(Kept {
            owner: self,
            key,
            stmt: Some(stmt),
        })
    }
}

impl std::ops::Deref for Stmts<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// A statement on loan from [`Stmts`].
pub(super) struct Kept<'s, 'c> {
    pub(super) owner: &'s Stmts<'c>,
    pub(super) key: (usize, usize),
    pub(super) stmt: Option<CachedStatement<'c>>,
}

impl<'c> std::ops::Deref for Kept<'_, 'c> {
    type Target = rusqlite::Statement<'c>;
    fn deref(&self) -> &Self::Target {
        self.stmt.as_ref().expect("statement on loan")
    }
}

impl std::ops::DerefMut for Kept<'_, '_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.stmt.as_mut().expect("statement on loan")
    }
}

impl Drop for Kept<'_, '_> {
    fn drop(&mut self) {
        if let Some(stmt) = self.stmt.take() {
            self.owner
                .kept
                .borrow_mut()
                .push((self.key.0, self.key.1, stmt));
        }
    }
}

/// Applies `batch` in one transaction, then updates the in-memory queues,
/// answers every operation and wakes the dispatchers.
pub(super) fn run_batch(conn: &mut Connection, batch: Vec<Op>, shared: &Shared) {
    let mut claims = Vec::new();
    let orphans = std::mem::take(&mut shared.queues.lock().expect("queues lock").orphans);
    let (effects, outcomes, committed) = match conn.transaction() {
        Ok(txn) => {
            let tx = Stmts::new(&txn);
            let mut effects = Vec::with_capacity(batch.len());
            let mut outcomes = Vec::with_capacity(batch.len());
            // Rows of held results nobody will consume; if this batch
            // fails they stay, and run again after a restart.
            let mut fatal: Option<String> = orphans
                .iter()
                .try_for_each(|(id, row)| delete_activity_row(&tx, id, *row).map(|_| ()))
                .err()
                .map(|e| e.to_string());
            for op in batch {
                if let Some(msg) = &fatal {
                    outcomes.push(fail_op(op, msg.clone()));
                    continue;
                }
                let (effect, outcome, error) = apply_op(&tx, op, shared, &mut claims);
                fatal = error;
                effects.push(effect);
                outcomes.push(outcome);
            }
            // The statements go back to rusqlite's cache before the
            // transaction ends.
            drop(tx);
            let committed = match fatal {
                // Dropping the transaction rolls the whole batch back.
                Some(msg) => Err(StoreError::Database(msg)),
                None => txn.commit().map_err(db_err),
            };
            (effects, outcomes, committed)
        }
        Err(e) => {
            let err = db_err(e);
            let outcomes = batch
                .into_iter()
                .map(|op| fail_op(op, err.to_string()))
                .collect();
            (
                Vec::new(),
                outcomes,
                Err(StoreError::Database(err.to_string())),
            )
        }
    };
    let mut notify_orch = false;
    let mut notify_act = false;
    {
        let mut q = shared.queues.lock().expect("queues lock");
        if committed.is_ok() {
            for effect in effects {
                let (o, a) = apply_effect(&mut q, effect);
                notify_orch |= o;
                notify_act |= a;
            }
        }
        // After the effects: a claim whose operation landed has no lease
        // left to return.
        for claim in claims {
            let (o, a) = q.unclaim(claim);
            notify_orch |= o;
            notify_act |= a;
        }
    }
    for outcome in outcomes {
        let failed = committed.as_ref().err().map(|e| e.to_string());
        match outcome {
            Outcome::Unit(tx, r) => {
                let _ = tx.send(match failed {
                    Some(e) => Err(StoreError::Database(e)),
                    None => r,
                });
            }
            Outcome::Purge(tx, r) => {
                let _ = tx.send(match failed {
                    Some(e) => Err(StoreError::Database(e)),
                    None => r,
                });
            }
            Outcome::Count(tx, r) => {
                let _ = tx.send(match failed {
                    Some(e) => Err(StoreError::Database(e)),
                    None => r,
                });
            }
            Outcome::Silent => {}
        }
    }
    shared.signal.wake(notify_orch, notify_act);
    if shared.lifecycle_written.swap(false, Ordering::Relaxed) {
        if let (Ok(()), Some(n)) = (&committed, &shared.lifecycle) {
            n.notify_one();
        }
    }
}

pub(super) fn fail_op(op: Op, msg: String) -> Outcome {
    let e = StoreError::Database(msg);
    match op {
        Op::Create(_, r)
        | Op::CreateWithTurn(_, _, r)
        | Op::Send(_, _, r)
        | Op::Commit(_, r)
        | Op::CompleteActivity(_, _, r)
        | Op::AckLifecycle(_, r) => Outcome::Unit(r, Err(e)),
        Op::Purge(_, r) => Outcome::Purge(r, Err(e)),
        Op::PurgeMany(_, _, r) => Outcome::Count(r, Err(e)),
        Op::MarkFetched { .. } | Op::PersistHeld(_) => Outcome::Silent,
    }
}

/// Applies one operation. Returns the database error that must abort the
/// batch, if any; every other error was found before the operation wrote.
pub(super) fn apply_op(
    tx: &Stmts<'_>,
    op: Op,
    shared: &Shared,
    claims: &mut Vec<Claim>,
) -> (Effect, Outcome, Option<String>) {
    macro_rules! finish {
        ($result:expr, $wrap:expr, $reply:expr) => {{
            match $result {
                Ok((effect, value)) => (effect, $wrap($reply, Ok(value)), None),
                Err(e) => {
                    let fatal = matches!(e, StoreError::Database(_)).then(|| e.to_string());
                    (Effect::None, $wrap($reply, Err(e)), fatal)
                }
            }
        }};
    }
    match op {
        Op::Create(inst, r) => finish!(create(tx, shared, *inst), Outcome::Unit, r),
        Op::CreateWithTurn(inst, c, r) => {
            finish!(create_with_turn(tx, shared, *inst, *c), Outcome::Unit, r)
        }
        Op::Send(id, msg, r) => finish!(send(tx, shared, &id, msg, true), Outcome::Unit, r),
        Op::Commit(c, r) => finish!(commit(tx, *c, shared, claims), Outcome::Unit, r),
        Op::CompleteActivity(lock, msg, r) => {
            finish!(
                complete_activity(tx, &lock, msg, shared, claims),
                Outcome::Unit,
                r
            )
        }
        Op::Purge(id, r) => finish!(purge_one(tx, &id), Outcome::Purge, r),
        Op::PurgeMany(f, limit, r) => finish!(purge_many(tx, &f, limit), Outcome::Count, r),
        Op::AckLifecycle(seqs, r) => finish!(ack_lifecycle(tx, &seqs), Outcome::Unit, r),
        Op::MarkFetched {
            instances,
            activities,
        } => {
            let fatal = mark_fetched(tx, &instances, &activities)
                .err()
                .map(|e| e.to_string());
            (Effect::None, Outcome::Silent, fatal)
        }
        Op::PersistHeld(held) => {
            // Memory is not updated: the store is closing.
            let fatal = persist_held(tx, shared, held).err().map(|e| e.to_string());
            (Effect::None, Outcome::Silent, fatal)
        }
    }
}

pub(super) type OpResult<T> = Result<(Effect, T), StoreError>;
