//! The in-memory scheduler: what is due, leased and held, rebuilt from
//! the tables at open and updated by the writer only after a commit.

use super::*;

#[derive(Debug)]
pub(super) struct Lease {
    pub(super) token: String,
    pub(super) expires: Instant,
    /// Set while the writer applies a commit made under this lease (see
    /// [`Claim`]); such a lease neither expires nor can be used again.
    pub(super) committing: bool,
}

/// A lease the writer validated for a commit or completion that is not
/// applied to memory yet.
///
/// The writer checks a lease, then writes and commits the transaction, and
/// only then updates memory. Without a claim the lease could expire in
/// between and the work be handed to a second holder, who would then act on
/// messages the first holder's commit consumes (and a second completion in
/// the same batch would deliver a result twice). A claimed lease is taken
/// out of the expiry maps, so it cannot expire, and refuses a second claim.
/// After each batch the writer returns the claims whose operation did not
/// land to the expiry maps, so the holder can retry or abandon.
pub(super) enum Claim {
    Instance(InstanceId, String),
    Activity(String),
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) meta: Meta,
    pub(super) visible: Vec<StoredMessage>,
    pub(super) delayed: usize,
    pub(super) lease: Option<Lease>,
    pub(super) queued: bool,
    pub(super) attempts: u32,
}

#[derive(Clone, Debug)]
pub(super) struct ActRow {
    pub(super) id: i64,
    pub(super) activity: Arc<NewActivity>,
    pub(super) attempts: u32,
}

#[derive(Default)]
pub(super) struct Queues {
    pub(super) entries: HashMap<InstanceId, Entry>,
    /// Instances with history and new messages: they go first, so work
    /// already started finishes before more is started. That keeps the set
    /// of running instances (and the engine's cache of them) small and
    /// latency low under a burst of starts.
    pub(super) ready: VecDeque<InstanceId>,
    /// Instances that have not run a turn yet (history empty).
    pub(super) ready_new: VecDeque<InstanceId>,
    pub(super) delayed: BTreeMap<(i64, i64), (InstanceId, StoredMessage)>,
    pub(super) leases: BTreeMap<(Instant, String), InstanceId>,
    pub(super) act_ready: VecDeque<ActRow>,
    pub(super) act_locked: HashMap<String, (ActRow, Instant)>,
    pub(super) act_leases: BTreeMap<(Instant, String), ()>,
    pub(super) next_token: u64,
    /// Every instance that is not finished, with its status as last
    /// committed: lets an activity result be delivered without the writer.
    pub(super) live: HashMap<InstanceId, Meta>,
    /// Activity results delivered from memory (see
    /// [`SqliteStore::complete_activity_work`]), by activity row id: the row
    /// stays until the turn that consumes the result deletes it.
    pub(super) held: HashMap<i64, (InstanceId, Message)>,
    /// Activity rows whose held result will never be consumed (their
    /// instance finished first): deleted by the writer's next batch.
    pub(super) orphans: Vec<(InstanceId, i64)>,
}

impl Queues {
    pub(super) fn token(&mut self, prefix: char) -> String {
        self.next_token += 1;
        format!("{prefix}{}", self.next_token)
    }

    pub(super) fn enqueue(&mut self, id: &InstanceId) {
        if let Some(e) = self.entries.get_mut(id) {
            if !e.queued && e.lease.is_none() && !e.visible.is_empty() {
                e.queued = true;
                if e.meta.history_len == 0 {
                    self.ready_new.push_back(id.clone());
                } else {
                    self.ready.push_back(id.clone());
                }
            }
        }
    }

    pub(super) fn entry(&mut self, id: &InstanceId, meta: &Meta) -> &mut Entry {
        self.entries.entry(id.clone()).or_insert_with(|| Entry {
            meta: meta.clone(),
            visible: Vec::new(),
            delayed: 0,
            lease: None,
            queued: false,
            attempts: 0,
        })
    }

