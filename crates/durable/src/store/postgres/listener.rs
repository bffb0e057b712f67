//! The store's dedicated connection: `LISTEN` for the other processes'
//! announcements, `NOTIFY` for this one's, and the worker registration
//! whose backend's life marks this process alive.
//!
//! Notifications carry a first line of flags, `o` (orchestration
//! work), `a` (activity work), `wo<ms>` and `wa<ms>` (orchestration or
//! activity work becomes due then),
//! and then one line `<from>,<to>,<instance id>` per instance this
//! process changed (its history went from `from` to `to` events; `0,0`
//! a creation), which the other processes' engines publish as live
//! updates ([`Store::remote_changes`]). Our own notifications come back
//! to us too; they are recognised by the sending backend's pid and
//! ignored. After a reconnect both signals fire, since announcements
//! may have been missed while disconnected, and the instances the other
//! processes changed meanwhile are read from the table and published as
//! remote changes ([`catch_up`]): a live stream or a waiting starter in
//! this process would otherwise never hear of a completion announced
//! while it was gone.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;

use super::{db_err, PgTarget, Shared, KINDS};
use crate::store::{RemoteChange, StoreError, WorkKind};
use crate::types::InstanceId;

/// Pause before reconnecting after the listener connection failed.
const RECONNECT: Duration = Duration::from_millis(500);

/// TCP keepalive of the listener connection: a connection that died
/// without a word (a half-open one) is noticed within about half a minute,
/// not the system's two hours, so the reconnect and its catch-up follow.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

pub(super) async fn run(
    mut target: PgTarget,
    schema: String,
    shared: Arc<Shared>,
    mut ready: Option<oneshot::Sender<Result<(), StoreError>>>,
    mut stop: watch::Receiver<bool>,
) {
    let s = format!("\"{schema}\"");
    target
        .config
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES);
    // Payloads taken from the outbox and not sent yet: kept across a
    // reconnect, so a failed NOTIFY loses nothing.
    let mut unsent = std::collections::VecDeque::new();
    // Since when (host ms) changes may not have been heard: the last sign
    // of life of the session that was lost.
    let mut deaf_since: Option<i64> = None;
    loop {
        let session = async {
            let (client, mut conn) = target.connect().await.map_err(db_err)?;
            let (tx, rx) = mpsc::unbounded_channel();
            let pump = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(m) = messages.next().await {
                    match m {
                        Ok(AsyncMessage::Notification(n)) => {
                            if tx.send(n).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "store listener connection failed");
                            break;
                        }
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN \"{}\"", shared.channel))
                .await
                .map_err(db_err)?;
            let pid: i32 = client
                .query_one(
                    &format!(
                        "INSERT INTO {s}.workers (id, pid, backend_start) \
                         SELECT $1, pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid() \
                         ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, backend_start = excluded.backend_start, \
                           gone_since = NULL \
                         RETURNING pid"
                    ),
                    &[&shared.worker],
                )
                .await
                .map_err(db_err)?
                .get(0);
            Ok::<_, StoreError>((client, rx, pump, pid))
        };
        let (client, mut rx, pump, pid) = match session.await {
            Ok(s) => s,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e));
                    return;
                }
                tracing::warn!(error = %e, "store listener cannot connect; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT) => continue,
                    _ = stop_requested(&mut stop) => return,
                }
            }
        };
        match ready.take() {
            Some(r) => {
                let _ = r.send(Ok(()));
            }
            // Announcements may have been missed while disconnected.
            None => {
                shared.wake_local(true, true);
                if let Some(since) = deaf_since {
                    match catch_up(&client, &s, &shared, since).await {
                        Ok(()) => deaf_since = None,
                        // Kept: the next session catches up from there.
                        Err(e) => tracing::warn!(
                            error = %e,
                            "cannot read the changes missed while reconnecting"
                        ),
                    }
                }
            }
        }
        // Send what was queued while disconnected.
        shared.kick.notify_one();
        *shared.hint_sent.lock().expect("hint lock") = Default::default();
        // The session's last sign of life (host ms): a notification in, or
        // one out answered.
        let mut alive = now_ms();
        let stopped = loop {
            tokio::select! {
                n = rx.recv() => {
                    let Some(n) = n else { break false };
                    alive = now_ms();
                    if n.process_id() != pid {
                        receive(&shared, n.payload());
                    }
                }
                _ = shared.kick.notified() => {
                    let sent = send(&client, &shared, &mut unsent).await;
                    if sent.as_ref().is_ok_and(|n| *n > 0) {
                        alive = now_ms();
                    }
                    if let Err(e) = sent {
                        tracing::warn!(error = %e, "store listener cannot notify");
                        *shared.hint_sent.lock().expect("hint lock") = Default::default();
                        break false;
                    }
                }
                _ = stop_requested(&mut stop) => break true,
            }
        };
        if stopped {
            // What the store queued last (the leases `close` handed back).
            if let Err(e) = send(&client, &shared, &mut unsent).await {
                tracing::warn!(error = %e, "store listener cannot notify before it stops");
            }
            let _ = client
                .execute(
                    &format!("DELETE FROM {s}.workers WHERE id = $1"),
                    &[&shared.worker],
                )
                .await;
            drop(client);
            let _ = pump.await;
            return;
        }
        drop(client);
        pump.abort();
        deaf_since = Some(deaf_since.map_or(alive, |d| d.min(alive)));
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT) => {}
            _ = stop_requested(&mut stop) => return,
        }
    }
}

