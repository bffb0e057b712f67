//! The rules of push and pull as pure functions: given what the store
//! holds (the client's state, the player's counter, the entities a push
//! touches), what a push answers and writes, and what a pull page holds.
//! Both stores ([`super::sqlite`], [`super::postgres`]) load the inputs in
//! their transaction, call these, and apply the writes, so the protocol is
//! written once and tested on canned data.

use std::collections::HashMap;

use sync::protocol::{
    Chain, Change, Mutation, MutationResult, MutationStatus, Op, PullResponse, PushRequest,
    PushResponse,
};

use super::{Device, PlayersError};
use crate::body;

/// What the store knows of a pushing client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientState {
    /// This player's client; its last settled mutation id.
    Known(u64),
    /// Never seen.
    Unknown,
    /// Another player's client id (treated as unknown, never shared).
    Foreign,
}

/// The digests of a client's last push, by mutation id: what a resend
/// must match. A device resends only after an answer it did not get, and
/// then the whole of that push (and maybe more), so every mutation of a
/// genuine resend at or below the last settled id is in the last push the
/// cloud took from that client, unchanged. A mutation under such an id
/// that is not there, or differs, is no resend: the id went to another
/// change (a device put back from an older copy renamed or deleted a
/// galaxy under an id its newer self used), and skipping it would lose it.
/// Stored as `<first id>:<digest>,<digest>,...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Recent {
    first: u64,
    digests: Vec<String>,
}

impl Recent {
    /// The record of `request`, as the cloud took it.
    pub(crate) fn of(request: &PushRequest) -> Self {
        Self {
            first: request.mutations.first().map_or(0, |m| m.mutation_id),
            digests: request.mutations.iter().map(digest).collect(),
        }
    }

    /// Reads a stored record; `None` for one that does not parse (then no
    /// resend is checked, as for clients from before the record).
    pub(crate) fn parse(stored: &str) -> Option<Self> {
        let (first, digests) = stored.split_once(':')?;
        Some(Self {
            first: first.parse().ok()?,
            digests: digests
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// As stored.
    pub(crate) fn encode(&self) -> String {
        format!("{}:{}", self.first, self.digests.join(","))
    }

    fn digest_of(&self, mutation_id: u64) -> Option<&str> {
        let i = mutation_id.checked_sub(self.first)?;
        self.digests
            .get(usize::try_from(i).ok()?)
            .map(String::as_str)
    }
}

/// What identifies a change, whatever its base version (a device raises
/// the base of changes still queued when earlier ones settle): its op,
/// entity and body. 48 bits: a collision only lets a reused id pass as a
/// resend, as every id did before.
fn digest(m: &Mutation) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        m.op.as_bytes(),
        m.entity_id.as_bytes(),
        m.body.to_string().as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..6])
}

/// Refuses a push whose mutations at or below the client's last settled
/// id are not a resend of its last push ([`Recent`]): `MutationIdReused`,
/// on which the device takes a new client id and sends them again.
pub(crate) fn check_resends(
    request: &PushRequest,
    client: ClientState,
    recent: Option<&Recent>,
) -> Result<(), PlayersError> {
    let (ClientState::Known(last), Some(recent)) = (client, recent) else {
        return Ok(());
    };
    for m in request
        .mutations
        .iter()
        .take_while(|m| m.mutation_id <= last)
    {
        if recent.digest_of(m.mutation_id) != Some(digest(m).as_str()) {
            return Err(PlayersError::MutationIdReused(m.mutation_id));
        }
    }
    Ok(())
}

/// The current state of one entity of a player.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Current {
    pub version: u64,
    pub deleted: bool,
    pub origin: String,
    /// The client whose change this is (none after a touch or a cloud
    /// create).
    pub writer: Option<String>,
}

/// A row change a push makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EntityWrite {
    /// Upsert a live entity written by the pushing client.
    Put {
        entity_id: String,
        version: u64,
        body: String,
        /// The player had no such entity: a `Galaxy.Created` (else a
        /// `Galaxy.Renamed`).
        created: bool,
    },
    /// Make it a tombstone (written by the pushing client).
    Delete { entity_id: String, version: u64 },
    /// A new version, no writer: every device pulls the entity again
    /// (after a rejected change, so the pusher gets the truth back). An
    /// entity whose tombstone was purged gets it back, so the delete
    /// reaches the pusher.
    Touch { entity_id: String, version: u64 },
}

