//! Access keys: the function key (every protected route), the master key
//! (also every protected route, and the only key that may purge by filter)
//! and the system key (the instance management routes only).
//!
//! The system key is what Azure calls the `durabletask_extension` key: the
//! check-status URIs carry it, and they are handed to whoever started an
//! instance (often a browser), so it opens only the routes under
//! `/runtime/webhooks/durabletask` that those URIs lead to, never the
//! galaxies, metrics or event topics (whose keys would let the holder
//! publish as the system). It is derived from the master key (HMAC-SHA256),
//! so it needs no storage, every process given the same keys agrees on it,
//! and replacing the master key replaces it.
//!
//! Keys are generated at first start and kept in `<data dir>/keys.json`
//! (mode 0600, written to a temporary file, synced and renamed, so a crash
//! never leaves half a file; its mode is checked at every start and
//! tightened with a warning if it was opened to others) so clients keep
//! working across restarts; keys given on the command line or in the
//! environment override the stored ones for that run and are never
//! printed. Presented keys are compared in constant time so response timing
//! does not reveal how much of a guess was right.

use std::io::Write;
use std::path::{Path, PathBuf};

use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::AppError;
use crate::state::AppState;

/// Name of the header that carries a key (the query alternative is `code`).
pub const KEY_HEADER: &str = "x-functions-key";
/// Length of generated keys: 43 alphanumeric characters, about 256 bits.
const GENERATED_LEN: usize = 43;

/// Why the keys could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A given key is empty or holds characters that cannot travel in a
    /// header or query string unchanged.
    #[error("invalid {which} key: use 16 to 256 visible ASCII characters without spaces")]
    Invalid {
        /// `function` or `master`.
        which: &'static str,
    },
    /// The two keys are the same, which would let every function-key holder
    /// purge by filter.
    #[error("the function key and the master key must differ")]
    Same,
    /// Reading or writing `keys.json` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// `keys.json` exists but is not readable as keys.
    #[error("{path} is damaged ({reason}); delete it to generate new keys")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What a presented key grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The function key: every protected route except purge by filter.
    Function,
    /// The master key: every protected route.
    Master,
    /// The system key: the instance management routes under
    /// [`crate::payload::MANAGEMENT`] only (purge by filter excepted).
    System,
}

/// The server's two keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Keys {
    function_key: String,
    master_key: String,
}

impl std::fmt::Debug for Keys {
    // Keys must not end up in logs through a stray `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { .. }")
    }
}

fn valid(key: &str) -> bool {
    (16..=256).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

fn generate() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(GENERATED_LEN)
        .map(char::from)
        .collect()
}

/// Where `keys.json` goes.
pub fn keys_path(data_dir: &Path) -> PathBuf {
    data_dir.join("keys.json")
}

impl Keys {
    /// Keys from given values, validated.
    pub fn new(
        function_key: impl Into<String>,
        master_key: impl Into<String>,
    ) -> Result<Self, KeyError> {
        let keys = Self {
            function_key: function_key.into(),
            master_key: master_key.into(),
        };
        keys.validate()?;
        Ok(keys)
    }

    /// Fresh random keys.
    pub fn generate() -> Self {
        Self {
            function_key: generate(),
            master_key: generate(),
        }
    }

    fn validate(&self) -> Result<(), KeyError> {
        if !valid(&self.function_key) {
            return Err(KeyError::Invalid { which: "function" });
        }
        if !valid(&self.master_key) {
            return Err(KeyError::Invalid { which: "master" });
        }
        if self.function_key == self.master_key {
            return Err(KeyError::Same);
        }
        Ok(())
    }

