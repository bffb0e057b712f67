//! A subscription's filter and whether an event matches it, with Event
//! Grid's property names and rules (`../shared/reference/event-grid.md`):
//!
//! - `includedEventTypes` (case-insensitive; absent or empty: all),
//!   `subjectBeginsWith`, `subjectEndsWith` (case-insensitive unless
//!   `isSubjectCaseSensitive`).
//! - `advancedFilters`: each names a `key` (`data.a.b`, or a top-level
//!   attribute such as `subject`, `eventType`, `source`, `type`) and an
//!   `operatorType`. The values of one filter are ORed, the filters ANDed.
//!   String comparisons ignore case. A key missing from the event matches
//!   nothing, except `NumberNotIn` and `StringNotIn` (nothing is in a set
//!   it is not part of) and `IsNullOrUndefined`.
//! - Arrays: with `enableAdvancedFilteringOnArrays`, an array value matches
//!   a positive operator when any element does, and a negative operator
//!   (`…NotIn`, `StringNot…`, `NumberNotInRange`) only when no element
//!   matches its positive twin. Without it, an array is a value of the
//!   wrong type.
//! - A value of the wrong type (a string for a number operator, an object
//!   anywhere) matches no positive operator and every negative one: it is
//!   not in the set, does not contain the text. Numbers and booleans are
//!   compared as text by string operators.
//!
//! Filters are checked when a subscription is written ([`Filter::check`]):
//! at most 25 advanced filters, 25 values each, 512 characters per string.
//! Pure: JSON in, a boolean out.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most advanced filters per subscription.
pub const MAX_ADVANCED_FILTERS: usize = 25;
/// Most values per advanced filter. (Azure counts 25 among all of a
/// subscription's filters; per filter is what the OpenAPI document can
/// declare, and what a client validating against it expects.)
pub const MAX_VALUES: usize = 25;
/// Longest string value, in characters.
pub const MAX_STRING_CHARS: usize = 512;

/// Why a filter cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

/// An advanced filter's operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The number is one of `values`.
    NumberIn,
    /// The number is none of `values`.
    NumberNotIn,
    /// The number is below `value`.
    NumberLessThan,
    /// The number is above `value`.
    NumberGreaterThan,
    /// The number is at most `value`.
    NumberLessThanOrEquals,
    /// The number is at least `value`.
    NumberGreaterThanOrEquals,
    /// The number lies in one of the `[low, high]` ranges of `values`.
    NumberInRange,
    /// The number lies in none of the ranges.
    NumberNotInRange,
    /// The boolean equals `value`.
    BoolEquals,
    /// The text contains one of `values`.
    StringContains,
    /// The text contains none of `values`.
    StringNotContains,
    /// The text begins with one of `values`.
    StringBeginsWith,
    /// The text begins with none of `values`.
    StringNotBeginsWith,
    /// The text ends with one of `values`.
    StringEndsWith,
    /// The text ends with none of `values`.
    StringNotEndsWith,
    /// The text is one of `values`.
    StringIn,
    /// The text is none of `values`.
    StringNotIn,
    /// The key is missing or null.
    IsNullOrUndefined,
    /// The key is present and not null.
    IsNotNull,
}

impl Operator {
    /// The positive operator a negative one is the negation of.
    fn negated(self) -> Option<Operator> {
        use Operator::*;
        Some(match self {
            NumberNotIn => NumberIn,
            NumberNotInRange => NumberInRange,
            StringNotContains => StringContains,
            StringNotBeginsWith => StringBeginsWith,
            StringNotEndsWith => StringEndsWith,
            StringNotIn => StringIn,
            _ => return None,
        })
    }
}

/// One advanced filter, as Event Grid spells it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdvancedFilter {
    /// The operator.
    pub operator_type: Operator,
    /// What it looks at: `data.…` or an event attribute.
    pub key: String,
    /// The single value of the comparison operators and `BoolEquals`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The values of the set and text operators (ranges: `[low, high]` pairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Value>>,
}

/// A subscription's filter, as Event Grid spells it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filter {
    /// Event types delivered (absent or empty: every type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_event_types: Option<Vec<String>>,
    /// The subject begins with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_begins_with: Option<String>,
    /// The subject ends with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_ends_with: Option<String>,
    /// Subject filters compare case-sensitively.
    #[serde(default)]
    pub is_subject_case_sensitive: bool,
    /// Advanced filters, all of which must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advanced_filters: Vec<AdvancedFilter>,
    /// Arrays are matched element by element.
    #[serde(default)]
    pub enable_advanced_filtering_on_arrays: bool,
}

