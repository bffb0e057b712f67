//! Command line and environment of `galaxy-cloud`.

use std::path::PathBuf;

use clap::Parser;

/// The Galaxy Forge cloud backend: the Durable Functions HTTP API, the
/// galaxies table, live event streams and metrics over the durable engine.
#[derive(Clone, Debug, Parser)]
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
    #[arg(long, env = "GALAXY_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Function key, overriding the one stored in the data directory.
    #[arg(long, env = "GALAXY_FUNCTION_KEY", hide_env_values = true)]
    pub function_key: Option<String>,
    /// Master key, overriding the one stored in the data directory.
    #[arg(long, env = "GALAXY_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    /// Also register the sample orchestrations (Sample_WaitForEvent,
    /// Sample_Fail) for trying the management API.
    #[arg(long, env = "GALAXY_SAMPLES")]
    pub samples: bool,
}