/// Sends what the outbox holds after what is still unsent, in order; a
/// payload is dropped only once its `NOTIFY` went through. Returns how
/// many went.
async fn send(
    client: &tokio_postgres::Client,
    shared: &Shared,
    unsent: &mut std::collections::VecDeque<String>,
) -> Result<usize, tokio_postgres::Error> {
    unsent.extend(take_payloads(shared));
    let mut sent = 0;
    while let Some(payload) = unsent.front() {
        client
            .execute("SELECT pg_notify($1, $2)", &[&shared.channel, payload])
            .await?;
        unsent.pop_front();
        sent += 1;
    }
    Ok(sent)
}

/// How far before a lost connection changes are read again: commits are
/// stamped with their turn's start on the committing host's clock.
const CATCH_UP_MARGIN_MS: i64 = 10_000;

/// Most changes one catch-up publishes, the latest (the remote change
/// channel's capacity: more would make its reader lag anyway). The read
/// scans the instances table (no index on `last_updated_at`: every commit
/// would pay for one); it runs once per reconnect.
const CATCH_UP_MAX: i64 = super::REMOTE_CHANGES as i64;

/// Publishes, as remote changes, the instances another process changed
/// since `since` (host ms, less a margin): each as a change ending at its
/// current history length, so the engine publishes its status and any
/// events its subscribers have not seen (`crate::remote`).
async fn catch_up(
    client: &tokio_postgres::Client,
    s: &str,
    shared: &Shared,
    since: i64,
) -> Result<(), StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT instance_id, history_events FROM {s}.instances \
                 WHERE last_updated_at >= $1 AND home IS DISTINCT FROM $2 \
                 ORDER BY last_updated_at DESC LIMIT $3"
            ),
            &[&(since - CATCH_UP_MARGIN_MS), &shared.worker, &CATCH_UP_MAX],
        )
        .await
        .map_err(db_err)?;
    for r in rows {
        let Ok(instance_id) = InstanceId::new(r.get::<_, String>(0)) else {
            continue;
        };
        let events = r.get::<_, i64>(1) as u64;
        let _ = shared.remote.send(RemoteChange {
            instance_id,
            history_from: events,
            history_to: events,
        });
    }
    Ok(())
}

fn now_ms() -> i64 {
    crate::types::now().timestamp_millis()
}

/// Resolves when the store asks the listener to stop.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Largest payload sent in one `NOTIFY` (the server's limit is 8000
/// bytes).
const PAYLOAD_MAX: usize = 7900;

