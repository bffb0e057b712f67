//! Topic keys and the two ways a publisher proves it holds one
//! (`../shared/reference/event-grid.md`, "What real publisher clients do"):
//!
//! - `aeg-sas-key: <key>`: the key itself, compared in constant time.
//! - `aeg-sas-token: r=<resource>&e=<expiry>&s=<signature>` (each field
//!   URL-encoded): `s` is the base64 HMAC-SHA256, keyed with the
//!   base64-decoded topic key, of the string `r=<resource>&e=<expiry>`
//!   exactly as it appears in the token. The resource must be the topic's
//!   endpoint (case and a trailing slash or query aside) and the expiry,
//!   RFC 3339 or `2030-01-01 00:00:00+00:00`, in the future.
//!
//! Keys are 32 random bytes in base64, as Azure's are.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a credential was refused (all answer 401).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// Neither header.
    #[error("send the topic key as aeg-sas-key, or a SAS token as aeg-sas-token")]
    Missing,
    /// The key is not one of the topic's.
    #[error("the aeg-sas-key is not a key of this topic")]
    WrongKey,
    /// The token is not `r=..&e=..&s=..`.
    #[error("the aeg-sas-token is malformed: {0}")]
    Malformed(String),
    /// The token names another resource.
    #[error("the aeg-sas-token is for another resource than this topic's endpoint")]
    WrongResource,
    /// The token expired.
    #[error("the aeg-sas-token expired at {0}")]
    Expired(String),
    /// The signature matches no key of the topic.
    #[error("the aeg-sas-token's signature matches no key of this topic")]
    BadSignature,
}

/// A new topic key: 32 random bytes, base64.
pub fn new_key() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Checks an `aeg-sas-key` against the topic's keys.
pub fn check_key(presented: &str, keys: &[&str]) -> Result<(), SasError> {
    // Every key is compared, so timing does not tell which one was close.
    let hits = keys.iter().filter(|k| same(presented.trim(), k)).count();
    if hits > 0 {
        Ok(())
    } else {
        Err(SasError::WrongKey)
    }
}

fn normalize_resource(r: &str) -> String {
    r.split('?')
        .next()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_ascii_lowercase()
}

/// An expiry as the SDKs write it: RFC 3339, `2030-01-01 00:00:00+00:00`
/// (Python; without an offset when its caller passed a naive UTC time),
/// or `12/2/2026 3:04:26 AM` in UTC (JavaScript and .NET). A form encoder
/// writes spaces as `+`: tried as written first (`+00:00` may be an
/// offset), then with `+` as spaces.
fn parse_expiry(e: &str) -> Option<DateTime<Utc>> {
    let one = |e: &str| {
        DateTime::parse_from_rfc3339(e)
            .or_else(|_| DateTime::parse_from_str(e, "%Y-%m-%d %H:%M:%S%.f%:z"))
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                ["%m/%d/%Y %I:%M:%S %p", "%Y-%m-%d %H:%M:%S%.f"]
                    .iter()
                    .find_map(|f| chrono::NaiveDateTime::parse_from_str(e, f).ok())
                    .map(|t| t.and_utc())
            })
    };
    if let Some(t) = one(e) {
        return Some(t);
    }
    // Spaces as '+', keeping a trailing `+hh:mm` offset.
    let offset = e.rfind('+').filter(|&i| {
        let tail = &e.as_bytes()[i + 1..];
        tail.len() == 5
            && tail[2] == b':'
            && tail.iter().filter(|b| b.is_ascii_digit()).count() == 4
    });
    let (head, tail) = e.split_at(offset.unwrap_or(e.len()));
    head.contains('+')
        .then(|| one(&format!("{}{tail}", head.replace('+', " "))))
        .flatten()
}

fn signature(key_b64: &str, signed: &str) -> Option<String> {
    let key = STANDARD.decode(key_b64).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(signed.as_bytes());
    Some(STANDARD.encode(mac.finalize().into_bytes()))
}

/// Makes a token for `resource` valid until `expiry` (what a publisher
/// SDK does; tests and tools use it).
pub fn make_token(resource: &str, expiry: DateTime<Utc>, key_b64: &str) -> Option<String> {
    let r = utf8_percent_encode(resource, NON_ALPHANUMERIC).to_string();
    let e = utf8_percent_encode(&expiry.to_rfc3339(), NON_ALPHANUMERIC).to_string();
    let signed = format!("r={r}&e={e}");
    let s = signature(key_b64, &signed)?;
    Some(format!(
        "{signed}&s={}",
        utf8_percent_encode(&s, NON_ALPHANUMERIC)
    ))
}

