//! The event router over HTTP (`../shared/reference/event-grid.md`):
//! topic and subscription management with Azure's property names (function
//! key), publishing to a topic's endpoint (its own keys or SAS tokens),
//! dead letters and their re-drive, and each event's delivery history.
//! Handlers parse, delegate to [`eventgrid`] and map errors.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use eventgrid::model::{check_name, SubscriptionInput, TopicInput};
use eventgrid::store::schema_name;
use eventgrid::store::{Provisioning, StoreError, SubscriptionRecord, TopicRecord};
use eventgrid::Schema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{AppError, ErrorBody};
use crate::extract::{self, JsonBody, Path, Query, Typed};
use crate::payload::BaseUrl;
use crate::state::AppState;

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NoTopic(_) => AppError::not_found("TopicNotFound", message),
            StoreError::NoSubscription(..) => {
                AppError::not_found("EventSubscriptionNotFound", message)
            }
            StoreError::Invalid(_) => AppError::bad_request("InvalidRequest", message),
            StoreError::Quota(_) => AppError::new(StatusCode::CONFLICT, "QuotaExceeded", message),
            StoreError::Conflict(_) => {
                AppError::new(StatusCode::CONFLICT, "InputSchemaFixed", message)
            }
            StoreError::Interrupted(_) => {
                AppError::new(StatusCode::SERVICE_UNAVAILABLE, "ShuttingDown", message)
            }
            StoreError::Database(e) => AppError::internal("the events store", e),
            StoreError::Postgres(e) | StoreError::NotStored(e) => {
                AppError::internal("the events store", e)
            }
        }
    }
}

/// A topic's publishing endpoint.
pub fn endpoint(base: &BaseUrl, topic: &str) -> String {
    format!("{}/api/events/topics/{topic}/events", base.0)
}

fn topic_body(base: &BaseUrl, t: &TopicRecord) -> Value {
    json!({
        "name": t.name,
        "endpoint": endpoint(base, &t.name),
        "inputSchema": schema_name(t.input_schema),
        "provisioningState": "Succeeded",
    })
}

fn subscription_body(s: &SubscriptionRecord) -> Value {
    let mut props = serde_json::to_value(&s.input).unwrap_or(Value::Null);
    props["provisioningState"] = json!(match s.provisioning {
        Provisioning::AwaitingManualAction => "AwaitingManualAction",
        Provisioning::Succeeded => "Succeeded",
        Provisioning::Failed => "Failed",
    });
    if let Some(r) = &s.reason {
        props["provisioningReason"] = json!(r);
    }
    json!({ "name": s.name, "topic": s.topic, "properties": props })
}

/// Tells deleted webhook subscriptions' endpoints, in the background (the
/// deletion is answered without waiting for them).
fn announce_deletion(state: &AppState, topic_schema: Schema, gone: Vec<SubscriptionRecord>) {
    let (http, timeout) = (state.event_http.clone(), state.event_config.timeout);
    tokio::spawn(async move {
        eventgrid::notices::announce_deletion(&http, topic_schema, gone, timeout).await
    });
}

/// The URL a receiver GETs to validate by hand. Only the endpoint learns
/// it (in the validation event): whoever manages subscriptions must not be
/// able to validate one aimed at a stranger.
fn validation_url(base: &BaseUrl, s: &SubscriptionRecord) -> String {
    format!(
        "{}/api/events/topics/{}/eventSubscriptions/{}/validate?validationCode={}",
        base.0, s.topic, s.name, s.validation_code
    )
}

fn name(what: &str, raw: &str) -> Result<(), AppError> {
    check_name(what, raw).map_err(|m| AppError::bad_request("InvalidName", m))
}