    pub(super) fn deliver(&mut self, d: Delivery) {
        if d.fresh {
            self.reset(&d.instance_id);
            self.live.insert(d.instance_id.clone(), d.meta.clone());
        }
        let now = types::now().timestamp_millis();
        match d.message.message.visible_at.map(|t| t.timestamp_millis()) {
            Some(at) if at > now => {
                self.entry(&d.instance_id, &d.meta).delayed += 1;
                self.delayed
                    .insert((at, d.message.id), (d.instance_id, d.message));
            }
            _ => {
                self.entry(&d.instance_id, &d.meta).visible.push(d.message);
                self.enqueue(&d.instance_id);
            }
        }
    }

    /// Delivers an activity result from memory when the lease is held (and
    /// not being completed by the writer) and the instance is live; gives
    /// the result back otherwise. See [`SqliteStore::complete_activity_work`].
    pub(super) fn hold_result(&mut self, lock: &WorkLock, result: Message) -> Option<Message> {
        let eligible = self.act_locked.get(&lock.0).and_then(|(row, expires)| {
            let meta = self.live.get(&row.activity.instance_id)?.clone();
            self.act_leases
                .contains_key(&(*expires, lock.0.clone()))
                .then(|| (row.id, row.activity.instance_id.clone(), *expires, meta))
        });
        let Some((row, instance_id, expires, meta)) = eligible else {
            return Some(result);
        };
        self.act_locked.remove(&lock.0);
        self.act_leases.remove(&(expires, lock.0.clone()));
        self.held.insert(row, (instance_id.clone(), result.clone()));
        self.deliver(Delivery {
            instance_id,
            meta,
            message: StoredMessage {
                id: -row,
                message: result,
            },
            fresh: false,
        });
        None
    }

    pub(super) fn forget_if_idle(&mut self, id: &InstanceId) {
        if let Some(e) = self.entries.get(id) {
            if e.visible.is_empty() && e.delayed == 0 && e.lease.is_none() && !e.queued {
                self.entries.remove(id);
            }
        }
    }

    /// Moves due delayed messages to their instances and returns expired
    /// leases to the queues.
    pub(super) fn promote(&mut self) {
        let now_ms = types::now().timestamp_millis();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let (id, msg) = entry.remove();
            if let Some(e) = self.entries.get_mut(&id) {
                e.delayed -= 1;
                e.visible.push(msg);
            }
            self.enqueue(&id);
        }
        let now = Instant::now();
        while let Some(entry) = self.leases.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, token), id) = entry.remove_entry();
            if let Some(e) = self.entries.get_mut(&id) {
                if e.lease.as_ref().is_some_and(|l| l.token == token) {
                    e.lease = None;
                }
            }
            self.enqueue(&id);
        }
        while let Some(entry) = self.act_leases.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, token), ()) = entry.remove_entry();
            if let Some((row, _)) = self.act_locked.remove(&token) {
                self.act_ready.push_back(row);
            }
        }
    }

    pub(super) fn release(&mut self, id: &InstanceId, token: &str) -> bool {
        let Some(e) = self.entries.get_mut(id) else {
            return false;
        };
        match &e.lease {
            Some(l) if l.token == token => {
                self.leases.remove(&(l.expires, l.token.clone()));
                e.lease = None;
                true
            }
            _ => false,
        }
    }

    /// Forgets everything memory holds about an instance whose rows were
    /// deleted or replaced (purge, create over a finished instance): its
    /// messages, delayed ones included, and its lease, whose holder then gets
    /// [`StoreError::LeaseLost`] instead of committing into the new instance.
    pub(super) fn reset(&mut self, id: &InstanceId) {
        self.held.retain(|_, (i, _)| i != id);
        if let Some(e) = self.entries.remove(id) {
            if e.delayed > 0 {
                self.delayed.retain(|_, (i, _)| i != id);
            }
            if let Some(l) = e.lease {
                self.leases.remove(&(l.expires, l.token));
            }
        }
    }

    /// Claims the lease `token` on `id` for a commit (see [`Claim`]) and
    /// returns what memory knows of the instance, or `None` if the lease is
    /// not held or already claimed.
    pub(super) fn claim_instance(&mut self, id: &InstanceId, token: &str) -> Option<Meta> {
        let e = self.entries.get_mut(id)?;
        let l = e
            .lease
            .as_mut()
            .filter(|l| l.token == token && !l.committing)?;
        l.committing = true;
        self.leases.remove(&(l.expires, l.token.clone()));
        Some(e.meta.clone())
    }

    /// Claims the activity lease `token` for a completion (see [`Claim`]);
    /// returns the row, or `None` if the lease is not held or already claimed.
    pub(super) fn claim_activity(&mut self, token: &str) -> Option<ActRow> {
        let (row, expires) = self.act_locked.get(token)?;
        self.act_leases.remove(&(*expires, token.to_string()))?;
        Some(row.clone())
    }

    /// Returns a claim whose operation did not land to the expiry maps; a
    /// no-op for one that landed (its lease is gone by then). Returns which
    /// kind of lease came back, as (orchestration, activity), so waiters can
    /// recompute their next wake-up.
    pub(super) fn unclaim(&mut self, claim: Claim) -> (bool, bool) {
        match claim {
            Claim::Instance(id, token) => {
                let Some(l) = self
                    .entries
                    .get_mut(&id)
                    .and_then(|e| e.lease.as_mut())
                    .filter(|l| l.token == token && l.committing)
                else {
                    return (false, false);
                };
                l.committing = false;
                self.leases.insert((l.expires, token), id);
                (true, false)
            }
            Claim::Activity(token) => match self.act_locked.get(&token) {
                Some((_, expires)) => {
                    self.act_leases.insert((*expires, token), ());
                    (false, true)
                }
                None => (false, false),
            },
        }
    }

    /// True when `token` is an activity lease not claimed by a completion.
    pub(super) fn act_lease_free(&self, token: &str) -> bool {
        self.act_locked.get(token).is_some_and(|(_, expires)| {
            self.act_leases.contains_key(&(*expires, token.to_string()))
        })
    }
}

