//! The router's tables in PostgreSQL, created if missing when a process
//! connects (under an advisory lock, so processes starting together do
//! not race). Names compare case-insensitively through unique indexes on
//! `lower(...)`; the partial indexes cover what the delivery loop looks
//! for: pending deliveries by due time, and held ones by subscription.

/// The statements that create the tables in `schema`.
pub(super) fn ddl(schema: &str) -> String {
    format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS topics (
                 name text PRIMARY KEY,
                 input_schema text NOT NULL,
                 key1 text NOT NULL,
                 key2 text NOT NULL
             );
             CREATE UNIQUE INDEX IF NOT EXISTS topics_by_key ON topics (lower(name));
             CREATE TABLE IF NOT EXISTS subscriptions (
                 topic text NOT NULL,
                 name text NOT NULL,
                 definition text NOT NULL,
                 state text NOT NULL,
                 reason text,
                 validation_code text NOT NULL,
                 PRIMARY KEY (topic, name)
             );
             CREATE UNIQUE INDEX IF NOT EXISTS subscriptions_by_key
                 ON subscriptions (lower(topic), lower(name));
             CREATE TABLE IF NOT EXISTS events (
                 seq int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 topic text NOT NULL,
                 event_id text NOT NULL,
                 body text NOT NULL,
                 size int8 NOT NULL,
                 published_ms int8 NOT NULL
             );
             CREATE INDEX IF NOT EXISTS events_by_id ON events (lower(topic), event_id);
             CREATE TABLE IF NOT EXISTS deliveries (
                 seq int8 NOT NULL,
                 topic text NOT NULL,
                 subscription text NOT NULL,
                 state text NOT NULL,
                 attempts int8 NOT NULL,
                 due_ms int8 NOT NULL,
                 last_outcome text,
                 last_attempt_ms int8,
                 reason text,
                 lease_owner int8,
                 lease_until int8,
                 PRIMARY KEY (seq, topic, subscription)
             );
             CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (due_ms) WHERE state = 'pending';
             CREATE INDEX IF NOT EXISTS deliveries_held ON deliveries (topic, subscription) WHERE state = 'held';
             CREATE TABLE IF NOT EXISTS attempts (
                 seq int8 NOT NULL,
                 topic text NOT NULL,
                 subscription text NOT NULL,
                 n int8 NOT NULL,
                 at_ms int8 NOT NULL,
                 outcome text NOT NULL,
                 status int8
             );
             CREATE INDEX IF NOT EXISTS attempts_by_seq ON attempts (seq);
             CREATE TABLE IF NOT EXISTS swept (
                 topic text PRIMARY KEY,
                 published int8 NOT NULL,
                 billed int8 NOT NULL,
                 delivered int8 NOT NULL,
                 retried int8 NOT NULL
             );
             -- Added after the first release: re-drive restarts the time to live.
             ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS live_since_ms int8;"
    )
}