/// Creates a topic, or answers the existing one (its input schema is
/// fixed once it exists).
#[utoipa::path(put, path = "/api/events/topics/{topic}", tag = "events",
    params(("topic" = String, Path, description = "3 to 64 letters, digits and dashes")),
    request_body(content = Option<TopicInput>, description = "The input schema (default EventGridSchema for a new topic); the body may be empty", content_type = "application/json"),
    responses((status = 200, description = "`{name, endpoint, inputSchema, provisioningState}`", body = Object),
        (status = 400, description = "Bad name or body", body = ErrorBody), (status = 401, description = "Missing or wrong key", body = ErrorBody),
        (status = 409, description = "A new topic past the limit of 1,000 (`QuotaExceeded`), or another input schema for an existing topic (`InputSchemaFixed`)", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn put_topic(
    State(state): State<AppState>,
    base: BaseUrl,
    Path(topic): Path<String>,
    Typed(input): Typed<TopicInput>,
) -> Result<Response, AppError> {
    name("topic", &topic)?;
    let t = state.events.put_topic(&topic, input.input_schema).await?;
    Ok(Json(topic_body(&base, &t)).into_response())
}

/// One topic.
#[utoipa::path(get, path = "/api/events/topics/{topic}", tag = "events",
    params(("topic" = String, Path, description = "The topic")),
    responses((status = 200, description = "The topic", body = Object), (status = 404, description = "No such topic", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn get_topic(
    State(state): State<AppState>,
    base: BaseUrl,
    Path(topic): Path<String>,
) -> Result<Response, AppError> {
    Ok(Json(topic_body(&base, &state.events.topic(&topic).await?)).into_response())
}

/// Deletes a topic, its subscriptions and their pending deliveries; each
/// active webhook subscription's endpoint gets a `SubscriptionDeletion`
/// notice.
#[utoipa::path(delete, path = "/api/events/topics/{topic}", tag = "events",
    params(("topic" = String, Path, description = "The topic")),
    responses((status = 200, description = "Deleted", body = Object), (status = 404, description = "No such topic", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn delete_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Response, AppError> {
    let t = state.events.topic(&topic).await?;
    let gone = state.events.delete_topic(&topic).await?;
    announce_deletion(&state, t.input_schema, gone);
    Ok(Json(json!({ "name": topic, "deleted": true })).into_response())
}

/// Every topic.
#[utoipa::path(get, path = "/api/events/topics", tag = "events",
    responses((status = 200, description = "`{value: [topic]}`", body = Object), (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn list_topics(
    State(state): State<AppState>,
    base: BaseUrl,
) -> Result<Response, AppError> {
    let value: Vec<Value> = state
        .events
        .topics()
        .await?
        .iter()
        .map(|t| topic_body(&base, t))
        .collect();
    Ok(Json(json!({ "value": value })).into_response())
}

/// The topic's two keys.
#[utoipa::path(post, path = "/api/events/topics/{topic}/listKeys", tag = "events",
    params(("topic" = String, Path, description = "The topic")),
    responses((status = 200, description = "`{key1, key2}` (base64)", body = Object), (status = 404, description = "No such topic", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Response, AppError> {
    let t = state.events.topic(&topic).await?;
    Ok(Json(json!({ "key1": t.key1, "key2": t.key2 })).into_response())
}

/// Body of `regenerateKey`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyName {
    /// Which key to replace.
    #[schema(pattern = "^key[12]$")]
    key_name: String,
}

/// Replaces one of the topic's keys.
#[utoipa::path(post, path = "/api/events/topics/{topic}/regenerateKey", tag = "events",
    params(("topic" = String, Path, description = "The topic")),
    request_body(content = KeyName, content_type = "application/json"),
    responses((status = 200, description = "`{key1, key2}`", body = Object), (status = 400, description = "Bad keyName", body = ErrorBody),
        (status = 404, description = "No such topic", body = ErrorBody), (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn regenerate_key(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    Typed(k): Typed<KeyName>,
) -> Result<Response, AppError> {
    let t = state.events.regenerate_key(&topic, &k.key_name).await?;
    Ok(Json(json!({ "key1": t.key1, "key2": t.key2 })).into_response())
}

/// Creates or replaces an event subscription. A webhook is validated
/// (the handshake runs at once, in the background) before it receives
/// anything, unless it replaces an active one with the same endpoint; an
/// orchestration subscription is active at once.
#[utoipa::path(put, path = "/api/events/topics/{topic}/eventSubscriptions/{name}", tag = "events",
    params(("topic" = String, Path, description = "The topic"), ("name" = String, Path, description = "3 to 64 letters, digits and dashes")),
    request_body(content = Object, description = "Azure's shape: destination, filter, eventDeliverySchema, retryPolicy, deadLetterDestination (top-level or under properties)", content_type = "application/json"),
    responses((status = 200, description = "The subscription with its provisioningState", body = Object),
        (status = 400, description = "Bad name, filter, URL or policy", body = ErrorBody), (status = 404, description = "No such topic", body = ErrorBody),
        (status = 409, description = "A new subscription past the limit of 500 per topic (`QuotaExceeded`)", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn put_subscription(
    State(state): State<AppState>,
    base: BaseUrl,
    Path((topic, sub)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, AppError> {
    name("event subscription", &sub)?;
    let t = state.events.topic(&topic).await?;
    let input = SubscriptionInput::parse(body, t.input_schema)
        .map_err(|m| AppError::bad_request("InvalidRequest", m))?;
    let schema = input.delivery_schema(t.input_schema);
    let record = state.events.define_subscription(&t, &sub, input).await?;
    if record.provisioning == Provisioning::AwaitingManualAction {
        let (store, http, timeout) = (
            state.events.clone(),
            state.event_http.clone(),
            state.event_config.timeout,
        );
        let (r, url) = (record.clone(), validation_url(&base, &record));
        tokio::spawn(async move {
            eventgrid::notices::validate(&store, &http, &r, schema, &url, timeout).await
        });
    }
    Ok(Json(subscription_body(&record)).into_response())
}

/// One event subscription.
#[utoipa::path(get, path = "/api/events/topics/{topic}/eventSubscriptions/{name}", tag = "events",
    params(("topic" = String, Path, description = "The topic"), ("name" = String, Path, description = "The subscription")),
    responses((status = 200, description = "The subscription", body = Object), (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn get_subscription(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
) -> Result<Response, AppError> {
    Ok(Json(subscription_body(
        &state.events.subscription(&topic, &sub).await?,
    ))
    .into_response())
}

/// Deletes an event subscription with its undelivered events and its dead
/// letters (a new subscription of that name must not inherit them); an
/// active webhook's endpoint gets a `SubscriptionDeletion` notice.
#[utoipa::path(delete, path = "/api/events/topics/{topic}/eventSubscriptions/{name}", tag = "events",
    params(("topic" = String, Path, description = "The topic"), ("name" = String, Path, description = "The subscription")),
    responses((status = 200, description = "Deleted", body = Object), (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn delete_subscription(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let t = state.events.topic(&topic).await?;
    let gone = state.events.delete_subscription(&topic, &sub).await?;
    announce_deletion(&state, t.input_schema, vec![gone]);
    Ok(Json(json!({ "name": sub, "deleted": true })).into_response())
}

/// A topic's event subscriptions.
#[utoipa::path(get, path = "/api/events/topics/{topic}/eventSubscriptions", tag = "events",
    params(("topic" = String, Path, description = "The topic")),
    responses((status = 200, description = "`{value: [subscription]}`", body = Object), (status = 404, description = "No such topic", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn list_subscriptions(
    State(state): State<AppState>,
    Path(topic): Path<String>,
) -> Result<Response, AppError> {
    state.events.topic(&topic).await?;
    let value: Vec<Value> = state
        .events
        .subscriptions(&topic)
        .await?
        .iter()
        .map(subscription_body)
        .collect();
    Ok(Json(json!({ "value": value })).into_response())
}

/// Query of the manual validation URL.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct ValidateParams {
    /// The code the validation event carried.
    pub validation_code: Option<String>,
}

/// The validation URL: a receiver that could not answer the handshake at
/// once GETs it (with the code it received) to activate the subscription.
#[utoipa::path(get, path = "/api/events/topics/{topic}/eventSubscriptions/{name}/validate", tag = "events",
    params(("topic" = String, Path, description = "The topic"), ("name" = String, Path, description = "The subscription"), ValidateParams),
    responses((status = 200, description = "Validated", body = Object), (status = 400, description = "Wrong code", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 409, description = "The handshake failed: PUT the subscription again (`NotAwaitingValidation`)", body = ErrorBody)))]
pub async fn validate(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    Query(params): Query<ValidateParams>,
) -> Result<Response, AppError> {
    let s = state.events.subscription(&topic, &sub).await?;
    let given = params.validation_code.unwrap_or_default();
    let ok = !s.validation_code.is_empty()
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            s.validation_code.as_bytes(),
        ));
    if !ok {
        return Err(AppError::bad_request(
            "InvalidValidationCode",
            "the validation code is not this subscription's",
        ));
    }
    let changed = state
        .events
        .set_provisioning(
            &topic,
            &sub,
            &s.validation_code,
            Provisioning::Succeeded,
            None,
        )
        .await?;
    // Validating twice is fine; a subscription whose handshake failed
    // (the endpoint refused) needs a new PUT.
    if !changed && s.provisioning != Provisioning::Succeeded {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "NotAwaitingValidation",
            "the subscription is not awaiting validation: PUT it again",
        ));
    }
    Ok(Json(json!({ "name": sub, "provisioningState": "Succeeded" })).into_response())
}

/// Query of the dead-letter listing.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Page size, 1 to 1000 (default 100).
    pub top: Option<String>,
    /// List letters after this sequence number (`nextLink` carries it).
    pub after: Option<String>,
}

/// Page size of the dead-letter listing without `top`.
const DEAD_LETTER_PAGE: usize = 100;

/// A subscription's dead letters, oldest first, a page at a time: at most
/// `top`, and a page stops after the letter that takes its events past
/// 16 MiB; `nextLink` is there when more may follow.
#[utoipa::path(get, path = "/api/events/topics/{topic}/eventSubscriptions/{name}/deadLetters", tag = "events",
    params(("topic" = String, Path, description = "The topic"), ("name" = String, Path, description = "The subscription"), DeadLetterParams),
    responses((status = 200, description = "`{value: [{sequence, event, deadLetterReason, deliveryAttempts, lastDeliveryOutcome, publishTime, lastDeliveryAttemptTime (RFC 3339), publishTimeMs, lastDeliveryAttemptTimeMs}], nextLink?}`", body = Object),
        (status = 400, description = "Bad top or after", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody), (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn dead_letters(
    State(state): State<AppState>,
    base: BaseUrl,
    Path((topic, sub)): Path<(String, String)>,
    Query(params): Query<DeadLetterParams>,
) -> Result<Response, AppError> {
    let top = extract::top(params.top.as_deref(), DEAD_LETTER_PAGE)?;
    let after = match params.after.as_deref() {
        None => 0,
        Some(v) => extract::whole_number("after", v)?,
    };
    state.events.subscription(&topic, &sub).await?;
    let page = state.events.dead_letters(&topic, &sub, after, top).await?;
    let mut body = json!({ "value": page.value });
    if let Some(next) = page.next_after {
        body["nextLink"] = json!(format!(
            "{}/api/events/topics/{topic}/eventSubscriptions/{sub}/deadLetters?top={top}&after={next}",
            base.0
        ));
    }
    Ok(Json(body).into_response())
}

/// Body of `redeliver`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Redeliver {
    #[serde(default)]
    sequences: Option<Vec<i64>>,
}

/// Re-drives dead letters (all, or `{"sequences": [...]}`).
#[utoipa::path(post, path = "/api/events/topics/{topic}/eventSubscriptions/{name}/redeliver", tag = "events",
    params(("topic" = String, Path, description = "The topic"), ("name" = String, Path, description = "The subscription")),
    request_body(content = Object, description = "`{}` for all dead letters, or `{\"sequences\": [..]}`", content_type = "application/json"),
    responses((status = 200, description = "`{redelivered: n}`", body = Object), (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 401, description = "Missing or wrong key", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn redeliver(
    State(state): State<AppState>,
    Path((topic, sub)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, AppError> {
    state.events.subscription(&topic, &sub).await?;
    let r: Redeliver = if body.is_null() {
        Redeliver::default()
    } else {
        serde_json::from_value(body)
            .map_err(|e| AppError::bad_request("InvalidRequest", e.to_string()))?
    };
    let n = state
        .events
        .redeliver(
            &topic,
            &sub,
            r.sequences,
            chrono::Utc::now().timestamp_millis(),
        )
        .await?;
    Ok(Json(json!({ "redelivered": n })).into_response())
}

/// One event's deliveries: per subscription, its state and every attempt.
#[utoipa::path(get, path = "/api/events/topics/{topic}/events/{eventId}/deliveries", tag = "events",
    params(("topic" = String, Path, description = "The topic"), ("eventId" = String, Path, description = "The event's id")),
    responses((status = 200, description = "`{value: [{sequence, subscription, state, deliveryAttempts, deadLetterReason, attempts}]}`", body = Object),
        (status = 401, description = "Missing or wrong key", body = ErrorBody), (status = 404, description = "No such topic", body = ErrorBody)),
    security(("function_key" = []), ("function_key_header" = [])))]
pub async fn deliveries(
    State(state): State<AppState>,
    Path((topic, event_id)): Path<(String, String)>,
) -> Result<Response, AppError> {
    // An unknown topic is a 404, not an empty list.
    state.events.topic(&topic).await?;
    Ok(
        Json(json!({ "value": state.events.event_deliveries(&topic, &event_id).await? }))
            .into_response(),
    )
}

/// Publishes events to a topic (its endpoint): `aeg-sas-key` or
/// `aeg-sas-token`; 200 only once the events are durably stored.
#[utoipa::path(post, path = "/api/events/topics/{topic}/events", tag = "events",
    params(("topic" = String, Path, description = "The topic"), ("api-version" = Option<String>, Query, description = "Accepted and ignored (the SDKs send 2018-01-01)")),
    request_body(content = Object, description = "Event Grid: a JSON array of events. CloudEvents: application/cloudevents+json (one), application/cloudevents-batch+json (array), or binary mode (ce-* headers)", content_type = "application/json"),
    responses((status = 200, description = "Stored"), (status = 400, description = "Malformed or wrong schema", body = ErrorBody),
        (status = 401, description = "Missing, wrong or expired key or token", body = ErrorBody), (status = 404, description = "No such topic", body = ErrorBody),
        (status = 413, description = "An event or the request over 1 MB, or over 5,000 events", body = ErrorBody)))]
pub async fn publish(
    State(state): State<AppState>,
    base: BaseUrl,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let t = state.events.topic(&topic).await?;
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let keys = [t.key1.as_str(), t.key2.as_str()];
    let checked = match (header("aeg-sas-key"), header("aeg-sas-token")) {
        (Some(k), _) => eventgrid::sas::check_key(k, &keys),
        (None, Some(token)) => {
            eventgrid::sas::check_token(token, &endpoint(&base, &t.name), &keys, chrono::Utc::now())
        }
        (None, None) => Err(eventgrid::sas::SasError::Missing),
    };
    checked.map_err(|e| AppError::unauthorized(e.to_string()))?;
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let events = eventgrid::event::parse(
        &t.name,
        t.input_schema,
        header("content-type"),
        &pairs,
        &body,
    )?;
    state
        .events
        .publish(&t.name, events, chrono::Utc::now().timestamp_millis())
        .await?;
    Ok(StatusCode::OK.into_response())
}
