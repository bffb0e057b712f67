//! What the server enforces on path and query parameters, declared in the
//! OpenAPI document: id and name patterns, boolean spellings, number
//! ranges, time formats.
//!
//! The routes declare their parameters as plain strings (their handlers
//! parse them with [`crate::extract`]); this pass, run once over the
//! finished document, gives every parameter of a known name the schema of
//! its parser. One table keyed by name keeps the rule next to the others
//! and the same on every route that shares the parameter, so that a
//! schema-driven fuzzer finds no request the document calls valid and the
//! server rejects, nor the other way round (`tests/openapi_fuzz.rs`).

use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{OpenApi, Required, Schema};

/// What [`durable::InstanceId::new`] accepts: 1 to 256 characters, none
/// of them a control character (Unicode Cc) or one of `/ \ # ?`, and not
/// `.` or `..` (written without a lookahead, which not every generator
/// of matching strings supports).
pub const INSTANCE_ID_PATTERN: &str = concat!(
    r"^(?:[^./\\#?\u0000-\u001F\u007F-\u009F][^/\\#?\u0000-\u001F\u007F-\u009F]{0,255}",
    r"|\.(?:[^./\\#?\u0000-\u001F\u007F-\u009F][^/\\#?\u0000-\u001F\u007F-\u009F]{0,254}",
    r"|\.[^/\\#?\u0000-\u001F\u007F-\u009F]{1,254}))$"
);
/// What [`eventgrid::model::check_name`] accepts for topics and
/// subscriptions (Azure's rule).
pub const RESOURCE_NAME_PATTERN: &str = "^[A-Za-z0-9-]{3,64}$";
/// What [`crate::extract::flag`] accepts: `true`/`false` in any case, or
/// `1`/`0` (an empty value counts as absent).
pub const FLAG_PATTERN: &str = "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$";
/// What [`crate::extract::statuses`] accepts: runtime status names,
/// comma-separated.
pub const STATUSES_PATTERN: &str = "^(Pending|Running|Completed|ContinuedAsNew|Failed|Canceled|Terminated|Suspended)(,(Pending|Running|Completed|ContinuedAsNew|Failed|Canceled|Terminated|Suspended))*$";

/// Gives each parameter of a known name the schema of its parser.
pub fn apply(openapi: &mut OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                refine(parameter);
            }
        }
    }
}

fn refine(parameter: &mut Parameter) {
    let text = || ObjectBuilder::new().schema_type(Type::String);
    let schema = match (&parameter.parameter_in, parameter.name.as_str()) {
        (ParameterIn::Path, "instanceId") => text()
            .pattern(Some(INSTANCE_ID_PATTERN))
            .min_length(Some(1))
            .max_length(Some(256)),
        (ParameterIn::Path, "topic" | "name") => text()
            .pattern(Some(RESOURCE_NAME_PATTERN))
            .min_length(Some(3))
            .max_length(Some(64)),
        (
            ParameterIn::Query,
            "showHistory"
            | "showHistoryOutput"
            | "showInput"
            | "returnInternalServerErrorOnFailure"
            | "restartWithNewInstanceId"
            | "fresh",
        ) => text().pattern(Some(FLAG_PATTERN)),
        (ParameterIn::Query, "top") => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(1000)),
        (ParameterIn::Query, "after") => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(i64::MAX)),
        (ParameterIn::Query, "timeout" | "pollingInterval") => ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(0)),
        (ParameterIn::Query, "createdTimeFrom" | "createdTimeTo") => {
            text().format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
        }
        (ParameterIn::Query, "runtimeStatus") => text().pattern(Some(STATUSES_PATTERN)),
        _ => return,
    };
    let schema = Schema::Object(schema.build());
    // An empty value counts as absent ([`crate::extract::Query`]), so an
    // optional query parameter may also be sent empty.
    let optional_query =
        parameter.parameter_in == ParameterIn::Query && parameter.required != Required::True;
    parameter.schema = Some(if optional_query {
        let empty = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([""]));
        Schema::AnyOf(AnyOfBuilder::new().item(schema).item(empty).build()).into()
    } else {
        schema.into()
    });
}

/// Request bodies whose rules utoipa's derives cannot state (one of
/// several shapes, fields that depend on a discriminator), set in the
/// rendered document from JSON Schemas kept beside the checks they
/// describe.
pub fn bodies(doc: &mut serde_json::Value) {
    let subscription = "/api/events/topics/{topic}/eventSubscriptions/{name}";
    if let Some(content) = doc
        .pointer_mut(&format!(
            "/paths/{}/put/requestBody/content/application~1json",
            subscription.replace('~', "~0").replace('/', "~1")
        ))
        .and_then(serde_json::Value::as_object_mut)
    {
        content.insert(
            "schema".into(),
            eventgrid::subscription_schema::subscription_body(),
        );
    }
}