fn check_string(what: &str, s: &str) -> Result<(), FilterError> {
    if s.chars().count() > MAX_STRING_CHARS {
        return Err(FilterError(format!(
            "{what} has more than {MAX_STRING_CHARS} characters"
        )));
    }
    Ok(())
}

impl AdvancedFilter {
    fn check(&self, i: usize) -> Result<(), FilterError> {
        use Operator::*;
        let at = format!(
            "advancedFilters[{i}] ({:?} on '{}')",
            self.operator_type, self.key
        );
        if self.key.trim().is_empty() {
            return Err(FilterError(format!("advancedFilters[{i}] has no key")));
        }
        check_string(&at, &self.key)?;
        let values = || {
            self.values
                .as_deref()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| FilterError(format!("{at} needs a non-empty 'values' array")))
        };
        let value = || {
            self.value
                .as_ref()
                .ok_or_else(|| FilterError(format!("{at} needs a 'value'")))
        };
        match self.operator_type {
            NumberIn | NumberNotIn => {
                for v in values()? {
                    v.as_f64().ok_or_else(|| {
                        FilterError(format!("{at}: every value must be a number"))
                    })?;
                }
            }
            NumberLessThan
            | NumberGreaterThan
            | NumberLessThanOrEquals
            | NumberGreaterThanOrEquals => {
                value()?
                    .as_f64()
                    .ok_or_else(|| FilterError(format!("{at}: 'value' must be a number")))?;
            }
            NumberInRange | NumberNotInRange => {
                for v in values()? {
                    match v.as_array().map(|r| r.iter().map(Value::as_f64).collect::<Vec<_>>()) {
                        Some(r) if r.len() == 2 && r.iter().all(Option::is_some) && r[0] <= r[1] => {}
                        _ => {
                            return Err(FilterError(format!(
                                "{at}: every value must be a [low, high] pair of numbers with low <= high"
                            )))
                        }
                    }
                }
            }
            BoolEquals => {
                value()?
                    .as_bool()
                    .ok_or_else(|| FilterError(format!("{at}: 'value' must be true or false")))?;
            }
            StringContains | StringNotContains | StringBeginsWith | StringNotBeginsWith
            | StringEndsWith | StringNotEndsWith | StringIn | StringNotIn => {
                for v in values()? {
                    let s = v.as_str().ok_or_else(|| {
                        FilterError(format!("{at}: every value must be a string"))
                    })?;
                    check_string(&at, s)?;
                }
            }
            IsNullOrUndefined | IsNotNull => {}
        }
        if self.values.as_ref().is_some_and(|v| v.len() > MAX_VALUES) {
            return Err(FilterError(format!(
                "{at} has more than {MAX_VALUES} values"
            )));
        }
        Ok(())
    }

    /// Whether `event` matches this filter.
    pub fn matches(&self, event: &Value, arrays: bool) -> bool {
        use Operator::*;
        let found = lookup(event, &self.key);
        match self.operator_type {
            IsNullOrUndefined => return found.is_none_or(Value::is_null),
            IsNotNull => return found.is_some_and(|v| !v.is_null()),
            _ => {}
        }
        let Some(found) = found else {
            return matches!(self.operator_type, NumberNotIn | StringNotIn);
        };
        let items: Vec<&Value> = match found {
            Value::Array(items) if arrays => items.iter().collect(),
            other => vec![other],
        };
        match self.operator_type.negated() {
            // A negative operator: no element matches its positive twin.
            Some(positive) => !items.iter().any(|v| self.test(positive, v)),
            None => items.iter().any(|v| self.test(self.operator_type, v)),
        }
    }

    /// One value against a positive operator.
    fn test(&self, op: Operator, v: &Value) -> bool {
        use Operator::*;
        let values = self.values.as_deref().unwrap_or_default();
        let number = v.as_f64();
        let bound = self.value.as_ref().and_then(Value::as_f64);
        match op {
            NumberIn => number.is_some_and(|n| values.iter().any(|x| x.as_f64() == Some(n))),
            NumberLessThan => matches!((number, bound), (Some(n), Some(b)) if n < b),
            NumberGreaterThan => matches!((number, bound), (Some(n), Some(b)) if n > b),
            NumberLessThanOrEquals => matches!((number, bound), (Some(n), Some(b)) if n <= b),
            NumberGreaterThanOrEquals => matches!((number, bound), (Some(n), Some(b)) if n >= b),
            NumberInRange => number.is_some_and(|n| {
                values.iter().any(|r| match r.as_array().map(Vec::as_slice) {
                    Some([lo, hi]) => {
                        matches!((lo.as_f64(), hi.as_f64()), (Some(lo), Some(hi)) if lo <= n && n <= hi)
                    }
                    _ => false,
                })
            }),
            BoolEquals => v.as_bool().is_some() && v.as_bool() == self.value.as_ref().and_then(Value::as_bool),
            StringContains | StringBeginsWith | StringEndsWith | StringIn => {
                let Some(text) = as_text(v) else { return false };
                values.iter().filter_map(Value::as_str).any(|x| {
                    let x = x.to_lowercase();
                    match op {
                        StringContains => text.contains(&x),
                        StringBeginsWith => text.starts_with(&x),
                        StringEndsWith => text.ends_with(&x),
                        _ => text == x,
                    }
                })
            }
            _ => false,
        }
    }
}

