//! Statement arguments and row decoding: sends, creations, statuses,
//! histories, listing filters and continuation tokens.

use super::*;

/// The parameters of the `send` statement for one message.
pub(super) struct SendArgs {
    id: String,
    visible: Option<i64>,
    text: String,
    rewind: bool,
}

impl SendArgs {
    pub(super) fn new(id: &InstanceId, message: &Message) -> Self {
        Self {
            id: id.as_str().to_string(),
            visible: message.visible_at.map(|t| t.timestamp_millis()),
            text: json(message),
            rewind: matches!(message.kind, EventKind::Rewound { .. }),
        }
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.id, &self.visible, &self.text, &self.rewind]
    }
}

/// The parameters of the `send_many` statement: [`SendArgs`] as columns.
#[derive(Default)]
pub(super) struct SendManyArgs {
    ids: Vec<String>,
    visible: Vec<Option<i64>>,
    texts: Vec<String>,
    rewind: Vec<bool>,
}

impl SendManyArgs {
    pub(super) fn push(&mut self, a: SendArgs) {
        self.ids.push(a.id);
        self.visible.push(a.visible);
        self.texts.push(a.text);
        self.rewind.push(a.rewind);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 4] {
        [&self.ids, &self.visible, &self.texts, &self.rewind]
    }
}