/// What a push does.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PushPlan {
    pub response: PushResponse,
    /// Insert the client row (it was unknown).
    pub new_client: bool,
    /// The client's last settled mutation id after the push.
    pub last: u64,
    /// The record of this push to keep for the client ([`Recent`]);
    /// `None` for an empty push (the last record stays).
    pub recent: Option<String>,
    /// The player's counter after the push (changed when it grew).
    pub counter: u64,
    pub changed: bool,
    pub writes: Vec<EntityWrite>,
}

/// What one mutation does, before any write: its parsed op and body, or
/// why it is refused.
fn check(m: &Mutation) -> Result<(Op, Option<body::GalaxyBody>), String> {
    let op = Op::parse(&m.op)
        .ok_or_else(|| format!("unknown op '{}'", m.op.chars().take(32).collect::<String>()))?;
    body::check_entity_id(&m.entity_id)?;
    match op {
        Op::Put => Ok((op, Some(body::parse(&m.body)?))),
        Op::Delete => Ok((op, None)),
    }
}

/// A client id is 1 to 64 bytes without control characters (a NUL, for
/// one, cannot be stored in PostgreSQL's text and must not reach it).
/// Checked before the id is looked up.
pub(crate) fn check_client_id(client_id: &str) -> Result<(), PlayersError> {
    if client_id.is_empty() || client_id.len() > 64 || client_id.chars().any(char::is_control) {
        return Err(PlayersError::Invalid(
            "client_id has 1 to 64 bytes and no control characters".into(),
        ));
    }
    Ok(())
}

/// Checks a push's shape against the client's state: unknown clients
/// start at 1, ids are contiguous and leave no hole after the last settled
/// one. Returns the last settled id.
pub(crate) fn check_sequence(
    request: &PushRequest,
    client: ClientState,
) -> Result<u64, PlayersError> {
    let first = request.mutations.first().map(|m| m.mutation_id);
    let last = match client {
        ClientState::Known(last) => last,
        ClientState::Foreign => {
            return Err(PlayersError::ClientStateNotFound(request.client_id.clone()))
        }
        ClientState::Unknown => {
            if first.is_some_and(|f| f != 1) {
                return Err(PlayersError::ClientStateNotFound(request.client_id.clone()));
            }
            0
        }
    };
    if let Some(first) = first {
        if first > last + 1 {
            return Err(PlayersError::MutationGap {
                expected: last + 1,
                got: first,
            });
        }
        for (i, m) in request.mutations.iter().enumerate() {
            if m.mutation_id != first + i as u64 {
                return Err(PlayersError::MutationGap {
                    expected: first + i as u64,
                    got: m.mutation_id,
                });
            }
        }
    }
    Ok(last)
}