/// A scalar as lower-case text (strings, numbers, booleans).
fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_lowercase()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The value at a dotted key: `data.a.b` walks into `data`, anything else
/// names a top-level attribute (Event Grid matches attribute names without
/// regard to case).
fn lookup<'a>(event: &'a Value, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut at = event
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(first))
        .map(|(_, v)| v)?;
    for part in parts {
        at = at.as_object()?.get(part)?;
    }
    Some(at)
}

impl Filter {
    /// Checks the filter's limits and value types; what a subscription
    /// write refuses with 400.
    pub fn check(&self) -> Result<(), FilterError> {
        if self.advanced_filters.len() > MAX_ADVANCED_FILTERS {
            return Err(FilterError(format!(
                "a subscription has at most {MAX_ADVANCED_FILTERS} advanced filters; this one has {}",
                self.advanced_filters.len()
            )));
        }
        for (i, f) in self.advanced_filters.iter().enumerate() {
            f.check(i)?;
        }
        for s in [&self.subject_begins_with, &self.subject_ends_with]
            .into_iter()
            .flatten()
        {
            check_string("a subject filter", s)?;
        }
        Ok(())
    }

    /// Whether an event (Event Grid or CloudEvents JSON) passes the filter.
    /// The event's type is `eventType` (Event Grid) or `type`
    /// (CloudEvents).
    pub fn matches(&self, event: &Value) -> bool {
        let event_type = lookup(event, "eventType")
            .or_else(|| lookup(event, "type"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(types) = self.included_event_types.as_ref().filter(|t| !t.is_empty()) {
            if !types.iter().any(|t| t.eq_ignore_ascii_case(event_type)) {
                return false;
            }
        }
        let subject = lookup(event, "subject")
            .and_then(Value::as_str)
            .unwrap_or("");
        let fold = |s: &str| {
            if self.is_subject_case_sensitive {
                s.to_string()
            } else {
                s.to_lowercase()
            }
        };
        let subject = fold(subject);
        if let Some(p) = &self.subject_begins_with {
            if !subject.starts_with(&fold(p)) {
                return false;
            }
        }
        if let Some(s) = &self.subject_ends_with {
            if !subject.ends_with(&fold(s)) {
                return false;
            }
        }
        self.advanced_filters
            .iter()
            .all(|f| f.matches(event, self.enable_advanced_filtering_on_arrays))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({
            "id": "1", "eventType": "Galaxy.Created", "subject": "/players/P1/galaxies/G1",
            "data": {
                "n": 5, "name": "Vega Prime", "ok": true, "none": null,
                "tags": ["Spiral", "bright"], "sizes": [3, 8],
                "deep": { "x": 1.5 }
            }
        })
    }

    fn adv(op: &str, key: &str, extra: Value) -> AdvancedFilter {
        let mut f = json!({ "operatorType": op, "key": key });
        f.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(f).unwrap()
    }

    fn only(f: AdvancedFilter, arrays: bool) -> bool {
        Filter {
            advanced_filters: vec![f],
            enable_advanced_filtering_on_arrays: arrays,
            ..Filter::default()
        }
        .matches(&event())
    }

    #[test]
    fn every_operator_on_scalars() {
        let cases: Vec<(&str, &str, Value, bool)> = vec![
            ("NumberIn", "data.n", json!({"values": [1, 5]}), true),
            ("NumberIn", "data.n", json!({"values": [1, 2]}), false),
            ("NumberNotIn", "data.n", json!({"values": [1, 2]}), true),
            ("NumberNotIn", "data.n", json!({"values": [5]}), false),
            ("NumberLessThan", "data.n", json!({"value": 6}), true),
            ("NumberLessThan", "data.n", json!({"value": 5}), false),
            ("NumberGreaterThan", "data.n", json!({"value": 4}), true),
            ("NumberGreaterThan", "data.n", json!({"value": 5}), false),
            (
                "NumberLessThanOrEquals",
                "data.n",
                json!({"value": 5}),
                true,
            ),
            (
                "NumberLessThanOrEquals",
                "data.n",
                json!({"value": 4.9}),
                false,
            ),
            (
                "NumberGreaterThanOrEquals",
                "data.n",
                json!({"value": 5}),
                true,
            ),
            (
                "NumberGreaterThanOrEquals",
                "data.deep.x",
                json!({"value": 1.6}),
                false,
            ),
            (
                "NumberInRange",
                "data.n",
                json!({"values": [[0, 1], [4, 6]]}),
                true,
            ),
            (
                "NumberInRange",
                "data.n",
                json!({"values": [[6, 9]]}),
                false,
            ),
            (
                "NumberNotInRange",
                "data.n",
                json!({"values": [[6, 9]]}),
                true,
            ),
            (
                "NumberNotInRange",
                "data.n",
                json!({"values": [[5, 5]]}),
                false,
            ),
            ("BoolEquals", "data.ok", json!({"value": true}), true),
            ("BoolEquals", "data.ok", json!({"value": false}), false),
            (
                "StringContains",
                "data.name",
                json!({"values": ["zzz", "PRIME"]}),
                true,
            ),
            (
                "StringContains",
                "data.name",
                json!({"values": ["zzz"]}),
                false,
            ),
            (
                "StringNotContains",
                "data.name",
                json!({"values": ["zzz"]}),
                true,
            ),
            (
                "StringNotContains",
                "data.name",
                json!({"values": ["vega"]}),
                false,
            ),
            (
                "StringBeginsWith",
                "data.name",
                json!({"values": ["VEGA"]}),
                true,
            ),
            (
                "StringBeginsWith",
                "data.name",
                json!({"values": ["Prime"]}),
                false,
            ),
            (
                "StringNotBeginsWith",
                "data.name",
                json!({"values": ["Prime"]}),
                true,
            ),
            (
                "StringNotBeginsWith",
                "data.name",
                json!({"values": ["vega"]}),
                false,
            ),
            (
                "StringEndsWith",
                "data.name",
                json!({"values": ["prime"]}),
                true,
            ),
            (
                "StringEndsWith",
                "data.name",
                json!({"values": ["vega"]}),
                false,
            ),
            (
                "StringNotEndsWith",
                "data.name",
                json!({"values": ["vega"]}),
                true,
            ),
            (
                "StringNotEndsWith",
                "data.name",
                json!({"values": ["PRIME"]}),
                false,
            ),
            (
                "StringIn",
                "data.name",
                json!({"values": ["vega prime"]}),
                true,
            ),
            ("StringIn", "data.name", json!({"values": ["vega"]}), false),
            (
                "StringNotIn",
                "data.name",
                json!({"values": ["vega"]}),
                true,
            ),
            (
                "StringNotIn",
                "data.name",
                json!({"values": ["VEGA PRIME"]}),
                false,
            ),
            (
                "StringIn",
                "subject",
                json!({"values": ["/PLAYERS/p1/galaxies/g1"]}),
                true,
            ),
            ("StringIn", "data.n", json!({"values": ["5"]}), true),
            ("IsNullOrUndefined", "data.none", json!({}), true),
            ("IsNullOrUndefined", "data.missing", json!({}), true),
            ("IsNullOrUndefined", "data.n", json!({}), false),
            ("IsNotNull", "data.n", json!({}), true),
            ("IsNotNull", "data.none", json!({}), false),
            ("IsNotNull", "data.missing", json!({}), false),
        ];
        for (op, key, extra, expected) in cases {
            let f = adv(op, key, extra.clone());
            f.check(0).unwrap_or_else(|e| panic!("{op} {extra}: {e}"));
            assert_eq!(only(f, false), expected, "{op} {key} {extra}");
        }
    }

    #[test]
    fn missing_keys_match_only_the_not_in_operators() {
        for (op, extra, expected) in [
            ("NumberIn", json!({"values": [1]}), false),
            ("NumberNotIn", json!({"values": [1]}), true),
            ("StringNotIn", json!({"values": ["a"]}), true),
            ("StringNotContains", json!({"values": ["a"]}), false),
            ("NumberGreaterThan", json!({"value": 0}), false),
            ("BoolEquals", json!({"value": false}), false),
        ] {
            assert_eq!(
                only(adv(op, "data.missing", extra.clone()), false),
                expected,
                "{op}"
            );
        }
    }

    #[test]
    fn arrays_match_element_by_element_only_when_enabled() {
        let in_tags = adv("StringIn", "data.tags", json!({"values": ["SPIRAL"]}));
        assert!(only(in_tags.clone(), true));
        assert!(
            !only(in_tags, false),
            "an array is the wrong type without the flag"
        );
        let not_in = adv("StringNotIn", "data.tags", json!({"values": ["spiral"]}));
        assert!(
            !only(not_in, true),
            "a negative fails when any element matches"
        );
        let not_in = adv("StringNotIn", "data.tags", json!({"values": ["elliptic"]}));
        assert!(only(not_in, true));
        assert!(only(
            adv("NumberGreaterThan", "data.sizes", json!({"value": 7})),
            true
        ));
        assert!(!only(
            adv("NumberGreaterThan", "data.sizes", json!({"value": 8})),
            true
        ));
        assert!(!only(
            adv(
                "NumberNotInRange",
                "data.sizes",
                json!({"values": [[7, 9]]})
            ),
            true
        ));
    }

    #[test]
    fn wrong_types_match_no_positive_operator() {
        assert!(!only(
            adv("NumberIn", "data.name", json!({"values": [5]})),
            false
        ));
        assert!(only(
            adv("NumberNotIn", "data.name", json!({"values": [5]})),
            false
        ));
        assert!(!only(
            adv("BoolEquals", "data.n", json!({"value": true})),
            false
        ));
        assert!(!only(
            adv("StringContains", "data.deep", json!({"values": ["x"]})),
            false
        ));
    }

    #[test]
    fn filters_and_together_values_or_together_and_types_and_subjects_apply() {
        let f: Filter = serde_json::from_value(json!({
            "includedEventTypes": ["galaxy.created", "Galaxy.Deleted"],
            "subjectBeginsWith": "/players/p1/",
            "subjectEndsWith": "/G1",
            "advancedFilters": [
                { "operatorType": "NumberIn", "key": "data.n", "values": [4, 5] },
                { "operatorType": "StringBeginsWith", "key": "data.name", "values": ["x", "vega"] }
            ]
        }))
        .unwrap();
        f.check().unwrap();
        assert!(f.matches(&event()));
        let mut other = event();
        other["eventType"] = json!("Galaxy.Renamed");
        assert!(!f.matches(&other));
        let mut other = event();
        other["data"]["n"] = json!(6);
        assert!(!f.matches(&other), "every advanced filter must match");
        let sensitive = Filter {
            is_subject_case_sensitive: true,
            ..f.clone()
        };
        assert!(
            !sensitive.matches(&event()),
            "/players/p1/ is not /players/P1/"
        );
        // CloudEvents name the type `type`.
        let ce = json!({"specversion": "1.0", "id": "1", "source": "s", "type": "Galaxy.Created",
                        "subject": "/players/P1/galaxies/G1", "data": {"n": 4, "name": "vega"}});
        assert!(f.matches(&ce));
        assert!(Filter::default().matches(&ce));
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        let too_many = Filter {
            advanced_filters: vec![adv("IsNotNull", "data.n", json!({})); 26],
            ..Filter::default()
        };
        assert!(too_many.check().unwrap_err().0.contains("at most 25"));
        for (op, extra, needle) in [
            ("NumberIn", json!({"values": ["a"]}), "number"),
            ("NumberIn", json!({}), "values"),
            ("NumberLessThan", json!({"values": [1]}), "'value'"),
            ("NumberInRange", json!({"values": [[5, 1]]}), "low <= high"),
            ("BoolEquals", json!({"value": 1}), "true or false"),
            ("StringIn", json!({"values": ["x".repeat(513)]}), "512"),
            (
                "StringIn",
                json!({"values": (0..26).map(|i| i.to_string()).collect::<Vec<_>>()}),
                "25 values",
            ),
        ] {
            let err = adv(op, "data.n", extra).check(0).unwrap_err();
            assert!(err.0.contains(needle), "{op}: {err}");
        }
        assert!(serde_json::from_value::<AdvancedFilter>(
            json!({"operatorType": "NumberSomething", "key": "k"})
        )
        .is_err());
        assert!(serde_json::from_value::<Filter>(json!({"unknownProperty": 1})).is_err());
    }
}