/// What the `send` statement answered. `external` sends (client requests)
/// get errors for a missing or finished instance; internal ones (results)
/// are dropped.
pub(super) fn sent(
    row: &Row,
    id: &InstanceId,
    external: bool,
    woken: &mut Woken,
) -> Result<(), StoreError> {
    let status: Option<String> = row.get(0);
    let due: Option<i64> = row.get(1);
    let now: i64 = row.get(2);
    match (status, due) {
        (None, _) if external => Err(StoreError::NotFound(id.clone())),
        (Some(_), None) if external => Err(StoreError::Finished(id.clone())),
        (_, Some(due)) => {
            woken.due(due, now);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Sends a message inside a transaction (see [`sent`]).
pub(super) async fn send_in(
    c: &impl GenericClient,
    sql: &Sql,
    id: &InstanceId,
    message: &Message,
    external: bool,
    woken: &mut Woken,
) -> Result<(), StoreError> {
    let stmt = c.prepare_cached(&sql.send).await.map_err(db_err)?;
    let args = SendArgs::new(id, message);
    let row = c.query_one(&stmt, &args.params()).await.map_err(db_err)?;
    sent(&row, id, external, woken)
}

/// The parameters of the `upsert_instance` statement for one instance.
pub(super) struct CreateArgs {
    id: String,
    name: String,
    execution_id: String,
    input: String,
    created: i64,
    parent: Option<String>,
    started: String,
    /// The creating worker: its process runs the first turn unless busy.
    home: i64,
    /// Whether a finished instance of the id is replaced.
    replace: bool,
}

impl CreateArgs {
    pub(super) fn new(inst: &NewInstance, home: i64) -> Self {
        let started = inst.start_message();
        Self {
            id: inst.instance_id.as_str().to_string(),
            name: inst.name.clone(),
            execution_id: inst.execution_id.clone(),
            input: json(&inst.input),
            created: inst.created_at.timestamp_millis(),
            parent: inst
                .parent
                .as_ref()
                .map(|p| p.instance_id.as_str().to_string()),
            started: json(&started),
            home,
            replace: !inst.only_if_absent,
        }
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.id,
            &self.name,
            &self.execution_id,
            &self.input,
            &self.created,
            &self.parent,
            &self.started,
            &self.home,
            &self.replace,
        ]
    }
}

/// Inserts or replaces an instance inside a transaction; `false` when a live
/// instance holds the id.
pub(super) async fn create_in(
    c: &impl GenericClient,
    sql: &Sql,
    inst: &NewInstance,
    home: i64,
) -> Result<bool, StoreError> {
    let stmt = c
        .prepare_cached(&sql.upsert_instance)
        .await
        .map_err(db_err)?;
    let args = CreateArgs::new(inst, home);
    let row = c.query_one(&stmt, &args.params()).await.map_err(db_err)?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// The `SubOrchestrationFailed` a parent gets when its child's id is held by
/// a live instance.
pub(super) fn child_conflict(child: &NewInstance) -> (InstanceId, Message) {
    let parent = child
        .parent
        .as_ref()
        .expect("sub-orchestrations have a parent");
    let message = Message {
        execution_id: Some(parent.execution_id.clone()),
        visible_at: None,
        sent_at: child.created_at,
        kind: EventKind::SubOrchestrationFailed {
            task_id: parent.task_id,
            error: FailureDetails::new(
                "Conflict",
                format!(
                    "sub-orchestration instance '{}' already exists and is not finished",
                    child.instance_id
                ),
            ),
        },
    };
    (parent.instance_id.clone(), message)
}

pub(super) fn status_from_row(r: &Row) -> Result<InstanceStatus, StoreError> {
    let opt_json = |i: usize| -> Option<Value> {
        r.get::<_, Option<String>>(i)
            .and_then(|s| serde_json::from_str(&s).ok())
    };
    let status: String = r.get(3);
    Ok(InstanceStatus {
        instance_id: InstanceId::from_stored(r.get(0)),
        name: r.get(1),
        execution_id: r.get(2),
        runtime_status: parse_status(&status)?,
        input: opt_json(4).unwrap_or(Value::Null),
        output: opt_json(5),
        custom_status: opt_json(6),
        failure: r
            .get::<_, Option<String>>(7)
            .and_then(|s| serde_json::from_str::<FailureDetails>(&s).ok()),
        created_at: types::from_millis(r.get(8)),
        last_updated_at: types::from_millis(r.get(9)),
        parent_instance_id: r.get::<_, Option<String>>(10).map(InstanceId::from_stored),
        history_events: r.get::<_, i64>(11) as u64,
        history_bytes: r.get::<_, i64>(12) as u64,
        history: None,
    })
}

pub(super) const STATUS_COLUMNS: &str =
    "instance_id, name, execution_id, runtime_status, input, output, custom_status, failure, \
     created_at, last_updated_at, parent_instance_id, history_events, history_bytes";

/// The status columns, with the input read as JSON null unless
/// `with_input` (nothing of a large input is loaded then).
pub(super) fn status_columns(with_input: bool) -> std::borrow::Cow<'static, str> {
    if with_input {
        STATUS_COLUMNS.into()
    } else {
        STATUS_COLUMNS
            .replacen("input,", "'null'::text AS input,", 1)
            .into()
    }
}

/// The first events of an instance's history, within `cap`
/// ([`HistoryCap::ALL`]: all of it). Stored turns past the cap's event
/// count are not asked for, and the rows stream in, so none past its bytes
/// is held.
pub(super) async fn read_history(
    c: &impl GenericClient,
    sql: &Sql,
    id: &str,
    cap: HistoryCap,
) -> Result<Vec<HistoryEvent>, StoreError> {
    let limit = cap.first_event_limit();
    let rows = c
        .query_raw(
            &format!(
                "SELECT events FROM {}.history WHERE instance_id = $1 AND first_event_id < $2 \
                 ORDER BY first_event_id",
                sql.s
            ),
            [&id as &(dyn ToSql + Sync), &limit],
        )
        .await
        .map_err(db_err)?;
    futures::pin_mut!(rows);
    let mut history = CappedHistory::new(cap);
    while history.wants_more() {
        let Some(row) = rows.next().await else {
            break;
        };
        history.take(row.map_err(db_err)?.get(0))?;
    }
    Ok(history.events)
}

/// Builds the WHERE clause of a filter with numbered parameters.
pub(super) fn filter_sql(
    f: &InstanceFilter,
    args: &mut Vec<Box<dyn ToSql + Sync + Send>>,
) -> String {
    let mut clauses = vec!["TRUE".to_string()];
    if !f.statuses.is_empty() {
        let statuses: Vec<String> = f.statuses.iter().map(|s| s.as_str().to_string()).collect();
        args.push(Box::new(statuses));
        clauses.push(format!("runtime_status = ANY(${})", args.len()));
    }
    if let Some(t) = f.created_from {
        args.push(Box::new(t.timestamp_millis()));
        clauses.push(format!("created_at >= ${}", args.len()));
    }
    if let Some(t) = f.created_to {
        args.push(Box::new(t.timestamp_millis()));
        clauses.push(format!("created_at <= ${}", args.len()));
    }
    if let Some(p) = &f.instance_id_prefix {
        args.push(Box::new(p.clone()));
        clauses.push(format!("starts_with(instance_id, ${})", args.len()));
    }
    clauses.join(" AND ")
}

pub(super) fn params(args: &[Box<dyn ToSql + Sync + Send>]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect()
}