/// A message written in a transaction, to hand to memory after commit.
pub(super) struct Delivery {
    pub(super) instance_id: InstanceId,
    pub(super) meta: Meta,
    pub(super) message: StoredMessage,
    /// The `ExecutionStarted` of a created instance. Whatever memory still
    /// holds under that id belongs to a finished instance it replaced and is
    /// dropped first, or the new instance would inherit stale messages and
    /// status.
    pub(super) fresh: bool,
}

pub(super) enum Effect {
    None,
    Deliver(Vec<Delivery>),
    Commit {
        instance_id: InstanceId,
        token: String,
        consumed: Vec<i64>,
        meta: Meta,
        cleared: bool,
        deliveries: Vec<Delivery>,
        activities: Vec<ActRow>,
    },
    ActivityDone {
        token: String,
        deliveries: Vec<Delivery>,
    },
    Purged(Vec<InstanceId>),
    /// An instance created with its first turn: memory of a finished
    /// instance it replaced is dropped first (as for a fresh delivery),
    /// then the turn's effect applies.
    Created(InstanceId, Box<Effect>),
}

/// Rebuilds the in-memory queues from the tables.
pub(super) fn load_queues(conn: &Connection) -> Result<Queues, StoreError> {
    let mut q = Queues::default();
    let terminal: Vec<String> = RuntimeStatus::ALL
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT instance_id, runtime_status, execution_id, history_events FROM instances \
             WHERE runtime_status NOT IN ({})",
            terminal.join(", ")
        ))
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (id, status, execution_id, len) = row.map_err(db_err)?;
        q.live.insert(
            InstanceId::from_stored(id),
            Meta::from_row(&status, execution_id, len)?,
        );
    }
    let mut stmt = conn
        .prepare(
            "SELECT m.id, m.instance_id, m.message, i.runtime_status, i.execution_id, i.history_events, i.attempts \
             FROM messages m JOIN instances i ON i.instance_id = m.instance_id ORDER BY m.id",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (id, instance, message, status, execution_id, len, attempts) = row.map_err(db_err)?;
        let instance_id = InstanceId::from_stored(instance);
        let meta = Meta::from_row(&status, execution_id, len)?;
        q.entry(&instance_id, &meta).attempts = (attempts as u32).max(1);
        q.deliver(Delivery {
            instance_id,
            meta,
            message: StoredMessage {
                id,
                message: parse(&message)?,
            },
            fresh: false,
        });
    }
    let mut stmt = conn
        .prepare("SELECT id, instance_id, execution_id, task_id, name, input, attempts FROM activities ORDER BY id")
        .map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .map_err(db_err)?;
    for row in rows {
        let (id, instance, execution_id, task_id, name, input, attempts) = row.map_err(db_err)?;
        q.act_ready.push_back(ActRow {
            id,
            activity: Arc::new(NewActivity {
                instance_id: InstanceId::from_stored(instance),
                execution_id,
                task_id: task_id as u64,
                name,
                input: parse(&input)?,
            }),
            attempts: (attempts as u32).max(1),
        });
    }
    Ok(q)
}

