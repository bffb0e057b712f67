//! The statements, spliced with the schema name once per store.

use super::*;

/// SQL text of the statements, with the schema spliced in once.
#[derive(Debug)]
pub(super) struct Sql {
    pub(super) s: String,
    pub(super) terminal: String,
    /// Leases due instances. The rows are picked inside `ANY(ARRAY(..))`,
    /// not joined from a CTE: a prepared statement runs a generic plan
    /// after five executions, which cannot see `LIMIT $1` and hash-joined
    /// the picked rows against a sequential scan of the whole table (dead
    /// row versions included), the largest share of PostgreSQL's CPU per
    /// Galaxy_Create. An id array probes the primary key whatever the plan.
    pub(super) fetch_orchestrations: String,
    /// The leased instances' visible messages; the instances are checked
    /// through the same id-array form as `fetch_orchestrations` (a join
    /// planned generically scanned the whole instances table).
    pub(super) fetch_messages: String,
    /// Hands leases of one fetch back untouched ($1 ids, $2 the fetch's
    /// token prefix): nothing was visible after all, or the fetch failed
    /// before its items reached the engine. Returns each row's new due
    /// time (its earliest message) and the database clock.
    pub(super) release_fetched: String,
    pub(super) commit_status: String,
    /// `commit_status` and the turn's history insert in one statement
    /// (`$13` the first event id, `$14` the events): the insert happens
    /// only when the status update passed the lease check.
    pub(super) commit_status_history: String,
    pub(super) insert_lifecycle: String,
    pub(super) read_lifecycle: String,
    pub(super) ack_lifecycle: String,
    pub(super) delete_history: String,
    pub(super) insert_history: String,
    pub(super) delete_consumed: String,
    pub(super) delete_inbox: String,
    pub(super) insert_activities: String,
    /// Sets a committed turn's due time from its waiting messages; writes
    /// the row only when that changes it (an UPDATE that changes nothing
    /// still writes a row version, and `due_at` is indexed, so not HOT).
    pub(super) recompute_due: String,
    pub(super) upsert_instance: String,
    /// Queues a message and brings the instance's due time forward, with
    /// no row write when it is already due by then.
    pub(super) send: String,
    /// `send` for several messages in one statement (a batch of activity
    /// results, whose instance rows the transaction already locked in id
    /// order): one row per instance that took a message, with the
    /// earliest due time of its new messages.
    pub(super) send_many: String,
    /// Leases due activities, picked as in `fetch_orchestrations`.
    pub(super) fetch_activities: String,
    pub(super) complete_activity: String,
    /// Locks instance rows in id order (the batch completion's first step).
    pub(super) lock_instances: String,
    /// Leases a row just created in this transaction to its first turn,
    /// whose start message it consumes.
    pub(super) claim_created: String,
    /// Deletes the activity rows still held under their tokens.
    pub(super) complete_activities: String,
    /// Locks a turn batch's instance rows in id order ($1, sorted) and
    /// returns those still leased under one of the turns' tokens ($2), with
    /// the token, status, execution and name before the turns
    /// ([`super::batch`]).
    pub(super) lock_turns: String,
    /// New instances, or replaced terminal ones (their history and inbox
    /// go), created leased under their tokens to their first turns, in id
    /// order; returns the ids created (a live one is left alone).
    pub(super) batch_create: String,
    /// A turn batch's status rows and appended histories, one row per turn
    /// in the arrays; the rows are locked and their leases checked.
    pub(super) batch_status: String,
    /// Deletes consumed messages ($1 ids, $2 their instances).
    pub(super) batch_delete_consumed: String,
    /// Deletes the inboxes of instances that finished.
    pub(super) batch_delete_inbox: String,
    /// Queues activities, one per array entry.
    pub(super) batch_insert_activities: String,
    /// Lifecycle outbox rows, in array order.
    pub(super) batch_lifecycle: String,
    /// `recompute_due` for several instances: one row per instance with
    /// a waiting message (its earliest due time, the database clock).
    pub(super) batch_recompute_due: String,
    pub(super) abandon_instance: String,
    pub(super) abandon_activity: String,
    /// When the next orchestration work is due ($1 worker, $2 affinity).
    pub(super) wake_turns: NextWake,
    /// When the next activity is due ($1 worker, in `look` only).
    pub(super) wake_activities: NextWake,
    pub(super) reap: String,
}

