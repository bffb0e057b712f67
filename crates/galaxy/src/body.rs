//! A galaxy as a sync entity: the JSON body devices push and pull, and the
//! rules a body must follow. Pure functions, shared by the device (which
//! writes bodies) and galaxy-cloud (which refuses bad ones).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::coords::{Coords, EXTENT};
use crate::table::Galaxy;
use crate::workload::DEFAULT_PARTITION;

/// Longest galaxy name, in characters.
pub const MAX_NAME_CHARS: usize = 80;

/// The body of a galaxy entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GalaxyBody {
    /// Its name.
    pub name: String,
    /// Where it is.
    pub coords: Coords,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// The orchestration instance that created it.
    #[serde(default)]
    pub instance_id: String,
    /// The device that created it (set by the server at the first push).
    #[serde(default)]
    pub origin: String,
}

impl GalaxyBody {
    /// The body of a stored galaxy.
    pub fn of(g: &Galaxy) -> Self {
        Self {
            name: g.name.clone(),
            coords: g.coords,
            created_at: g.timestamp,
            instance_id: g.instance_id.clone(),
            origin: g.origin.clone(),
        }
    }

    /// As JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a galaxy body serializes")
    }

    /// The galaxy row this body describes.
    pub fn into_galaxy(self, row_key: &str, version: u64) -> Galaxy {
        Galaxy {
            partition_key: DEFAULT_PARTITION.to_string(),
            row_key: row_key.to_string(),
            timestamp: self.created_at,
            name: self.name,
            coords: self.coords,
            instance_id: self.instance_id,
            version,
            origin: self.origin,
        }
    }
}

/// A name a player may give: trimmed, 1 to [`MAX_NAME_CHARS`] characters,
/// no control characters. Returns the trimmed name.
pub fn check_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("a galaxy name cannot be empty".into());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "a galaxy name has at most {MAX_NAME_CHARS} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a galaxy name cannot contain control characters".into());
    }
    Ok(name.to_string())
}

/// An entity id: a UUID in its hyphenated lower-case form (galaxy row keys
/// are UUIDv7 made on the device).
pub fn check_entity_id(id: &str) -> Result<(), String> {
    match uuid::Uuid::parse_str(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(format!(
            "entity id '{}' is not a lower-case hyphenated UUID",
            id.chars().take(64).collect::<String>()
        )),
    }
}

/// The longest instance id and origin a body may carry, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;

/// `origin` for a galaxy a device made in the cloud: `cloud (<device
/// name>)`, cut to [`MAX_TEXT_BYTES`] on a character boundary (a device
/// name of 64 multi-byte characters can be longer, and devices refuse a
/// body whose origin is).
pub fn cloud_origin(device_name: &str) -> String {
    let mut origin = format!("cloud ({device_name})");
    if origin.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES - ")".len();
        while !origin.is_char_boundary(end) {
            end -= 1;
        }
        origin.truncate(end);
        origin.push(')');
    }
    origin
}

/// Parses and checks a pushed body: a valid name, coordinates inside the
/// universe, a creation time.
pub fn parse(value: &Value) -> Result<GalaxyBody, String> {
    let body: GalaxyBody =
        serde_json::from_value(value.clone()).map_err(|e| format!("not a galaxy body: {e}"))?;
    let name = check_name(&body.name)?;
    let Coords { x, y, z } = body.coords;
    // `unsigned_abs`: `i32::MIN.abs()` overflows (a panic in debug, a
    // negative number that passes the check in release).
    let extent = EXTENT.unsigned_abs();
    if x.unsigned_abs() > extent || y.unsigned_abs() > extent || z.unsigned_abs() > extent / 10 {
        return Err(format!(
            "coordinates ({x}, {y}, {z}) are outside the universe"
        ));
    }
    if body.instance_id.len() > MAX_TEXT_BYTES || body.origin.len() > MAX_TEXT_BYTES {
        return Err("instanceId and origin have at most 256 bytes".into());
    }
    // As names: a NUL, for one, would be kept in the stored JSON and make
    // every later read of the galaxy on PostgreSQL fail.
    if (body.instance_id.chars().chain(body.origin.chars())).any(char::is_control) {
        return Err("instanceId and origin cannot contain control characters".into());
    }
    Ok(GalaxyBody { name, ..body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Value {
        json!({"name": "Vega", "coords": {"x": 1, "y": -2, "z": 3},
               "createdAt": "2026-12-01T10:00:00Z", "instanceId": "i1"})
    }

    #[test]
    fn a_good_body_round_trips_through_a_galaxy() {
        let b = parse(&body()).unwrap();
        assert_eq!(b.name, "Vega");
        let g = b
            .clone()
            .into_galaxy("0190d7a0-0000-7000-8000-000000000000", 4);
        assert_eq!(g.version, 4);
        assert_eq!(GalaxyBody::of(&g), b);
    }

    #[test]
    fn bad_bodies_say_why() {
        let cases = [
            (json!({"name": "  "}), "not a galaxy body"),
            (
                json!({"name": " ", "coords": {"x":0,"y":0,"z":0}, "createdAt": "2026-12-01T10:00:00Z"}),
                "empty",
            ),
            (
                json!({"name": "a\u{7}", "coords": {"x":0,"y":0,"z":0}, "createdAt": "2026-12-01T10:00:00Z"}),
                "control",
            ),
            (
                json!({"name": "x".repeat(81), "coords": {"x":0,"y":0,"z":0}, "createdAt": "2026-12-01T10:00:00Z"}),
                "at most 80",
            ),
            (
                json!({"name": "a", "coords": {"x":5000,"y":0,"z":0}, "createdAt": "2026-12-01T10:00:00Z"}),
                "outside",
            ),
            (
                json!({"name": "a", "coords": {"x":0,"y":i32::MIN,"z":0}, "createdAt": "2026-12-01T10:00:00Z"}),
                "outside",
            ),
            (
                json!({"name": "a", "coords": {"x":0,"y":0,"z":i32::MIN}, "createdAt": "2026-12-01T10:00:00Z"}),
                "outside",
            ),
            (
                json!({"name": "a", "coords": {"x":0,"y":0,"z":0}, "createdAt": "2026-12-01T10:00:00Z", "instanceId": "i\u{0}"}),
                "control",
            ),
            (
                json!({"name": "a", "coords": {"x":0,"y":0,"z":0}, "createdAt": "2026-12-01T10:00:00Z", "origin": "\u{1b}[31m"}),
                "control",
            ),
            (json!(null), "not a galaxy body"),
        ];
        for (v, why) in cases {
            let e = parse(&v).unwrap_err();
            assert!(e.contains(why), "{v}: {e}");
        }
    }

    #[test]
    fn cloud_origins_always_fit_a_body() {
        assert_eq!(cloud_origin("phone"), "cloud (phone)");
        let long = cloud_origin(&"é".repeat(64 * 2));
        assert!(
            long.len() <= MAX_TEXT_BYTES && long.ends_with("é)"),
            "{long}"
        );
        let mut b = parse(&body()).unwrap();
        b.origin = cloud_origin(&"日".repeat(64));
        assert!(parse(&b.to_value()).is_ok());
    }

    #[test]
    fn entity_ids_are_canonical_uuids() {
        assert!(check_entity_id("0190d7a0-0000-7000-8000-000000000000").is_ok());
        for bad in [
            "",
            "x",
            "0190D7A0-0000-7000-8000-000000000000",
            "0190d7a000007000800000000000000",
            "{0190d7a0-0000-7000-8000-000000000000}",
        ] {
            assert!(check_entity_id(bad).is_err(), "{bad}");
        }
    }
}