/// Applies a committed effect to memory; returns (new orchestration work,
/// new activity work).
pub(super) fn apply_effect(q: &mut Queues, effect: Effect) -> (bool, bool) {
    match effect {
        Effect::None => (false, false),
        Effect::Deliver(ds) => {
            let any = !ds.is_empty();
            for d in ds {
                q.deliver(d);
            }
            (any, false)
        }
        Effect::Commit {
            instance_id,
            token,
            consumed,
            meta,
            cleared,
            deliveries,
            activities,
        } => {
            q.release(&instance_id, &token);
            for m in consumed.iter().filter(|m| **m < 0) {
                q.held.remove(&-m);
            }
            if cleared {
                q.live.remove(&instance_id);
            } else {
                q.live.insert(instance_id.clone(), meta.clone());
            }
            let mut orphans = Vec::new();
            if let Some(e) = q.entries.get_mut(&instance_id) {
                e.meta = meta;
                e.attempts = 0;
                e.visible.retain(|m| !consumed.contains(&m.id));
                if cleared {
                    // Held results it will never consume: their activity
                    // rows go with the writer's next batch.
                    orphans.extend(e.visible.iter().filter(|m| m.id < 0).map(|m| -m.id));
                    e.visible.clear();
                    if e.delayed > 0 {
                        q.delayed.retain(|_, (id, _)| *id != instance_id);
                        if let Some(e) = q.entries.get_mut(&instance_id) {
                            e.delayed = 0;
                        }
                    }
                }
            }
            for row in orphans {
                q.held.remove(&row);
                q.orphans.push((instance_id.clone(), row));
            }
            q.enqueue(&instance_id);
            let any_act = !activities.is_empty();
            q.act_ready.extend(activities);
            for d in deliveries {
                q.deliver(d);
            }
            q.forget_if_idle(&instance_id);
            (true, any_act)
        }
        Effect::ActivityDone { token, deliveries } => {
            if let Some((_, expires)) = q.act_locked.remove(&token) {
                q.act_leases.remove(&(expires, token));
            }
            let any = !deliveries.is_empty();
            for d in deliveries {
                q.deliver(d);
            }
            (any, false)
        }
        Effect::Purged(ids) => {
            // Forget the purged instances entirely, leased ones included
            // (their holders get LeaseLost rather than committing into
            // deleted rows), with the activities queued for them, whose rows
            // the purge deleted too.
            for id in &ids {
                q.reset(id);
                q.live.remove(id);
            }
            if !ids.is_empty() {
                let ids: std::collections::HashSet<_> = ids.into_iter().collect();
                q.act_ready
                    .retain(|r| !ids.contains(&r.activity.instance_id));
                let gone: Vec<(String, Instant)> = q
                    .act_locked
                    .iter()
                    .filter(|(_, (r, _))| ids.contains(&r.activity.instance_id))
                    .map(|(t, (_, expires))| (t.clone(), *expires))
                    .collect();
                for (token, expires) in gone {
                    q.act_locked.remove(&token);
                    q.act_leases.remove(&(expires, token));
                }
            }
            (false, false)
        }
        Effect::Created(id, then) => {
            q.reset(&id);
            apply_effect(q, *then)
        }
    }
}

/// The scheduler alone, on canned deliveries and leases: no database, no
/// writer thread.
#[cfg(test)]
mod tests {
    use super::*;

    fn meta(history_len: u64) -> Meta {
        Meta {
            status: RuntimeStatus::Running,
            execution_id: "e1".into(),
            history_len,
        }
    }

    fn id(s: &str) -> InstanceId {
        InstanceId::new(s).unwrap()
    }

