//! Row decoding and the read side's helpers: statuses, histories,
//! listing filters, continuation tokens.

use super::*;

pub(super) fn read_meta(
    tx: &Connection,
    id: &InstanceId,
) -> Result<Option<(Meta, u32)>, StoreError> {
    tx.prepare_cached(
        "SELECT runtime_status, execution_id, history_events, attempts FROM instances WHERE instance_id = ?1",
    )
    .map_err(db_err)?
    .query_row([id.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })
    .optional()
    .map_err(db_err)?
    .map(|(status, execution_id, len, attempts)| {
        Ok((Meta::from_row(&status, execution_id, len)?, attempts as u32))
    })
    .transpose()
}

/// Builds the WHERE clause of a filter. Only terminal instances are purged,
/// so purge callers add that themselves.
pub(super) fn filter_sql(f: &InstanceFilter, args: &mut Vec<rusqlite::types::Value>) -> String {
    use rusqlite::types::Value as V;
    let mut clauses = vec!["1=1".to_string()];
    if !f.statuses.is_empty() {
        let marks: Vec<_> = f
            .statuses
            .iter()
            .map(|s| {
                args.push(V::Text(s.as_str().to_string()));
                format!("?{}", args.len())
            })
            .collect();
        clauses.push(format!("runtime_status IN ({})", marks.join(",")));
    }
    if let Some(t) = f.created_from {
        args.push(V::Integer(t.timestamp_millis()));
        clauses.push(format!("created_at >= ?{}", args.len()));
    }
    if let Some(t) = f.created_to {
        args.push(V::Integer(t.timestamp_millis()));
        clauses.push(format!("created_at <= ?{}", args.len()));
    }
    if let Some(p) = &f.instance_id_prefix {
        args.push(V::Text(p.clone()));
        clauses.push(format!(
            "substr(instance_id, 1, length(?{n})) = ?{n}",
            n = args.len()
        ));
    }
    clauses.join(" AND ")
}

pub(super) fn status_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(InstanceStatus, ())> {
    let opt_json = |i: usize| -> rusqlite::Result<Option<Value>> {
        Ok(r.get::<_, Option<String>>(i)?
            .and_then(|s| serde_json::from_str(&s).ok()))
    };
    let status: String = r.get(3)?;
    Ok((
        InstanceStatus {
            instance_id: InstanceId::from_stored(r.get(0)?),
            name: r.get(1)?,
            execution_id: r.get(2)?,
            runtime_status: RuntimeStatus::parse(&status).unwrap_or(RuntimeStatus::Failed),
            input: opt_json(4)?.unwrap_or(Value::Null),
            output: opt_json(5)?,
            custom_status: opt_json(6)?,
            failure: r
                .get::<_, Option<String>>(7)?
                .and_then(|s| serde_json::from_str(&s).ok()),
            created_at: types::from_millis(r.get(8)?),
            last_updated_at: types::from_millis(r.get(9)?),
            parent_instance_id: r.get::<_, Option<String>>(10)?.map(InstanceId::from_stored),
            history_events: r.get::<_, i64>(11)? as u64,
            history_bytes: r.get::<_, i64>(12)? as u64,
            history: None,
        },
        (),
    ))
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
            .replacen("input,", "'null' AS input,", 1)
            .into()
    }
}

/// The first events of an instance's history, within `cap`
/// ([`HistoryCap::ALL`]: all of it): stored turns are read one at a time
/// and no more are read once it is reached.
pub(super) fn read_history(
    conn: &Connection,
    id: &str,
    cap: HistoryCap,
) -> Result<Vec<HistoryEvent>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT events FROM history WHERE instance_id = ?1 AND first_event_id < ?2 \
             ORDER BY first_event_id",
        )
        .map_err(db_err)?;
    let mut rows = stmt
        .query(params![id, cap.first_event_limit()])
        .map_err(db_err)?;
    let mut history = CappedHistory::new(cap);
    while history.wants_more() {
        let Some(row) = rows.next().map_err(db_err)? else {
            break;
        };
        let text = row.get_ref(0).map_err(db_err)?;
        history.take(text.as_str().map_err(|e| db_err(e.into()))?)?;
    }
    Ok(history.events)
}
