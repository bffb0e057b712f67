//! What the router tells a webhook about its subscription rather than its
//! events: the validation handshake before the first event (in the
//! subscription's delivery schema: Event Grid's validation event, or the
//! CloudEvents webhook `OPTIONS` request), and the deletion notice after
//! the last (`aeg-event-type: SubscriptionDeletion`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::event::Schema;
use crate::model::{Destination, WebHook};
use crate::store::{Provisioning, RouterStore, SubscriptionRecord};

/// Runs the handshake of a webhook subscription and records the outcome:
/// `Succeeded` when the endpoint proves it wants the events, `Failed`
/// (with why) when it refuses. An endpoint that does not answer, or
/// answers 2xx without the code (it will validate by hand: a GET of
/// `validation_url`, which the Event Grid schema's validation event
/// carries), leaves the subscription `AwaitingManualAction`. The outcome
/// is recorded only while the subscription still awaits this handshake's
/// code: a slow answer never decides a definition PUT since.
pub async fn validate(
    store: &RouterStore,
    http: &reqwest::Client,
    sub: &SubscriptionRecord,
    schema: Schema,
    validation_url: &str,
    timeout: Duration,
) {
    let Destination::WebHook(hook) = &sub.input.destination else {
        return;
    };
    // A URL stored before today's rules (or by an older process on a
    // shared database) is checked again before it is called.
    let outcome = match crate::egress::check_url(&hook.endpoint_url) {
        Err(why) => Handshake::Failed(why),
        Ok(url) => handshake(http, sub, url, schema, validation_url, timeout).await,
    };
    let (state, reason) = match outcome {
        Handshake::Passed => (Provisioning::Succeeded, None),
        Handshake::Failed(why) => (Provisioning::Failed, Some(why)),
        Handshake::NoAnswer => return,
    };
    match store
        .set_provisioning(&sub.topic, &sub.name, &sub.validation_code, state, reason)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(subscription = %sub.name, "a handshake of a replaced definition is not recorded")
        }
        Err(e) => tracing::warn!("recording a validation: {e}"),
    }
}

/// How a validation handshake went.
enum Handshake {
    /// The endpoint proved it wants the events.
    Passed,
    /// It answered anything else (why).
    Failed(String),
    /// It did not answer, or will validate by hand: the subscription
    /// stays `AwaitingManualAction`.
    NoAnswer,
}

impl From<Result<(), String>> for Handshake {
    fn from(r: Result<(), String>) -> Self {
        r.map_or_else(Handshake::Failed, |()| Handshake::Passed)
    }
}

/// Sends the validation handshake for `schema`.
async fn handshake(
    http: &reqwest::Client,
    sub: &SubscriptionRecord,
    url: reqwest::Url,
    schema: Schema,
    validation_url: &str,
    timeout: Duration,
) -> Handshake {
    let answered: Result<(), String> = match schema {
        Schema::EventGridSchema => {
            let event = json!([system_event(
                sub,
                "Microsoft.EventGrid.SubscriptionValidationEvent",
                json!({ "validationCode": sub.validation_code, "validationUrl": validation_url }),
                "2",
            )]);
            let sent = http
                .post(url)
                .header("aeg-event-type", "SubscriptionValidation")
                .header("aeg-subscription-name", sub.name.to_uppercase())
                .json(&event)
                .timeout(timeout)
                .send()
                .await;
            match sent {
                // The reference: "must answer 200"; another 2xx is not a
                // validation (as on Azure).
                Ok(r) if r.status() == reqwest::StatusCode::OK => {
                    let v = r.json::<Value>().await.unwrap_or(Value::Null);
                    match v.get("validationResponse") {
                        // No code: the endpoint validates by hand, with a
                        // GET of the validationUrl.
                        None | Some(Value::Null) => return Handshake::NoAnswer,
                        Some(code) if code.as_str() == Some(sub.validation_code.as_str()) => Ok(()),
                        Some(_) => {
                            Err("the endpoint answered a wrong validationResponse".to_string())
                        }
                    }
                }
                Ok(r) => Err(format!(
                    "the endpoint answered HTTP {} to the validation event",
                    r.status().as_u16()
                )),
                Err(e) => {
                    tracing::info!(subscription = %sub.name, "validation: {e}");
                    return Handshake::NoAnswer;
                }
            }
        }
        Schema::CloudEvents => {
            let sent = http
                .request(reqwest::Method::OPTIONS, url)
                .header("WebHook-Request-Origin", "eventgrid.galaxy-forge.local")
                .header("WebHook-Request-Rate", "120")
                .timeout(timeout)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    let allowed = r
                        .headers()
                        .get("WebHook-Allowed-Origin")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    if allowed == "*"
                        || allowed.eq_ignore_ascii_case("eventgrid.galaxy-forge.local")
                    {
                        Ok(())
                    } else {
                        Err("the endpoint did not grant WebHook-Allowed-Origin".to_string())
                    }
                }
                Ok(r) => Err(format!(
                    "the endpoint answered HTTP {} to the OPTIONS handshake",
                    r.status().as_u16()
                )),
                Err(e) => {
                    tracing::info!(subscription = %sub.name, "validation: {e}");
                    return Handshake::NoAnswer;
                }
            }
        }
    };
    answered.into()
}