/// Checks an `aeg-sas-token` for the topic at `endpoint` against its keys,
/// at time `now`.
pub fn check_token(
    token: &str,
    endpoint: &str,
    keys: &[&str],
    now: DateTime<Utc>,
) -> Result<(), SasError> {
    let token = token.trim();
    let (signed, s) = token
        .rsplit_once("&s=")
        .ok_or_else(|| SasError::Malformed("no s= field".into()))?;
    let (r, e) = signed
        .strip_prefix("r=")
        .and_then(|rest| rest.split_once("&e="))
        .ok_or_else(|| SasError::Malformed("expected r=...&e=...&s=...".into()))?;
    let decode = |v: &str| percent_decode_str(v).decode_utf8().map(|c| c.into_owned());
    let resource = decode(r).map_err(|_| SasError::Malformed("r is not UTF-8".into()))?;
    let expiry = decode(e).map_err(|_| SasError::Malformed("e is not UTF-8".into()))?;
    let given = decode(s).map_err(|_| SasError::Malformed("s is not UTF-8".into()))?;
    if normalize_resource(&resource) != normalize_resource(endpoint) {
        return Err(SasError::WrongResource);
    }
    let expires = parse_expiry(&expiry)
        .ok_or_else(|| SasError::Malformed(format!("e='{expiry}' is not a time")))?;
    if expires <= now {
        return Err(SasError::Expired(expiry));
    }
    let hits = keys
        .iter()
        .filter_map(|k| signature(k, signed))
        .filter(|expected| same(expected, &given))
        .count();
    if hits > 0 {
        Ok(())
    } else {
        Err(SasError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "http://127.0.0.1:7071/api/events/topics/galaxies";

    #[test]
    fn keys_are_checked_whole() {
        let (k1, k2) = (new_key(), new_key());
        assert_eq!(STANDARD.decode(&k1).unwrap().len(), 32);
        assert!(check_key(&k2, &[&k1, &k2]).is_ok());
        assert_eq!(check_key(&k1[..10], &[&k1, &k2]), Err(SasError::WrongKey));
    }

    #[test]
    fn tokens_sign_resource_and_expiry_and_expire() {
        let (k1, k2) = (new_key(), new_key());
        let now = Utc::now();
        let later = now + chrono::Duration::hours(1);
        let token = make_token(ENDPOINT, later, &k2).unwrap();
        assert!(check_token(&token, ENDPOINT, &[&k1, &k2], now).is_ok());
        // Case, a trailing slash and the SDK's query do not matter.
        assert!(check_token(
            &token,
            &format!("{}/?api-version=2018-01-01", ENDPOINT.to_uppercase()),
            &[&k1, &k2],
            now
        )
        .is_ok());
        assert_eq!(
            check_token(&token, ENDPOINT, &[&k1], now),
            Err(SasError::BadSignature)
        );
        assert_eq!(
            check_token(
                &token,
                "http://127.0.0.1:7071/api/events/topics/other",
                &[&k2],
                now
            ),
            Err(SasError::WrongResource)
        );
        assert!(matches!(
            check_token(&token, ENDPOINT, &[&k2], later),
            Err(SasError::Expired(_))
        ));
        let tampered = token.replace("&e=", "&e=2");
        assert!(check_token(&tampered, ENDPOINT, &[&k2], now).is_err());
        assert!(matches!(
            check_token("nonsense", ENDPOINT, &[&k2], now),
            Err(SasError::Malformed(_))
        ));
    }

    #[test]
    fn the_javascript_and_dotnet_expiry_spelling_is_utc() {
        let t = parse_expiry("12/2/2026 3:04:26 AM").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-02T03:04:26+00:00");
        assert_eq!(
            parse_expiry("1/15/2030 11:00:00 PM").unwrap().to_rfc3339(),
            "2030-01-15T23:00:00+00:00"
        );
        assert!(parse_expiry("tomorrow").is_none());
        // Spaces written as '+' by a form encoder.
        assert_eq!(
            parse_expiry("12/2/2026+3:04:26+AM").unwrap().to_rfc3339(),
            "2026-12-02T03:04:26+00:00"
        );
    }

    #[test]
    fn python_expiries_with_or_without_an_offset_are_utc() {
        for (e, want) in [
            ("2030-01-01 00:00:00+00:00", "2030-01-01T00:00:00+00:00"),
            ("2030-01-01 01:00:00+01:00", "2030-01-01T00:00:00+00:00"),
            (
                "2030-01-01 00:00:00.123456+00:00",
                "2030-01-01T00:00:00.123456+00:00",
            ),
            (
                "2030-01-01 00:00:00.123456",
                "2030-01-01T00:00:00.123456+00:00",
            ),
            ("2030-01-01 00:00:00", "2030-01-01T00:00:00+00:00"),
            ("2030-01-01+00:00:00+00:00", "2030-01-01T00:00:00+00:00"),
        ] {
            assert_eq!(
                parse_expiry(e).map(|t| t.to_rfc3339()).as_deref(),
                Some(want),
                "{e}"
            );
        }
    }

    #[test]
    fn the_space_separated_expiry_of_some_sdks_is_accepted() {
        let k = new_key();
        let r = utf8_percent_encode(ENDPOINT, NON_ALPHANUMERIC).to_string();
        let e = utf8_percent_encode("2099-01-01 00:00:00+00:00", NON_ALPHANUMERIC).to_string();
        let signed = format!("r={r}&e={e}");
        let s = signature(&k, &signed).unwrap();
        let token = format!("{signed}&s={}", utf8_percent_encode(&s, NON_ALPHANUMERIC));
        assert!(check_token(&token, ENDPOINT, &[&k], Utc::now()).is_ok());
    }
}