/// When one kind's next work is due: a time already past when work of
/// that kind is due and was not fetched (it came due after the last fetch),
/// so a dispatcher going to sleep wakes at once instead of sleeping past
/// it; rows due that no fetch of this worker could take (an instance homed
/// elsewhere, within its affinity) are left out, or it would never sleep.
/// A due row another transaction holds (a batch of results being delivered
/// to it) is reported too, though a fetch skips it: after one empty fetch
/// the dispatcher then waits 5 ms at a time, or for that commit's
/// announcement (`dispatch::sleep_for`).
#[derive(Debug)]
pub(super) struct NextWake {
    /// That time, whether another worker's listener backend is gone from
    /// `pg_stat_activity`, whether there are other workers at all, and the
    /// database clock.
    pub(super) look: String,
    /// The same row, the liveness check left out (reading
    /// `pg_stat_activity` builds every backend's entry).
    pub(super) only: String,
}

impl NextWake {
    fn new(s: &str, wake: &str) -> Self {
        Self {
            look: format!(
                "SELECT {wake}, \
                   EXISTS (SELECT 1 FROM {s}.workers w WHERE w.id <> $1 AND NOT EXISTS \
                     (SELECT 1 FROM pg_stat_activity a WHERE a.pid = w.pid \
                       AND (a.backend_start IS NULL OR a.backend_start = w.backend_start))), \
                   EXISTS (SELECT 1 FROM {s}.workers WHERE id <> $1), {NOW}"
            ),
            only: format!("SELECT {wake}, false, false, {NOW}"),
        }
    }
}

