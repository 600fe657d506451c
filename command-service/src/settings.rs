//! Typed settings of the command service; each field is set by the environment
//! variable of the same name in upper case (`DATABASE_URL`, `HTTP_PORT`, ...).

use serde::Deserialize;
use service_kit::auth::AuthSettings;
use service_kit::http::ConnectionLimits;
use service_kit::settings::SecretUrl;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Postgres event store; the database is created if missing.
    pub database_url: SecretUrl,
    pub database_max_connections: u32,
    pub amqp_url: SecretUrl,
    /// Topic exchange the events are published to.
    pub amqp_exchange: String,
    pub http_host: String,
    /// 0 picks a free port.
    pub http_port: u16,
    /// `json` for JSON log lines, anything else for human-readable ones.
    pub log_format: String,
    /// Events published per broker round (confirms awaited per window).
    pub relay_batch_size: i64,
    /// Milliseconds the relay waits for the broker to take a window (publish) or to
    /// confirm it before it counts the broker as down and reconnects: a broker that
    /// stalls (a resource alarm, a half-open socket) is found out, not waited on.
    pub relay_broker_timeout_ms: u64,
    /// Whether this replica takes part in driving transfers (the process leads from one
    /// replica at a time). `false` keeps a replica out of it; at least one must run it.
    pub transfer_process_enabled: bool,
    /// How long responses to idempotent requests are kept.
    pub idempotency_retention_hours: u64,
    /// Seconds a command's caller waits for its outcome (at most 29, under the 30 s
    /// limit of every request). A command not yet written by then is dropped, never
    /// written later; one being written is answered 503 `outcome_unknown`.
    pub command_timeout_secs: u64,
    /// Bearer-token keys, issuer and audience (`AUTH_*`).
    #[serde(flatten)]
    pub auth: AuthSettings,
    /// Header timeout, connection and in-flight bounds (`HTTP_*`).
    #[serde(flatten)]
    pub connections: ConnectionLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: SecretUrl::new("postgres://postgres@127.0.0.1:5432/bank_events"),
            database_max_connections: 16,
            amqp_url: SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_exchange: "bank.events".to_owned(),
            http_host: "0.0.0.0".to_owned(),
            http_port: 8081,
            log_format: "pretty".to_owned(),
            relay_batch_size: 500,
            relay_broker_timeout_ms: 10_000,
            transfer_process_enabled: true,
            idempotency_retention_hours: 48,
            command_timeout_secs: 25,
            auth: AuthSettings::default(),
            connections: ConnectionLimits::default(),
        }
    }
}

impl Settings {
    pub fn json_logs(&self) -> bool {
        self.log_format.eq_ignore_ascii_case("json")
    }

    /// How long a command's caller waits ([`Settings::command_timeout_secs`], 1..=29 s).
    pub fn command_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.command_timeout_secs.clamp(1, 29))
    }
}
