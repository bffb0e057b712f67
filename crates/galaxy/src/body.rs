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

/// Parses and checks a pushed body: a valid name, coordinates inside the
/// universe, a creation time.
pub fn parse(value: &Value) -> Result<GalaxyBody, String> {
    let body: GalaxyBody =
        serde_json::from_value(value.clone()).map_err(|e| format!("not a galaxy body: {e}"))?;
    let name = check_name(&body.name)?;
    let Coords { x, y, z } = body.coords;
    if x.abs() > EXTENT || y.abs() > EXTENT || z.abs() > EXTENT / 10 {
        return Err(format!(
            "coordinates ({x}, {y}, {z}) are outside the universe"
        ));
    }
    if body.instance_id.len() > 256 || body.origin.len() > 256 {
        return Err("instanceId and origin have at most 256 bytes".into());
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
            (json!(null), "not a galaxy body"),
        ];
        for (v, why) in cases {
            let e = parse(&v).unwrap_err();
            assert!(e.contains(why), "{v}: {e}");
        }
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
