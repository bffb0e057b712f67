//! The route table. Each route is registered once, through `utoipa-axum`,
//! so the router and the OpenAPI document cannot disagree.

pub mod events;
pub mod galaxies;
pub mod instances;
pub mod ops;
pub mod players;
pub mod rules;
pub mod starter;
pub mod stream;
pub mod sync;

use axum::middleware::from_fn_with_state;
use axum::Router;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use crate::{device_auth, keys};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "galaxy-cloud",
        description = "The Durable Functions HTTP API (starter and management routes) over the Galaxy Forge engine, plus the galaxies table, live event streams and operations routes."
    ),
    modifiers(&KeySchemes),
    tags(
        (name = "starter", description = "Start orchestrations"),
        (name = "management", description = "Durable Functions instance management"),
        (name = "live", description = "Server-Sent Events of instance changes (extension)"),
        (name = "galaxies", description = "The galaxies table"),
        (name = "players", description = "Players, devices, device tokens and link codes"),
        (name = "sync", description = "Device sync: push, pull, live pokes"),
        (name = "events", description = "The event router (Event Grid model): topics, subscriptions, publishing, dead letters"),
        (name = "operations", description = "Health, metrics, this document"),
    )
)]
struct ApiDoc;

/// Declares how keys are passed, so the `security` of each operation means
/// something to OpenAPI tools.
struct KeySchemes;

impl utoipa::Modify for KeySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let query = || SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("code")));
        let header = || SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(keys::KEY_HEADER)));
        components.add_security_scheme("function_key", query());
        components.add_security_scheme("function_key_header", header());
        components.add_security_scheme("master_key", query());
        components.add_security_scheme("master_key_header", header());
        // The key the check-status URIs carry: the management routes only.
        components.add_security_scheme("system_key", query());
        components.add_security_scheme(
            "device_token",
            SecurityScheme::Http(utoipa::openapi::security::Http::new(
                utoipa::openapi::security::HttpAuthScheme::Bearer,
            )),
        );
    }
}

/// Every route, with its OpenAPI description. Protected routes sit behind
/// the key check, player and sync routes behind the device token check;
/// registering, joining, `/healthz` and `/api/openapi.json` need neither.
pub(crate) fn build(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let protected = OpenApiRouter::new()
        .routes(routes!(starter::start))
        .routes(routes!(starter::start_with_id))
        // The starter under the management path, as the Durable Functions
        // extension's own creation URL templates have it.
        .route(
            "/runtime/webhooks/durabletask/orchestrators/{function}",
            axum::routing::post(starter::start),
        )
        .route(
            "/runtime/webhooks/durabletask/orchestrators/{function}/{instance}",
            axum::routing::post(starter::start_with_id),
        )
        .routes(routes!(instances::list, instances::purge_by_filter))
        // What the Durable Functions client libraries send: their URL
        // templates put an empty instance id where the id goes.
        .route(
            "/runtime/webhooks/durabletask/instances/",
            axum::routing::get(instances::list).delete(instances::purge_by_filter),
        )
        .routes(routes!(instances::status, instances::purge))
        .routes(routes!(instances::raise_event))
        .routes(routes!(instances::terminate))
        .routes(routes!(instances::suspend))
        .routes(routes!(instances::resume))
        .routes(routes!(instances::restart))
        .routes(routes!(instances::rewind))
        .routes(routes!(stream::instance_stream))
        .routes(routes!(stream::all_stream))
        .routes(routes!(galaxies::list))
        .routes(routes!(galaxies::get))
        .routes(routes!(ops::metrics))
        .routes(routes!(events::list_topics))
        .routes(routes!(
            events::put_topic,
            events::get_topic,
            events::delete_topic
        ))
        .routes(routes!(events::list_keys))
        .routes(routes!(events::regenerate_key))
        .routes(routes!(events::list_subscriptions))
        .routes(routes!(
            events::put_subscription,
            events::get_subscription,
            events::delete_subscription
        ))
        .routes(routes!(events::dead_letters))
        .routes(routes!(events::redeliver))
        .routes(routes!(events::deliveries))
        .route_layer(from_fn_with_state(state.clone(), keys::require_key));
    let device = OpenApiRouter::new()
        .routes(routes!(players::link_code))
        .routes(routes!(players::me))
        .routes(routes!(players::revoke))
        .routes(routes!(sync::push))
        .routes(routes!(sync::pull))
        .routes(routes!(sync::events))
        .route_layer(from_fn_with_state(
            state.clone(),
            device_auth::require_device,
        ));
    let public = OpenApiRouter::new()
        .routes(routes!(players::register))
        .routes(routes!(players::join))
        .routes(routes!(events::publish))
        .routes(routes!(events::validate))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::openapi));
    let (router, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(protected)
        .merge(device)
        .merge(public)
        .split_for_parts();
    rules::apply(&mut openapi);
    (router, openapi)
}