    fn delivery(
        instance: &str,
        history_len: u64,
        msg_id: i64,
        visible_in_ms: Option<i64>,
    ) -> Delivery {
        Delivery {
            instance_id: id(instance),
            meta: meta(history_len),
            message: StoredMessage {
                id: msg_id,
                message: Message {
                    execution_id: Some("e1".into()),
                    visible_at: visible_in_ms
                        .map(|ms| types::now() + chrono::Duration::milliseconds(ms)),
                    sent_at: types::now(),
                    kind: EventKind::EventRaised {
                        name: "x".into(),
                        input: Value::Null,
                    },
                },
            },
            fresh: false,
        }
    }

    /// Leases `instance` the way a fetch does.
    fn lease(q: &mut Queues, instance: &str, for_ms: u64) -> String {
        let token = q.token('o');
        let expires = Instant::now() + Duration::from_millis(for_ms);
        let e = q.entries.get_mut(&id(instance)).unwrap();
        e.queued = false;
        e.lease = Some(Lease {
            token: token.clone(),
            expires,
            committing: false,
        });
        q.leases.insert((expires, token.clone()), id(instance));
        token
    }

    #[test]
    fn started_instances_go_before_new_ones_and_each_is_queued_once() {
        let mut q = Queues::default();
        q.deliver(delivery("new", 0, 1, None));
        q.deliver(delivery("old", 5, 2, None));
        q.deliver(delivery("old", 5, 3, None));
        assert_eq!(q.ready, [id("old")], "queued once, however many messages");
        assert_eq!(q.ready_new, [id("new")]);
        assert_eq!(q.entries[&id("old")].visible.len(), 2);
    }

    #[test]
    fn a_delayed_message_waits_for_its_time() {
        let mut q = Queues::default();
        q.deliver(delivery("timer", 3, 1, Some(60_000)));
        q.promote();
        assert!(q.ready.is_empty(), "not due yet");
        assert_eq!(q.entries[&id("timer")].delayed, 1);
        q.deliver(delivery("soon", 3, 2, Some(-1)));
        q.promote();
        assert_eq!(q.ready, [id("soon")], "a past due time is due now");
    }

    #[test]
    fn a_leased_instance_is_not_queued_until_its_lease_expires_or_is_released() {
        let mut q = Queues::default();
        q.deliver(delivery("busy", 2, 1, None));
        q.ready.clear();
        let token = lease(&mut q, "busy", 60_000);
        q.deliver(delivery("busy", 2, 2, None));
        assert!(q.ready.is_empty(), "its holder sees the message next turn");
        assert!(!q.release(&id("busy"), "another token"));
        assert!(q.release(&id("busy"), &token));
        q.enqueue(&id("busy"));
        assert_eq!(q.ready, [id("busy")]);

        // An expired lease goes back to the queue by itself.
        let mut q = Queues::default();
        q.deliver(delivery("lapsed", 2, 1, None));
        q.ready.clear();
        lease(&mut q, "lapsed", 0);
        q.promote();
        assert_eq!(q.ready, [id("lapsed")]);
        assert!(q.entries[&id("lapsed")].lease.is_none());
    }

    #[test]
    fn a_claimed_lease_neither_expires_nor_is_claimed_twice() {
        let mut q = Queues::default();
        q.deliver(delivery("c", 2, 1, None));
        let token = lease(&mut q, "c", 0);
        assert!(q.claim_instance(&id("c"), &token).is_some());
        assert!(
            q.claim_instance(&id("c"), &token).is_none(),
            "one commit per lease"
        );
        q.promote();
        assert!(
            q.entries[&id("c")].lease.is_some(),
            "a lease being committed does not expire"
        );
        // The commit did not land: the lease is back, and then expires.
        assert_eq!(q.unclaim(Claim::Instance(id("c"), token)), (true, false));
        q.promote();
        assert!(q.entries[&id("c")].lease.is_none());
    }

    #[test]
    fn reset_forgets_a_replaced_instance_and_voids_its_lease() {
        let mut q = Queues::default();
        q.deliver(delivery("r", 2, 1, Some(60_000)));
        q.deliver(delivery("r", 2, 2, None));
        let token = lease(&mut q, "r", 60_000);
        q.reset(&id("r"));
        assert!(!q.entries.contains_key(&id("r")));
        assert!(q.delayed.is_empty() && q.leases.is_empty());
        assert!(q.claim_instance(&id("r"), &token).is_none());
    }
}