    /// Loads `<data_dir>/keys.json`, creating it with fresh keys if absent,
    /// then applies the given overrides. Returns the keys and whether the
    /// file was created now (the caller prints new keys once).
    pub fn load_or_create(
        data_dir: &Path,
        function_key: Option<String>,
        master_key: Option<String>,
    ) -> Result<(Self, bool), KeyError> {
        let path = keys_path(data_dir);
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        let (mut keys, created) = match std::fs::read(&path) {
            Ok(bytes) => {
                tighten(&path).map_err(io)?;
                let keys: Keys = serde_json::from_slice(&bytes).map_err(|e| KeyError::Damaged {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                keys.validate().map_err(|e| KeyError::Damaged {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                (keys, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_private_dir(data_dir).map_err(io)?;
                let keys = Keys::generate();
                write_private(
                    &path,
                    &serde_json::to_vec_pretty(&keys).expect("keys serialize"),
                )
                .map_err(io)?;
                (keys, true)
            }
            Err(e) => return Err(io(e)),
        };
        if let Some(k) = function_key {
            keys.function_key = k;
        }
        if let Some(k) = master_key {
            keys.master_key = k;
        }
        keys.validate()?;
        Ok((keys, created))
    }

    /// The function key.
    pub fn function_key(&self) -> &str {
        &self.function_key
    }

    /// The system key, which the check-status URIs and `Location` headers
    /// carry: 64 hex digits, an HMAC-SHA256 of a fixed label under the
    /// master key.
    pub fn system_key(&self) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.master_key.as_bytes())
            .expect("any key size");
        mac.update(b"galaxy-forge durabletask_extension system key v1");
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The master key.
    pub fn master_key(&self) -> &str {
        &self.master_key
    }

    /// What signs continuation tokens (a key derived from the master key).
    pub fn token_signer(&self) -> crate::extract::TokenSigner {
        crate::extract::TokenSigner::new(&self.master_key)
    }

    /// What `presented` grants, if anything. The three keys are always
    /// compared, each in constant time, and as SHA-256 digests (slices of
    /// different lengths compare at once), so timing tells nothing about
    /// any, not even its length.
    pub fn check(&self, presented: &str) -> Option<Access> {
        use sha2::{Digest, Sha256};
        let p = Sha256::digest(presented.as_bytes());
        let is = |key: &str| -> bool { p.ct_eq(&Sha256::digest(key.as_bytes())).into() };
        let master = is(&self.master_key);
        let function = is(&self.function_key);
        let system = is(&self.system_key());
        if master {
            Some(Access::Master)
        } else if function {
            Some(Access::Function)
        } else if system {
            Some(Access::System)
        } else {
            None
        }
    }
}

/// Writes `bytes` to `path` readable by its owner only, atomically and
/// durably: a temporary file beside it (0600), synced, renamed over
/// `path`, then the directory synced.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Makes `path` readable by its owner only if it was not, saying so (the
/// keys may have been read by others meanwhile: rotate them).
fn tighten(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            tracing::warn!(
                "{} was readable by others (mode {mode:o}); made it 0600. \
                 Anyone who read it holds the keys: replace them if that matters",
                path.display()
            );
            eprintln!(
                "galaxy-cloud: {} was readable by others (mode {mode:o}); made it 0600",
                path.display()
            );
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents) readable by its owner only. An
/// existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// The key a request presents: the `x-functions-key` header, else the
/// `code` query parameter.
fn presented_key(request: &Request) -> Option<String> {
    if let Some(v) = request.headers().get(KEY_HEADER) {
        return v.to_str().ok().map(str::to_string);
    }
    let Query(q) =
        Query::<std::collections::HashMap<String, String>>::try_from_uri(request.uri()).ok()?;
    q.get("code").cloned()
}

/// Whether the system key opens `path`: the management routes, which the
/// check-status URIs lead to.
fn system_route(path: &str) -> bool {
    path.strip_prefix(crate::payload::MANAGEMENT)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Middleware for every protected route: 401 without a valid key (or, on
/// the few routes a player may use, a device token: see
/// [`crate::device_auth`]); otherwise the granted [`Access`] (or the
/// device) goes into the request extensions for the handlers.
pub async fn require_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = presented_key(&request).and_then(|k| state.keys.check(&k));
    match access {
        Some(Access::System) if !system_route(request.uri().path()) => AppError::unauthorized(
            "the key in check-status URIs opens only the instance routes under \
             /runtime/webhooks/durabletask: use the function key here",
        )
        .into_response(),
        Some(access) => {
            request.extensions_mut().insert(access);
            next.run(request).await
        }
        None => match crate::device_auth::token_for_key_route(&request) {
            Some((token, open)) => match state.players.authenticate(&token).await {
                Ok(device) if open => {
                    request.extensions_mut().insert(device);
                    next.run(request).await
                }
                Ok(_) => crate::device_auth::not_a_device_route().into_response(),
                Err(e) => AppError::from(e).into_response(),
            },
            None => AppError::unauthorized(
                "a valid key is required: pass the function key as ?code= or the x-functions-key header",
            )
            .into_response(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_tells_the_keys_apart_and_refuses_near_misses() {
        let keys = Keys::new("function-key-0123456789", "master-key-0123456789").unwrap();
        assert_eq!(
            keys.check("function-key-0123456789"),
            Some(Access::Function)
        );
        assert_eq!(keys.check("master-key-0123456789"), Some(Access::Master));
        assert_eq!(keys.check("function-key-012345678"), None);
        assert_eq!(keys.check("function-key-0123456789x"), None);
        assert_eq!(keys.check(""), None);
        let system = keys.system_key();
        assert_eq!(keys.check(&system), Some(Access::System));
        assert_eq!(system.len(), 64);
        assert!(valid(&system));
        assert_eq!(keys.check(&system[..63]), None);
    }

    #[test]
    fn the_system_key_follows_the_master_key_only() {
        let a = Keys::new("function-key-0123456789", "master-key-0123456789").unwrap();
        let b = Keys::new("function-key-9876543210", "master-key-0123456789").unwrap();
        let c = Keys::new("function-key-0123456789", "master-key-0123456780").unwrap();
        assert_eq!(a.system_key(), b.system_key());
        assert_ne!(a.system_key(), c.system_key());
        assert_eq!(c.check(&a.system_key()), None);
    }

    #[test]
    fn the_system_key_opens_the_management_routes_only() {
        assert!(system_route("/runtime/webhooks/durabletask/instances/i1"));
        assert!(system_route("/runtime/webhooks/durabletask/instances/"));
        assert!(system_route("/runtime/webhooks/durabletask/stream"));
        assert!(!system_route("/runtime/webhooks/durabletaskx/instances"));
        assert!(!system_route("/runtime/webhooks/durabletask"));
        assert!(!system_route("/api/galaxies"));
        assert!(!system_route("/api/events/topics/t/listKeys"));
        assert!(!system_route("/metrics"));
        assert!(!system_route("/api/orchestrators/Galaxy_Create"));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(
            Keys::new("short", "master-key-0123456789"),
            Err(KeyError::Invalid { which: "function" })
        ));
        assert!(matches!(
            Keys::new("function key with spaces", "master-key-0123456789"),
            Err(KeyError::Invalid { .. })
        ));
        assert!(matches!(
            Keys::new("same-key-0123456789", "same-key-0123456789"),
            Err(KeyError::Same)
        ));
    }

    #[test]
    fn keys_are_created_once_private_and_overridable() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = Keys::load_or_create(dir.path(), None, None).unwrap();
        assert!(created);
        assert!(first
            .function_key()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(keys_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, created) = Keys::load_or_create(dir.path(), None, None).unwrap();
        assert!(!created);
        assert_eq!(again, first);
        let (given, _) =
            Keys::load_or_create(dir.path(), Some("given-function-key-0001".into()), None).unwrap();
        assert_eq!(given.function_key(), "given-function-key-0001");
        assert_eq!(given.master_key(), first.master_key());
        // The override is for this run only.
        let (stored, _) = Keys::load_or_create(dir.path(), None, None).unwrap();
        assert_eq!(stored, first);
    }

    #[test]
    fn a_damaged_keys_file_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(keys_path(dir.path()), b"not json").unwrap();
        let err = Keys::load_or_create(dir.path(), None, None).unwrap_err();
        assert!(err.to_string().contains("delete it"), "{err}");
    }
}
