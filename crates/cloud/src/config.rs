//! Command line and environment of `galaxy-cloud`.

use std::path::PathBuf;

use clap::Parser;

/// The Galaxy Forge cloud backend: the Durable Functions HTTP API, the
/// galaxies table, live event streams and metrics over the durable engine.
///
/// Not `Debug` on purpose: it holds the keys and the database URL (with
/// its password), which must never reach a log.
#[derive(Clone, Parser)]
#[command(name = "galaxy-cloud", version)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, env = "GALAXY_LISTEN", default_value = "127.0.0.1:7071")]
    pub listen: String,
    /// Data directory for SQLite (engine.db, galaxies.db) and keys.json.
    #[arg(long, env = "GALAXY_DATA_DIR", default_value = "data/cloud")]
    pub data_dir: PathBuf,
    /// PostgreSQL connection URL (postgres://user@host:port/db) for the
    /// engine store and the galaxies table instead of SQLite; several
    /// processes may share one database. keys.json stays in --data-dir.
    /// TLS as with psql: ?sslmode=require, or
    /// ?sslmode=verify-full&sslrootcert=/path/ca.pem (or =system).
    #[arg(long, env = "GALAXY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Function key, overriding the one stored in the data directory.
    #[arg(long, env = "GALAXY_FUNCTION_KEY", hide_env_values = true)]
    pub function_key: Option<String>,
    /// Master key, overriding the one stored in the data directory.
    #[arg(long, env = "GALAXY_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// How long deletions are remembered for devices that were away: a
    /// device that stayed away longer reloads its galaxies from the cloud.
    /// A whole number followed by s, m, h or d.
    #[arg(long, env = "GALAXY_TOMBSTONE_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub tombstone_retention: std::time::Duration,
    /// Event delivery retry delays are multiplied by this (the schedule is
    /// 10 s, 30 s, 1 min, ... 12 h; 0.001 runs it in milliseconds, for
    /// tests and demos).
    #[arg(long, env = "GALAXY_EVENT_RETRY_SCALE", default_value_t = 1.0)]
    pub event_retry_scale: f64,
    /// How long a webhook receiver has to answer a delivery (Event Grid:
    /// 30 s). On PostgreSQL a process holds a claimed delivery for twice
    /// this, so another process takes over a dead one's deliveries after
    /// that long.
    #[arg(long, env = "GALAXY_EVENT_DELIVERY_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub event_delivery_timeout: std::time::Duration,
    /// How long a delivered event (and its attempts) stays listed after it
    /// was published; events waiting for a retry and dead letters stay
    /// until they are settled. The metrics keep counting swept events.
    #[arg(long, env = "GALAXY_EVENT_RETENTION", default_value = "24h", value_parser = parse_retention)]
    pub event_retention: std::time::Duration,
    /// How long a client may take to send a request's headers; an idle
    /// keep-alive connection is closed after this too.
    #[arg(long, env = "GALAXY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub header_read_timeout: std::time::Duration,
    /// How long a client may take to send a request's body once its
    /// headers are in; a slower one gets 408 and its connection is closed.
    #[arg(long, env = "GALAXY_BODY_READ_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub body_read_timeout: std::time::Duration,
    /// Connections open at once; at the limit new ones wait to be accepted.
    #[arg(long, env = "GALAXY_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Live streams open at once per credential (the function key, the
    /// master key, each device); more are refused with 429.
    #[arg(long, env = "GALAXY_MAX_STREAMS_PER_KEY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_streams_per_key: u32,
    /// Also register the sample orchestrations (Sample_WaitForEvent,
    /// Sample_Fail) for trying the management API.
    #[arg(long, env = "GALAXY_SAMPLES")]
    pub samples: bool,
}

/// A delivery timeout: as [`parse_retention`], more than zero, at most 10 minutes.
pub fn parse_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = parse_retention(text)?;
    if d.is_zero() || d > std::time::Duration::from_secs(600) {
        return Err(format!("'{text}' must be more than 0s and at most 10m"));
    }
    Ok(d)
}

/// The longest retention accepted: 36,500 days.
const MAX_RETENTION_SECS: u64 = 36_500 * 86_400;

/// `30d`, `12h`, `90m`, `45s` (and `0s`: forget deletions at once).
pub fn parse_retention(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    // The last character is the unit (on a character boundary: a
    // multi-byte one must not split a character).
    let split = text.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 30d, 12h, 90m or 45s"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{text}' needs a unit: s, m, h or d")),
    };
    // At most a hundred years: cut-offs are computed in i64 milliseconds.
    n.checked_mul(seconds)
        .filter(|s| *s <= MAX_RETENTION_SECS)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long (at most 36500d)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_parse_with_units_only() {
        assert_eq!(parse_retention("30d").unwrap().as_secs(), 30 * 86_400);
        assert_eq!(parse_retention("0s").unwrap().as_secs(), 0);
        assert_eq!(parse_retention("90m").unwrap().as_secs(), 5400);
        for bad in [
            "",
            "30",
            "d",
            "-1d",
            "1w",
            "99999999999999999999d",
            "36501d",
            "30ｄ",
            "ｄ",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad}");
        }
    }
}