/// Plans a push. `current` holds the entities the push names (absent: the
/// player has no such entity); `floor` is the player's tombstone floor,
/// the highest version of a tombstone purged so far.
pub(crate) fn plan_push(
    device: &Device,
    request: &PushRequest,
    client: ClientState,
    counter: u64,
    floor: u64,
    mut current: HashMap<String, Current>,
) -> Result<PushPlan, PlayersError> {
    let last = check_sequence(request, client)?;
    let start = counter;
    let mut counter = counter;
    let mut writes = Vec::new();
    let mut results = Vec::with_capacity(request.mutations.len());
    for m in &request.mutations {
        if m.mutation_id <= last {
            // A resend of a put leaves its galaxy known to the player (a
            // tombstone at worst, until purged). One the player never had
            // is no resend: the id went to another change, which a device
            // whose data was put back from an older copy does. Skipping it
            // would drop a galaxy only that device holds.
            if Op::parse(&m.op) == Some(Op::Put) && !current.contains_key(&m.entity_id) {
                return Err(PlayersError::MutationIdReused(m.mutation_id));
            }
            // A resend (its answer was lost): when the entity is still as
            // this client left it, say its version, so the client's copy
            // is current (its own writes are not pulled back to it).
            let version = current
                .get(&m.entity_id)
                .filter(|c| c.writer.as_deref() == Some(request.client_id.as_str()))
                .map(|c| c.version);
            results.push(MutationResult {
                mutation_id: m.mutation_id,
                status: MutationStatus::Skipped,
                version,
                conflict: false,
                reason: None,
            });
            continue;
        }
        if !current.contains_key(&m.entity_id) && m.base_version > 0 && m.base_version <= floor {
            // The client knew the entity at a version the player no longer
            // has: it was deleted and its tombstone purged since (only
            // tombstones are ever removed). Deletes still win.
            current.insert(
                m.entity_id.clone(),
                Current {
                    version: m.base_version,
                    deleted: true,
                    origin: String::new(),
                    writer: None,
                },
            );
        }
        let existing = current.get(&m.entity_id).cloned();
        // A base older than the entity is a conflict unless this client
        // wrote the entity last: its own earlier writes, not yet
        // acknowledged, are what moved it (a create and a rename pushed
        // together both carry base 0).
        let conflict = existing.as_ref().is_some_and(|c| {
            c.version != m.base_version && c.writer.as_deref() != Some(request.client_id.as_str())
        });
        let outcome = match check(m) {
            Err(reason) => Err((reason, false)),
            Ok((Op::Put, _)) if existing.as_ref().is_some_and(|c| c.deleted) => Err((
                "the galaxy was deleted on another device; deletes win".to_string(),
                true,
            )),
            Ok((Op::Put, Some(mut b))) => {
                counter += 1;
                b.origin = match &existing {
                    Some(c) if !c.origin.is_empty() => c.origin.clone(),
                    _ => device.name.clone(),
                };
                writes.push(EntityWrite::Put {
                    entity_id: m.entity_id.clone(),
                    version: counter,
                    body: b.to_value().to_string(),
                    created: existing.is_none(),
                });
                current.insert(
                    m.entity_id.clone(),
                    Current {
                        version: counter,
                        deleted: false,
                        origin: b.origin,
                        writer: Some(request.client_id.clone()),
                    },
                );
                Ok(Some(counter))
            }
            Ok((Op::Delete, _)) => match existing {
                Some(c) if !c.deleted => {
                    counter += 1;
                    writes.push(EntityWrite::Delete {
                        entity_id: m.entity_id.clone(),
                        version: counter,
                    });
                    current.insert(
                        m.entity_id.clone(),
                        Current {
                            version: counter,
                            deleted: true,
                            origin: c.origin,
                            writer: Some(request.client_id.clone()),
                        },
                    );
                    Ok(Some(counter))
                }
                // Already gone (or never here): nothing to change.
                _ => Ok(None),
            },
            Ok((Op::Put, None)) => unreachable!("check gives puts a body"),
        };
        results.push(match outcome {
            Ok(version) => MutationResult {
                mutation_id: m.mutation_id,
                status: MutationStatus::Applied,
                version,
                conflict,
                reason: None,
            },
            Err((reason, conflict)) => {
                // The client's copy is wrong: touch the entity so its next
                // pull brings the server's truth back.
                if let Some(c) = current.get_mut(&m.entity_id) {
                    counter += 1;
                    c.version = counter;
                    c.writer = None;
                    writes.push(EntityWrite::Touch {
                        entity_id: m.entity_id.clone(),
                        version: counter,
                    });
                }
                MutationResult {
                    mutation_id: m.mutation_id,
                    status: MutationStatus::Rejected,
                    version: None,
                    conflict,
                    reason: Some(reason),
                }
            }
        });
    }
    let new_last = request
        .mutations
        .last()
        .map_or(last, |m| m.mutation_id.max(last));
    Ok(PushPlan {
        response: PushResponse {
            last_mutation_id: new_last,
            results,
        },
        new_client: client == ClientState::Unknown,
        last: new_last,
        recent: (!request.mutations.is_empty()).then(|| Recent::of(request).encode()),
        counter,
        changed: counter != start,
        writes,
    })
}

/// Whether a pull from `cursor` must reset instead: beyond the player's
/// latest version; or below the tombstone floor, unless the chain of
/// pages began at 0 and no tombstone newer than the chain's start was
/// purged since (one newer than `cursor` that is also newer than the
/// start deleted an entity after the chain began: an earlier page, or the
/// client's own write, which pulls skip, may have brought it, and its
/// deletion will not come). A chain not begun yet (cursor 0) has a start
/// only if the client's own writes were settled first (their oldest
/// version).
pub(crate) fn needs_reset(cursor: u64, latest: u64, floor: u64, chain: Chain) -> bool {
    cursor > latest
        || match chain {
            Chain::Resumed => cursor > 0 && cursor < floor,
            Chain::Fresh { latest: None } => false,
            Chain::Fresh {
                latest: Some(start),
            } => cursor < floor && floor > start,
        }
}

