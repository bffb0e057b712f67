//! The cloud settings and the JSON file that keeps them: the cloud's URL
//! and, once the device has registered or joined a player, its
//! [`Account`] (player id, device id, device token).
//!
//! Older files may hold a `cloudKey` (the server-wide function key the app
//! once used). It is read so the app knows to migrate (register, then
//! save, which drops it) and is never written again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the cloud backend listens when started by `make run`.
pub const DEFAULT_CLOUD_URL: &str = "http://127.0.0.1:7071";

/// What the player configures about the cloud.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// Base URL of the cloud backend, e.g. `https://forge.example.com`.
    pub cloud_url: String,
    /// This device's cloud account, once registered or linked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
    /// A function key left by an older version: read, never written.
    #[serde(skip_serializing)]
    pub legacy_cloud_key: Option<String>,
}

impl std::fmt::Debug for Settings {
    // Neither the token nor a legacy key may reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("cloud_url", &self.cloud_url)
            .field("account", &self.account)
            .field(
                "legacy_cloud_key",
                &self.legacy_cloud_key.as_ref().map(|_| "…"),
            )
            .finish()
    }
}

/// A device's membership of a player: what the cloud gave at register or
/// join.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// The player.
    pub player_id: String,
    /// This device.
    pub device_id: String,
    /// The device token (`Authorization: Bearer`).
    pub token: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("player_id", &self.player_id)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl From<crate::protocol::DeviceCredentials> for Account {
    fn from(c: crate::protocol::DeviceCredentials) -> Self {
        Self {
            player_id: c.player_id,
            device_id: c.device_id,
            token: c.token,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cloud_url: DEFAULT_CLOUD_URL.to_string(),
            account: None,
            legacy_cloud_key: None,
        }
    }
}

/// The legacy field's wire name, accepted on read.
#[derive(Deserialize)]
struct Legacy {
    #[serde(rename = "cloudKey", default)]
    cloud_key: Option<String>,
}

/// Why settings could not be used, read or written. The messages are
/// meant for the player.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value the player typed is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The settings file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// `read` or `write`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The settings file is not valid JSON settings.
    #[error("{path} is not a valid settings file ({reason}); defaults are used until you save")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
}

impl Settings {
    /// The same settings for another cloud URL: an account belongs to one
    /// cloud, so it is dropped when the URL changes.
    pub fn with_cloud_url(mut self, url: &str) -> Self {
        if self.cloud_url.trim_end_matches('/') != url.trim().trim_end_matches('/') {
            self.account = None;
        }
        self.cloud_url = url.to_string();
        self
    }

    /// Trims the URL, drops a trailing `/` and checks that it is an
    /// absolute http(s) URL.
    pub fn normalized(self) -> Result<Self, SettingsError> {
        let cloud_url = self.cloud_url.trim().trim_end_matches('/').to_string();
        let rest = cloud_url
            .strip_prefix("http://")
            .or_else(|| cloud_url.strip_prefix("https://"))
            .ok_or_else(|| {
                SettingsError::Invalid(format!(
                    "the cloud URL must start with http:// or https:// (got '{cloud_url}')"
                ))
            })?;
        if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
            return Err(SettingsError::Invalid(format!(
                "the cloud URL '{cloud_url}' has no host"
            )));
        }
        Ok(Self { cloud_url, ..self })
    }
}

/// The settings file (`settings.json` in the app's config directory).
#[derive(Clone, Debug)]
pub struct SettingsFile {
    path: PathBuf,
}