/// Empties the outbox into notification payloads: a first line of
/// flags (`o`, `a`, `w<ms>`), then one line per changed instance,
/// `<from>,<to>,<instance id>` (ids hold no control characters), split
/// over several payloads when long.
fn take_payloads(shared: &Shared) -> Vec<String> {
    let mut o = shared.outbox.lock().expect("outbox lock");
    let mut flags = String::new();
    if std::mem::take(&mut o.orchestrations) {
        flags.push('o');
    }
    if std::mem::take(&mut o.activities) {
        flags.push('a');
    }
    for (kind, wake) in KINDS.iter().zip(&mut o.wake) {
        if let Some(w) = wake.take() {
            flags.push_str(&format!("w{}{w}", hint_letter(*kind)));
        }
    }
    let changes = std::mem::take(&mut o.changes);
    drop(o);
    let mut payloads = Vec::new();
    let mut p = flags;
    for (id, from, to) in changes {
        let line = format!("\n{from},{to},{id}");
        if p.len() + line.len() > PAYLOAD_MAX {
            payloads.push(std::mem::take(&mut p));
        }
        p.push_str(&line);
    }
    if !p.is_empty() {
        payloads.push(p);
    }
    payloads
}

fn receive(shared: &Shared, payload: &str) {
    let (flags, changes) = payload.split_once('\n').unwrap_or((payload, ""));
    let (orchestrations, activities) = parse_announced(flags);
    shared.wake_local(orchestrations, activities);
    for (kind, at) in parse_hints(flags) {
        shared.hinted(kind, at);
    }
    for line in changes.split('\n') {
        if let Some(change) = parse_change(line) {
            // Nobody listening (no engine on this store) is fine.
            let _ = shared.remote.send(change);
        }
    }
}

/// The letter after `w` that names a hint's kind of work.
fn hint_letter(kind: WorkKind) -> char {
    match kind {
        WorkKind::Orchestration => 'o',
        WorkKind::Activity => 'a',
    }
}

/// Whether a payload's flags announce orchestration and activity work
/// visible now: `o` and `a` before the first hint (a hint's kind letter
/// is not an announcement).
fn parse_announced(flags: &str) -> (bool, bool) {
    let now = flags.split('w').next().unwrap_or("");
    (now.contains('o'), now.contains('a'))
}

/// The wake-up hints in a payload's flags: `w`, the kind's letter
/// ([`hint_letter`]) and the time in ms, for each kind that has one.
fn parse_hints(flags: &str) -> Vec<(WorkKind, i64)> {
    let mut hints = Vec::new();
    for part in flags.split('w').skip(1) {
        let mut chars = part.chars();
        let letter = chars.next();
        let Some(kind) = KINDS.into_iter().find(|k| Some(hint_letter(*k)) == letter) else {
            continue;
        };
        if let Ok(at) = chars.as_str().parse() {
            hints.push((kind, at));
        }
    }
    hints
}

/// One `<from>,<to>,<instance id>` line.
fn parse_change(line: &str) -> Option<RemoteChange> {
    let mut parts = line.splitn(3, ',');
    let from = parts.next()?.parse().ok()?;
    let to = parts.next()?.parse().ok()?;
    let instance_id = InstanceId::new(parts.next()?).ok()?;
    Some(RemoteChange {
        instance_id,
        history_from: from,
        history_to: to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_and_hints_of_each_kind_are_read_from_the_flags() {
        assert_eq!(parse_hints("oa"), []);
        assert_eq!(
            parse_hints("owo1700000000123"),
            [(WorkKind::Orchestration, 1_700_000_000_123)]
        );
        assert_eq!(
            parse_hints("awo5wa7"),
            [(WorkKind::Orchestration, 5), (WorkKind::Activity, 7)]
        );
        // A hint's kind letter is not an announcement of work due now.
        assert_eq!(parse_announced("wo5wa7"), (false, false));
        assert_eq!(parse_announced("owa7"), (true, false));
        assert_eq!(parse_announced("aowo5"), (true, true));
        // Unknown kinds and unreadable times are skipped, not guessed.
        assert_eq!(parse_hints("wx5wa"), []);
    }
}