impl Sql {
    pub(super) fn new(s: &str) -> Self {
        let terminal = terminal_list();
        // The earliest instance due (a timer, a lease expiry) that this
        // worker may fetch, as `fetch_orchestrations` picks them, or that is
        // not due yet; and when an instance homed elsewhere becomes this
        // worker's to take ($2: the affinity).
        let wake_turns = format!(
            "LEAST((SELECT min(due_at) FROM {s}.instances WHERE due_at > {NOW} \
                 OR home IS NULL OR home = $1 OR due_at <= {NOW} - $2), \
               (SELECT min(due_at) + $2 FROM {s}.instances WHERE due_at > {NOW} - $2 \
                 AND due_at <= {NOW} AND home <> $1))"
        );
        // A turn's status row, under the lease check ($1 id, $2 token);
        // returns the status and execution before it.
        let commit_status = format!(
            "UPDATE {s}.instances SET runtime_status = $3, execution_id = $4, input = COALESCE($5, input), \
               output = $6, custom_status = $7, failure = $8, history_events = $9, history_bytes = $10, \
               last_updated_at = $11, attempts = 0, lock_token = NULL, lock_owner = NULL, due_at = NULL, \
               home = $12 \
             WHERE instance_id = $1 AND lock_token = $2 \
             RETURNING (SELECT o.runtime_status FROM {s}.instances o WHERE o.instance_id = $1) AS old_status, \
               (SELECT o.execution_id FROM {s}.instances o WHERE o.instance_id = $1) AS old_execution"
        );
        Self {
            commit_status_history: format!(
                "WITH st AS ({commit_status}), \
                 h AS (INSERT INTO {s}.history (instance_id, first_event_id, events) \
                   SELECT $1, $13, $14 FROM st) \
                 SELECT old_status, old_execution FROM st"
            ),
            fetch_orchestrations: format!(
                "UPDATE {s}.instances i SET lock_token = $2 || i.instance_id, lock_owner = $3, \
                   due_at = {NOW} + $4, attempts = i.attempts + 1 \
                 WHERE i.instance_id = ANY(ARRAY(SELECT instance_id FROM {s}.instances \
                   WHERE due_at <= {NOW} AND (home IS NULL OR home = $3 OR due_at <= {NOW} - $5) \
                   ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)) \
                 RETURNING i.instance_id, i.runtime_status, i.execution_id, i.history_events, i.attempts, \
                   i.lock_token, i.due_at"
            ),
            fetch_messages: format!(
                "SELECT m.id, m.instance_id, m.message FROM {s}.messages m \
                 WHERE m.instance_id = ANY(ARRAY(SELECT instance_id FROM {s}.instances \
                   WHERE instance_id = ANY($1) AND lock_token = $2 || instance_id)) \
                   AND m.due_ms <= {NOW} \
                 ORDER BY m.id"
            ),
            release_fetched: format!(
                "UPDATE {s}.instances i SET lock_token = NULL, lock_owner = NULL, attempts = i.attempts - 1, \
                   due_at = (SELECT min(due_ms) FROM {s}.messages m WHERE m.instance_id = i.instance_id) \
                 WHERE i.instance_id = ANY($1) AND i.lock_token = $2 || i.instance_id \
                 RETURNING i.due_at, {NOW}"
            ),
            commit_status,
            insert_lifecycle: format!(
                "INSERT INTO {s}.lifecycle_outbox (instance_id, name, execution_id, runtime_status, \
                   history_events, at, failure) \
                 SELECT instance_id, name, $2, $3, $4, $5, $6 FROM {s}.instances WHERE instance_id = $1"
            ),
            read_lifecycle: format!(
                "SELECT seq, instance_id, name, execution_id, runtime_status, history_events, at, failure \
                 FROM {s}.lifecycle_outbox ORDER BY seq LIMIT $1"
            ),
            ack_lifecycle: format!("DELETE FROM {s}.lifecycle_outbox WHERE seq = ANY($1)"),
            delete_history: format!("DELETE FROM {s}.history WHERE instance_id = $1"),
            insert_history: format!(
                "INSERT INTO {s}.history (instance_id, first_event_id, events) VALUES ($1, $2, $3)"
            ),
            delete_consumed: format!(
                "DELETE FROM {s}.messages WHERE instance_id = $1 AND id = ANY($2)"
            ),
            delete_inbox: format!("DELETE FROM {s}.messages WHERE instance_id = $1"),
            insert_activities: format!(
                "INSERT INTO {s}.activities (instance_id, execution_id, task_id, name, input, due_at) \
                 SELECT $1, $2, t, n, i, {NOW} FROM unnest($3::int8[], $4::text[], $5::text[]) AS a(t, n, i)"
            ),
            recompute_due: format!(
                "WITH d AS (SELECT min(due_ms) AS due FROM {s}.messages m WHERE m.instance_id = $1), \
                 upd AS (UPDATE {s}.instances i SET due_at = d.due FROM d \
                   WHERE i.instance_id = $1 AND i.due_at IS DISTINCT FROM d.due RETURNING 1) \
                 SELECT (SELECT due FROM d), {NOW}, (SELECT count(*) FROM upd)"
            ),
            // Inserts a new instance, or replaces a terminal one (its history
            // and inbox go; its row is reused, so queued activities of the
            // old execution stay and are dropped by execution id later)
            // when $9 allows it. A live one is left alone and nothing is
            // returned.
            upsert_instance: format!(
                "WITH up AS ( \
                   INSERT INTO {s}.instances AS i (instance_id, name, execution_id, runtime_status, input, \
                     created_at, last_updated_at, parent_instance_id, due_at, home) \
                   VALUES ($1, $2, $3, 'Pending', $4, $5, $5, $6, {NOW}, $8) \
                   ON CONFLICT (instance_id) DO UPDATE SET name = excluded.name, \
                     execution_id = excluded.execution_id, runtime_status = 'Pending', input = excluded.input, \
                     output = NULL, custom_status = NULL, failure = NULL, created_at = excluded.created_at, \
                     last_updated_at = excluded.last_updated_at, parent_instance_id = excluded.parent_instance_id, \
                     history_events = 0, history_bytes = 0, attempts = 0, lock_token = NULL, lock_owner = NULL, \
                     due_at = excluded.due_at, home = excluded.home \
                   WHERE i.runtime_status IN ({terminal}) AND $9 \
                   RETURNING i.instance_id, (xmax = 0) AS inserted), \
                 dh AS (DELETE FROM {s}.history h USING up WHERE h.instance_id = up.instance_id AND NOT up.inserted), \
                 dm AS (DELETE FROM {s}.messages m USING up WHERE m.instance_id = up.instance_id AND NOT up.inserted), \
                 ins AS (INSERT INTO {s}.messages (instance_id, due_ms, message) \
                   SELECT instance_id, {NOW}, $7 FROM up RETURNING id) \
                 SELECT count(*) FROM ins"
            ),
            // Locks the target, checks its status, inserts and makes the
            // target due no later than the message unless it is leased.
            // Returns the target's status (NULL: no such instance) and the
            // new message's due time (NULL: refused).
            send: format!(
                "WITH target AS (SELECT instance_id, runtime_status, lock_token FROM {s}.instances \
                   WHERE instance_id = $1 FOR UPDATE), \
                 ok AS (SELECT * FROM target WHERE runtime_status NOT IN ({terminal}) \
                   OR (runtime_status = 'Failed' AND $4)), \
                 ins AS (INSERT INTO {s}.messages (instance_id, due_ms, message) \
                   SELECT instance_id, COALESCE($2, {NOW}), $3 FROM ok RETURNING due_ms), \
                 upd AS (UPDATE {s}.instances i SET due_at = ins.due_ms \
                   FROM ins, ok WHERE i.instance_id = ok.instance_id AND ok.lock_token IS NULL \
                   AND (i.due_at IS NULL OR i.due_at > ins.due_ms) RETURNING 1) \
                 SELECT (SELECT runtime_status FROM target), (SELECT due_ms FROM ins), {NOW}, \
                   (SELECT count(*) FROM upd)"
            ),
            send_many: format!(
                "WITH x AS (SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::bool[]) \
                   WITH ORDINALITY AS x(instance_id, visible, message, rewind, ord)), \
                 target AS (SELECT instance_id, runtime_status, lock_token FROM {s}.instances \
                   WHERE instance_id IN (SELECT instance_id FROM x) FOR UPDATE), \
                 ins AS (INSERT INTO {s}.messages (instance_id, due_ms, message) \
                   SELECT x.instance_id, COALESCE(x.visible, {NOW}), x.message \
                   FROM x JOIN target t ON t.instance_id = x.instance_id \
                   WHERE t.runtime_status NOT IN ({terminal}) OR (t.runtime_status = 'Failed' AND x.rewind) \
                   ORDER BY x.ord RETURNING instance_id, due_ms), \
                 first AS (SELECT instance_id, min(due_ms) AS due FROM ins GROUP BY instance_id), \
                 upd AS (UPDATE {s}.instances i SET due_at = f.due FROM first f, target t \
                   WHERE i.instance_id = f.instance_id AND t.instance_id = f.instance_id \
                   AND t.lock_token IS NULL AND (i.due_at IS NULL OR i.due_at > f.due) RETURNING 1) \
                 SELECT due, {NOW}, (SELECT count(*) FROM upd) FROM first"
            ),
            fetch_activities: format!(
                "UPDATE {s}.activities a SET lock_token = $2 || a.id::text || '/' || a.instance_id, lock_owner = $3, \
                   due_at = {NOW} + $4, attempts = a.attempts + 1 \
                 WHERE a.id = ANY(ARRAY(SELECT id FROM {s}.activities WHERE due_at <= {NOW} \
                   ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)) \
                 RETURNING a.id, a.instance_id, a.execution_id, a.task_id, a.name, a.input, a.attempts, \
                   a.lock_token, a.due_at"
            ),
            complete_activity: format!(
                "DELETE FROM {s}.activities WHERE id = $1 AND lock_token = $2 RETURNING instance_id"
            ),
            claim_created: format!(
                "WITH claimed AS (UPDATE {s}.instances SET lock_token = $2, lock_owner = NULL \
                   WHERE instance_id = $1 RETURNING instance_id) \
                 DELETE FROM {s}.messages m USING claimed c WHERE m.instance_id = c.instance_id"
            ),
            lock_instances: format!(
                "SELECT 1 FROM {s}.instances WHERE instance_id = ANY($1) ORDER BY instance_id FOR UPDATE"
            ),
            complete_activities: format!(
                "DELETE FROM {s}.activities a USING unnest($1::int8[], $2::text[]) AS x(id, token) \
                 WHERE a.id = x.id AND a.lock_token = x.token RETURNING a.id, a.lock_token"
            ),
            lock_turns: format!(
                "SELECT lock_token, runtime_status, execution_id, name FROM {s}.instances \
                 WHERE instance_id = ANY($1) AND lock_token = ANY($2) ORDER BY instance_id FOR UPDATE"
            ),
            batch_create: format!(
                "WITH up AS ( \
                   INSERT INTO {s}.instances AS i (instance_id, name, execution_id, runtime_status, input, \
                     created_at, last_updated_at, parent_instance_id, home, lock_token) \
                   SELECT id, name, execution, 'Pending', input, created, created, parent, $8, token \
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], \
                     $7::text[]) WITH ORDINALITY AS x(id, name, execution, input, created, parent, token, ord) \
                   ORDER BY ord \
                   ON CONFLICT (instance_id) DO UPDATE SET name = excluded.name, \
                     execution_id = excluded.execution_id, runtime_status = 'Pending', input = excluded.input, \
                     output = NULL, custom_status = NULL, failure = NULL, created_at = excluded.created_at, \
                     last_updated_at = excluded.last_updated_at, parent_instance_id = excluded.parent_instance_id, \
                     history_events = 0, history_bytes = 0, attempts = 0, lock_token = excluded.lock_token, \
                     lock_owner = NULL, due_at = NULL, home = excluded.home \
                   WHERE i.runtime_status IN ({terminal}) AND NOT i.instance_id = ANY($9) \
                   RETURNING i.instance_id, (xmax = 0) AS inserted), \
                 dh AS (DELETE FROM {s}.history WHERE instance_id = ANY(ARRAY( \
                   SELECT instance_id FROM up WHERE NOT inserted))), \
                 dm AS (DELETE FROM {s}.messages WHERE instance_id = ANY(ARRAY( \
                   SELECT instance_id FROM up WHERE NOT inserted))) \
                 SELECT instance_id FROM up"
            ),
            // Arrays, not a join against `x` alone: `instance_id = ANY($1)`
            // keeps a generic plan on the primary key (see
            // `fetch_orchestrations`).
            batch_status: format!(
                "WITH x AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                   $5::text[], $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], \
                   $11::int8[], $12::text[]) AS x(id, status, execution, input, output, custom, \
                   failure, events, bytes, at, first_event, history)), \
                 st AS (UPDATE {s}.instances i SET runtime_status = x.status, execution_id = x.execution, \
                   input = COALESCE(x.input, i.input), output = x.output, custom_status = x.custom, \
                   failure = x.failure, history_events = x.events, history_bytes = x.bytes, \
                   last_updated_at = x.at, attempts = 0, lock_token = NULL, lock_owner = NULL, \
                   due_at = NULL, home = $13 \
                   FROM x WHERE i.instance_id = ANY($1) AND i.instance_id = x.id RETURNING 1), \
                 h AS (INSERT INTO {s}.history (instance_id, first_event_id, events) \
                   SELECT id, first_event, history FROM x WHERE first_event IS NOT NULL) \
                 SELECT count(*) FROM st"
            ),
            batch_delete_consumed: format!(
                "DELETE FROM {s}.messages WHERE id = ANY($1) AND instance_id = ANY($2)"
            ),
            batch_delete_inbox: format!("DELETE FROM {s}.messages WHERE instance_id = ANY($1)"),
            batch_insert_activities: format!(
                "INSERT INTO {s}.activities (instance_id, execution_id, task_id, name, input, due_at) \
                 SELECT i, e, t, n, a, {NOW} \
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[]) AS x(i, e, t, n, a)"
            ),
            batch_lifecycle: format!(
                "INSERT INTO {s}.lifecycle_outbox (instance_id, name, execution_id, runtime_status, \
                   history_events, at, failure) \
                 SELECT i, n, e, st, h, a, f FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                   $5::int8[], $6::int8[], $7::text[]) WITH ORDINALITY AS x(i, n, e, st, h, a, f, ord) \
                 ORDER BY ord"
            ),
            batch_recompute_due: format!(
                "WITH d AS (SELECT x.id, (SELECT min(due_ms) FROM {s}.messages m \
                   WHERE m.instance_id = x.id) AS due FROM unnest($1::text[]) AS x(id)), \
                 upd AS (UPDATE {s}.instances i SET due_at = d.due FROM d \
                   WHERE i.instance_id = ANY($1) AND i.instance_id = d.id \
                   AND i.due_at IS DISTINCT FROM d.due RETURNING 1) \
                 SELECT due, {NOW} FROM d WHERE due IS NOT NULL"
            ),
            abandon_instance: format!(
                "UPDATE {s}.instances SET lock_token = '{NOBODY}', lock_owner = NULL, due_at = {NOW} + $3 \
                 WHERE instance_id = $1 AND lock_token = $2 RETURNING due_at"
            ),
            abandon_activity: format!(
                "UPDATE {s}.activities SET lock_token = '{NOBODY}', lock_owner = NULL, due_at = {NOW} + $3 \
                 WHERE id = $1 AND lock_token = $2 RETURNING due_at"
            ),
            wake_turns: NextWake::new(s, &wake_turns),
            wake_activities: NextWake::new(s, &format!("(SELECT min(due_at) FROM {s}.activities)")),
            // Workers whose listener backend is gone: marked the first
            // time, dead (deleted, their leases due now) once gone for
            // $2 ms. Also says when the next marked one would be dead. A
            // dead worker's home is cleared only on rows that can be
            // fetched (due): no other row's home is read. The mark and the
            // delete match the row as `gone` read it (pid, backend start):
            // a worker that re-registered meanwhile is re-checked under
            // the row lock and left alone.
            reap: format!(
                "WITH gone AS (SELECT w.id, w.pid, w.backend_start, w.gone_since FROM {s}.workers w \
                   WHERE w.id <> $1 AND NOT EXISTS \
                   (SELECT 1 FROM pg_stat_activity a WHERE a.pid = w.pid \
                       AND (a.backend_start IS NULL OR a.backend_start = w.backend_start))), \
                 marked AS (UPDATE {s}.workers w SET gone_since = {NOW} FROM gone g \
                   WHERE w.id = g.id AND g.gone_since IS NULL \
                     AND w.pid = g.pid AND w.backend_start = g.backend_start RETURNING 1), \
                 dead AS (DELETE FROM {s}.workers w USING gone g \
                   WHERE w.id = g.id AND g.gone_since <= {NOW} - $2 \
                     AND w.pid = g.pid AND w.backend_start = g.backend_start \
                   RETURNING w.id), \
                 ri AS (UPDATE {s}.instances SET \
                     due_at = CASE WHEN lock_owner IN (SELECT id FROM dead) THEN {NOW} ELSE due_at END, \
                     lock_owner = CASE WHEN lock_owner IN (SELECT id FROM dead) THEN NULL ELSE lock_owner END, \
                     home = CASE WHEN home IN (SELECT id FROM dead) THEN NULL ELSE home END \
                   WHERE lock_owner IN (SELECT id FROM dead) \
                      OR (home IN (SELECT id FROM dead) AND due_at IS NOT NULL) \
                   RETURNING 1), \
                 ra AS (UPDATE {s}.activities SET due_at = {NOW}, lock_owner = NULL \
                   WHERE lock_owner IN (SELECT id FROM dead) RETURNING 1) \
                 SELECT (SELECT count(*) FROM ri), (SELECT count(*) FROM ra), \
                   LEAST((SELECT min(gone_since) + $2 FROM gone WHERE gone_since > {NOW} - $2), \
                     CASE WHEN EXISTS (SELECT 1 FROM marked) THEN {NOW} + $2 END)"
            ),
            terminal,
            s: s.to_string(),
        }
    }
}