impl SettingsFile {
    /// The settings file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the settings; a missing file gives the defaults.
    pub fn load(&self) -> Result<Settings, SettingsError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            Err(source) => {
                return Err(SettingsError::Io {
                    action: "read",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        serde_json::from_str::<Settings>(&text)
            .map(|mut s| {
                s.legacy_cloud_key = serde_json::from_str::<Legacy>(&text)
                    .ok()
                    .and_then(|l| l.cloud_key)
                    .filter(|k| !k.is_empty());
                s
            })
            .map_err(|e| e.to_string())
            .and_then(|s| s.normalized().map_err(|e| e.to_string()))
            .map_err(|reason| SettingsError::Corrupt {
                path: self.path.clone(),
                reason,
            })
    }

    /// Validates and writes the settings (to a temporary file renamed over
    /// the old one, so a crash leaves either the old or the new file).
    /// Returns what was saved.
    pub fn save(&self, settings: Settings) -> Result<Settings, SettingsError> {
        let settings = settings.normalized()?;
        let io = |source| SettingsError::Io {
            action: "write",
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&settings).expect("settings serialize");
        // Flushed before the rename and the rename flushed after it: a
        // power cut leaves the old settings or the new, never an empty
        // file (they may hold the device's only copy of its token).
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp).map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            // Best effort: not every file system can open a directory.
            if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_trimmed_and_checked() {
        let ok = Settings {
            cloud_url: "  https://forge.example.com/ ".into(),
            ..Settings::default()
        }
        .normalized()
        .unwrap();
        assert_eq!(ok.cloud_url, "https://forge.example.com");
        for bad in [
            "forge.example.com",
            "ftp://x",
            "http://",
            "http:///path",
            "http://a b",
        ] {
            let err = Settings {
                cloud_url: bad.into(),
                ..Settings::default()
            }
            .normalized()
            .unwrap_err();
            assert!(matches!(err, SettingsError::Invalid(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn missing_file_means_defaults_and_saved_settings_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = SettingsFile::new(dir.path().join("config").join("settings.json"));
        assert_eq!(file.load().unwrap(), Settings::default());
        let saved = file
            .save(Settings {
                cloud_url: "http://10.1.2.3:7071/".into(),
                account: Some(Account {
                    player_id: "p".into(),
                    device_id: "d".into(),
                    token: "secret".into(),
                }),
                legacy_cloud_key: None,
            })
            .unwrap();
        assert_eq!(saved.cloud_url, "http://10.1.2.3:7071");
        assert_eq!(file.load().unwrap(), saved);
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file.path()).unwrap()).unwrap();
        assert_eq!(raw["cloudUrl"], "http://10.1.2.3:7071");
        assert_eq!(raw["account"]["token"], "secret");
        assert!(!format!("{saved:?}").contains("secret"));
    }

    #[test]
    fn a_legacy_function_key_is_read_and_never_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = SettingsFile::new(dir.path().join("settings.json"));
        std::fs::write(
            file.path(),
            r#"{"cloudUrl":"http://127.0.0.1:7071","cloudKey":"master-secret"}"#,
        )
        .unwrap();
        let loaded = file.load().unwrap();
        assert_eq!(loaded.legacy_cloud_key.as_deref(), Some("master-secret"));
        assert!(!format!("{loaded:?}").contains("master-secret"));
        file.save(loaded).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(!text.contains("master-secret"), "{text}");
        assert_eq!(file.load().unwrap().legacy_cloud_key, None);
    }

    #[test]
    fn another_cloud_url_drops_the_account() {
        let s = Settings {
            account: Some(Account {
                player_id: "p".into(),
                device_id: "d".into(),
                token: "t".into(),
            }),
            ..Settings::default()
        };
        assert!(s
            .clone()
            .with_cloud_url(&format!("{DEFAULT_CLOUD_URL}/"))
            .account
            .is_some());
        assert!(s.with_cloud_url("http://elsewhere:1").account.is_none());
    }

    #[test]
    fn a_damaged_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = SettingsFile::new(dir.path().join("settings.json"));
        std::fs::write(file.path(), "{not json").unwrap();
        let err = file.load().unwrap_err();
        assert!(matches!(err, SettingsError::Corrupt { .. }));
        assert!(err.to_string().contains("settings.json"), "{err}");
        // An invalid save changes nothing on disk.
        assert!(file
            .save(Settings {
                cloud_url: "nope".into(),
                ..Settings::default()
            })
            .is_err());
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "{not json");
    }
}