/// Shapes a pull page from up to `limit + 1` rows in version order, each
/// with whether the pulling client wrote its latest version: those are not
/// sent back (the client has them), but the cursor moves past them.
pub(crate) fn pull_page(
    rows: Vec<(bool, Change)>,
    cursor: u64,
    latest: u64,
    limit: usize,
    last_mutation_id: u64,
) -> PullResponse {
    let has_more = rows.len() > limit;
    let rows: Vec<_> = rows.into_iter().take(limit).collect();
    let cursor = if has_more {
        rows.last().map_or(cursor, |(_, c)| c.version)
    } else {
        latest
    };
    PullResponse {
        changes: rows
            .into_iter()
            .filter_map(|(own, c)| (!own).then_some(c))
            .collect(),
        cursor,
        has_more,
        last_mutation_id,
        reset: false,
        latest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn device() -> Device {
        Device {
            player_id: "p".into(),
            device_id: "d".into(),
            name: "laptop".into(),
        }
    }

    const E: &str = "01a00000-0000-7000-8000-000000000001";

    fn put(id: u64, base: u64, name: &str) -> Mutation {
        Mutation {
            mutation_id: id,
            op: "put".into(),
            entity_id: E.into(),
            base_version: base,
            body: json!({"name": name, "coords": {"x": 1, "y": 2, "z": 3}, "createdAt": "2026-12-01T00:00:00Z"}),
        }
    }

    fn del(id: u64, base: u64) -> Mutation {
        Mutation {
            mutation_id: id,
            op: "delete".into(),
            entity_id: E.into(),
            base_version: base,
            body: json!(null),
        }
    }

    fn request(mutations: Vec<Mutation>) -> PushRequest {
        PushRequest {
            client_id: "c".into(),
            mutations,
        }
    }

    #[test]
    fn resends_match_the_last_push_and_reused_ids_do_not() {
        let last_push = request(vec![put(3, 7, "A"), put(4, 8, "B")]);
        let recent = Recent::parse(&Recent::of(&last_push).encode()).unwrap();
        assert_eq!(recent, Recent::of(&last_push));
        // The same push again, with a new change after it; the base of a
        // queued change raised meanwhile does not matter.
        let resend = request(vec![put(3, 7, "A"), put(4, 9, "B"), del(5, 9)]);
        assert!(check_resends(&resend, ClientState::Known(4), Some(&recent)).is_ok());
        // An older copy of the device: other changes under ids 4, and 2
        // (before the last push: never resent).
        for reused in [
            request(vec![put(4, 8, "Other"), del(5, 9)]),
            request(vec![del(4, 8)]),
            request(vec![put(2, 1, "A"), put(3, 7, "A"), put(4, 8, "B")]),
        ] {
            let r = check_resends(&reused, ClientState::Known(4), Some(&recent));
            assert!(matches!(r, Err(PlayersError::MutationIdReused(_))), "{r:?}");
        }
        // Ids past the last settled one are not resends; a client without
        // a record (from before it) and unknown clients are not checked.
        let fresh = request(vec![put(5, 8, "New")]);
        assert!(check_resends(&fresh, ClientState::Known(4), Some(&recent)).is_ok());
        let old = request(vec![put(4, 8, "Other")]);
        assert!(check_resends(&old, ClientState::Known(4), None).is_ok());
        assert!(check_resends(&old, ClientState::Unknown, Some(&recent)).is_ok());
        assert_eq!(Recent::parse("garbage"), None);
    }

    #[test]
    fn a_batch_that_creates_renames_and_deletes_takes_one_version_each() {
        let plan = plan_push(
            &device(),
            &request(vec![put(1, 0, "A"), put(2, 11, "B"), del(3, 12)]),
            ClientState::Unknown,
            10,
            0,
            HashMap::new(),
        )
        .unwrap();
        assert!(plan.new_client && plan.changed);
        assert_eq!((plan.last, plan.counter), (3, 13));
        let versions: Vec<_> = plan.response.results.iter().map(|r| r.version).collect();
        assert_eq!(versions, vec![Some(11), Some(12), Some(13)]);
        assert!(plan.response.results.iter().all(|r| !r.conflict));
        assert!(matches!(
            plan.writes[2],
            EntityWrite::Delete { version: 13, .. }
        ));
    }

    #[test]
    fn resent_ids_are_skipped_and_a_put_on_a_tombstone_is_rejected_and_touched() {
        let current = HashMap::from([(
            E.to_string(),
            Current {
                version: 5,
                deleted: true,
                origin: String::new(),
                writer: Some("other".into()),
            },
        )]);
        let plan = plan_push(
            &device(),
            &request(vec![put(4, 0, "old"), put(5, 3, "late")]),
            ClientState::Known(4),
            5,
            0,
            current,
        )
        .unwrap();
        use MutationStatus::*;
        let statuses: Vec<_> = plan.response.results.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![Skipped, Rejected]);
        assert!(plan.response.results[1].conflict);
        assert_eq!(
            plan.writes,
            vec![EntityWrite::Touch {
                entity_id: E.into(),
                version: 6
            }]
        );
    }

    /// The entity, live at version 7, written last by `writer`.
    fn at_7_by(writer: &str) -> HashMap<String, Current> {
        HashMap::from([(
            E.to_string(),
            Current {
                version: 7,
                deleted: false,
                origin: "laptop".into(),
                writer: Some(writer.into()),
            },
        )])
    }

    #[test]
    fn a_settled_id_naming_a_galaxy_the_player_never_had_is_a_reused_id() {
        // A device put back from an older copy of itself numbers its new
        // galaxies with ids the cloud settled for other changes.
        let r = request(vec![put(3, 0, "made after the copy")]);
        assert!(matches!(
            plan_push(&device(), &r, ClientState::Known(4), 7, 0, HashMap::new()),
            Err(PlayersError::MutationIdReused(3))
        ));
        // The same id naming a galaxy the player has is a resend: skipped.
        let plan = plan_push(&device(), &r, ClientState::Known(4), 7, 0, at_7_by("c")).unwrap();
        assert_eq!(plan.response.results[0].status, MutationStatus::Skipped);
        // A delete of an unknown galaxy stays a harmless skip.
        let plan = plan_push(
            &device(),
            &request(vec![del(3, 0)]),
            ClientState::Known(4),
            7,
            0,
            HashMap::new(),
        )
        .unwrap();
        assert_eq!(plan.response.results[0].status, MutationStatus::Skipped);
    }

    #[test]
    fn a_resend_tells_the_version_while_the_entity_is_still_the_clients() {
        let r = request(vec![put(3, 0, "x")]);
        let plan = plan_push(&device(), &r, ClientState::Known(3), 7, 0, at_7_by("c")).unwrap();
        assert_eq!(plan.response.results[0].version, Some(7));
        assert!(!plan.changed);
        let plan = plan_push(&device(), &r, ClientState::Known(3), 7, 0, at_7_by("other")).unwrap();
        assert_eq!(
            plan.response.results[0].version, None,
            "another device wrote since"
        );
    }

    #[test]
    fn a_clients_own_unacknowledged_writes_are_no_conflict_but_another_devices_are() {
        // Created and renamed offline, pushed together: both carry base 0.
        let plan = plan_push(
            &device(),
            &request(vec![put(1, 0, "A"), put(2, 0, "B"), del(3, 0)]),
            ClientState::Unknown,
            10,
            0,
            HashMap::new(),
        )
        .unwrap();
        assert!(plan.response.results.iter().all(|r| !r.conflict));
        // The client's rename left on an entity this client wrote last
        // at version 7, whose answer it has not seen yet.
        let r = request(vec![put(4, 0, "C")]);
        let plan = plan_push(&device(), &r, ClientState::Known(3), 7, 0, at_7_by("c")).unwrap();
        assert!(!plan.response.results[0].conflict);
        let plan = plan_push(&device(), &r, ClientState::Known(3), 7, 0, at_7_by("other")).unwrap();
        assert!(plan.response.results[0].conflict, "another device wrote 7");
    }

    #[test]
    fn a_put_on_an_entity_whose_tombstone_was_purged_is_rejected_and_the_tombstone_returns() {
        // The client knew the galaxy at version 4; it was deleted at 6 and
        // the tombstone purged (floor 6), so the player has no such row.
        let r = request(vec![put(2, 4, "renamed offline")]);
        let plan = plan_push(&device(), &r, ClientState::Known(1), 9, 6, HashMap::new()).unwrap();
        let result = &plan.response.results[0];
        assert_eq!(result.status, MutationStatus::Rejected);
        assert!(result.conflict);
        assert!(result.reason.as_deref().unwrap().contains("deleted"));
        assert_eq!(
            plan.writes,
            vec![EntityWrite::Touch {
                entity_id: E.into(),
                version: 10
            }]
        );
        // A create (base 0) and a base above the floor (a row the server
        // lost some other way) are still applied: nothing is thrown away.
        for base in [0, 7] {
            let r = request(vec![put(2, base, "new")]);
            let plan =
                plan_push(&device(), &r, ClientState::Known(1), 9, 6, HashMap::new()).unwrap();
            assert_eq!(
                plan.response.results[0].status,
                MutationStatus::Applied,
                "{base}"
            );
        }
    }

    #[test]
    fn unknown_foreign_and_gapped_pushes_are_refused_whole() {
        let r = request(vec![put(3, 0, "x")]);
        assert!(matches!(
            plan_push(&device(), &r, ClientState::Unknown, 0, 0, HashMap::new()),
            Err(PlayersError::ClientStateNotFound(_))
        ));
        assert!(matches!(
            plan_push(
                &device(),
                &request(vec![put(1, 0, "x")]),
                ClientState::Foreign,
                0,
                0,
                HashMap::new()
            ),
            Err(PlayersError::ClientStateNotFound(_))
        ));
        assert!(matches!(
            plan_push(&device(), &r, ClientState::Known(1), 0, 0, HashMap::new()),
            Err(PlayersError::MutationGap {
                expected: 2,
                got: 3
            })
        ));
        assert!(matches!(
            plan_push(
                &device(),
                &request(vec![put(2, 0, "x"), put(4, 0, "y")]),
                ClientState::Known(1),
                0,
                0,
                HashMap::new()
            ),
            Err(PlayersError::MutationGap {
                expected: 3,
                got: 4
            })
        ));
    }

    #[test]
    fn pull_pages_hide_the_clients_own_writes_but_move_past_them() {
        let change = |v| Change {
            entity_id: format!("e{v}"),
            version: v,
            deleted: false,
            body: json!(null),
        };
        let page = pull_page(
            vec![(true, change(1)), (false, change(2)), (false, change(3))],
            0,
            9,
            2,
            4,
        );
        assert!(page.has_more);
        assert_eq!(page.cursor, 2);
        assert_eq!(page.changes, vec![change(2)]);
        let last = pull_page(vec![(false, change(3))], 2, 9, 2, 4);
        assert!(!last.has_more);
        assert_eq!(last.cursor, 9);
        let fresh_since = |start| Chain::Fresh {
            latest: Some(start),
        };
        assert!(needs_reset(5, 4, 0, Chain::Resumed));
        assert!(needs_reset(2, 9, 3, Chain::Resumed));
        assert!(!needs_reset(2, 9, 3, Chain::Fresh { latest: None }));
        assert!(!needs_reset(0, 9, 3, Chain::Resumed));
        // A fresh chain that began at version 9: tombstones up to 9 were
        // of entities it never saw; one purged beyond 9 and beyond the
        // cursor may be of an entity an earlier page brought.
        assert!(!needs_reset(2, 12, 9, fresh_since(9)));
        assert!(needs_reset(2, 12, 10, fresh_since(9)));
        assert!(
            !needs_reset(11, 12, 10, fresh_since(9)),
            "past the purged tombstones"
        );
        assert!(
            needs_reset(13, 12, 10, fresh_since(9)),
            "beyond the latest version"
        );
        // A client whose own writes (from version 4) were settled before
        // its first pull: a deletion purged beyond 4 may be of one of them.
        assert!(needs_reset(0, 12, 5, fresh_since(4)));
        assert!(!needs_reset(0, 12, 4, fresh_since(4)));
    }
}
