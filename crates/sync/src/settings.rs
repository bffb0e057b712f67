//! The cloud settings and the JSON file that keeps them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the cloud backend listens when started by `make run`.
pub const DEFAULT_CLOUD_URL: &str = "http://127.0.0.1:7071";

/// What the player configures about the cloud.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// Base URL of the cloud backend, e.g. `https://forge.example.com`.
    pub cloud_url: String,
    /// The function key sent as `x-functions-key`; empty for none.
    pub cloud_key: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            cloud_url: DEFAULT_CLOUD_URL.to_string(),
            cloud_key: String::new(),
        }
    }
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
    /// Trims the values, drops a trailing `/` from the URL and checks that
    /// the URL is an absolute http(s) URL and the key fits in a header.
    pub fn normalized(self) -> Result<Self, SettingsError> {
        let cloud_url = self.cloud_url.trim().trim_end_matches('/').to_string();
        let cloud_key = self.cloud_key.trim().to_string();
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
        if cloud_key.chars().any(|c| c.is_control() || !c.is_ascii()) {
            return Err(SettingsError::Invalid(
                "the cloud key may only contain printable ASCII characters".to_string(),
            ));
        }
        Ok(Self {
            cloud_url,
            cloud_key,
        })
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
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
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
            cloud_key: " k1 ".into(),
        }
        .normalized()
        .unwrap();
        assert_eq!(ok.cloud_url, "https://forge.example.com");
        assert_eq!(ok.cloud_key, "k1");
        for bad in [
            "forge.example.com",
            "ftp://x",
            "http://",
            "http:///path",
            "http://a b",
        ] {
            let err = Settings {
                cloud_url: bad.into(),
                cloud_key: String::new(),
            }
            .normalized()
            .unwrap_err();
            assert!(matches!(err, SettingsError::Invalid(_)), "{bad}: {err}");
        }
        let err = Settings {
            cloud_url: DEFAULT_CLOUD_URL.into(),
            cloud_key: "a\nb".into(),
        }
        .normalized()
        .unwrap_err();
        assert!(err.to_string().contains("printable"), "{err}");
    }

    #[test]
    fn missing_file_means_defaults_and_saved_settings_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = SettingsFile::new(dir.path().join("config").join("settings.json"));
        assert_eq!(file.load().unwrap(), Settings::default());
        let saved = file
            .save(Settings {
                cloud_url: "http://10.1.2.3:7071/".into(),
                cloud_key: "secret".into(),
            })
            .unwrap();
        assert_eq!(saved.cloud_url, "http://10.1.2.3:7071");
        assert_eq!(file.load().unwrap(), saved);
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file.path()).unwrap()).unwrap();
        assert_eq!(raw["cloudUrl"], "http://10.1.2.3:7071");
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
                cloud_key: String::new()
            })
            .is_err());
        assert_eq!(std::fs::read_to_string(file.path()).unwrap(), "{not json");
    }
}