/// Tells the endpoints of deleted webhook subscriptions that no more
/// events will come: one request each with `aeg-event-type:
/// SubscriptionDeletion`, carrying Event Grid's
/// `Microsoft.EventGrid.SubscriptionDeletedEvent` (its data names the
/// subscription) in the subscription's delivery schema, so a receiver can
/// release what it kept for it. Best effort, as on Azure: sent once, its
/// answer ignored. Only endpoints that passed their handshake are told: one
/// that never proved it wants requests from the router gets none.
pub async fn announce_deletion(
    http: &reqwest::Client,
    topic_schema: Schema,
    gone: Vec<SubscriptionRecord>,
    timeout: Duration,
) {
    let notices = gone
        .iter()
        .filter(|s| s.provisioning == Provisioning::Succeeded)
        .filter_map(|s| match &s.input.destination {
            Destination::WebHook(hook) => Some((s, hook)),
            Destination::Orchestration(_) => None,
        })
        .map(|(s, hook)| {
            deletion_notice(
                http,
                s,
                hook,
                s.input.delivery_schema(topic_schema),
                timeout,
            )
        });
    futures::future::join_all(notices).await;
}

/// An event the router itself sends `sub` about the subscription, in the
/// Event Grid schema.
fn system_event(
    sub: &SubscriptionRecord,
    event_type: &str,
    data: Value,
    data_version: &str,
) -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "topic": sub.topic,
        "subject": "",
        "eventType": event_type,
        "eventTime": chrono::Utc::now().to_rfc3339(),
        "data": data,
        "dataVersion": data_version,
        "metadataVersion": "1",
    })
}

async fn deletion_notice(
    http: &reqwest::Client,
    sub: &SubscriptionRecord,
    hook: &WebHook,
    schema: Schema,
    timeout: Duration,
) {
    // Checked again, as every request the router sends.
    let Ok(url) = crate::egress::check_url(&hook.endpoint_url) else {
        return;
    };
    let event = system_event(
        sub,
        "Microsoft.EventGrid.SubscriptionDeletedEvent",
        json!({
            "eventSubscriptionId": format!("/topics/{}/eventSubscriptions/{}", sub.topic, sub.name),
        }),
        "1",
    );
    let (content_type, body) = match schema {
        Schema::EventGridSchema => ("application/json; charset=utf-8", json!([event])),
        Schema::CloudEvents => (
            "application/cloudevents+json; charset=utf-8",
            crate::deliver::to_cloud_event(&event),
        ),
    };
    let sent = http
        .post(url)
        .timeout(timeout)
        .header("aeg-event-type", "SubscriptionDeletion")
        .header("aeg-subscription-name", sub.name.to_uppercase())
        .header("aeg-metadata-version", "1")
        .header("aeg-data-version", "1")
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await;
    if let Err(e) = sent {
        tracing::info!(subscription = %sub.name, "deletion notice: {e}");
    }
}
