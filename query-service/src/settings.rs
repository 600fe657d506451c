//! Typed settings of the query service; each field is set by the environment
//! variable of the same name in upper case (`DATABASE_URL`, `HTTP_PORT`, ...).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use service_kit::auth::AuthSettings;
use service_kit::http::ConnectionLimits;
use service_kit::settings::SecretUrl;

use crate::source::ServiceToken;

/// Settings of the query service and of its `rebuild` command.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// MySQL or MariaDB read model; the database is created if missing.
    pub database_url: SecretUrl,
    pub database_max_connections: u32,
    pub amqp_url: SecretUrl,
    /// Topic exchange the command service publishes to. The dead-letter exchange and
    /// queue are named after it (`{exchange}.dlx`, `{exchange}.dlq`).
    pub amqp_exchange: String,
    /// The projection's own durable queue, bound to `account.*` and `transfer.*`.
    pub amqp_queue: String,
    /// Unacknowledged messages the broker may hand over at once (also the batch size).
    pub amqp_prefetch: u16,
    pub http_host: String,
    /// 0 picks a free port.
    pub http_port: u16,
    /// Base URL of the command service (gap filling, feed follower, rebuild).
    pub command_service_url: String,
    /// `json` for JSON log lines, anything else for human-readable ones.
    pub log_format: String,
    /// Whether the feed follower (the safety net beside the broker) runs.
    pub feed_follow_enabled: bool,
    /// Pause of the feed follower once it has caught up with the feed.
    pub feed_poll_interval_ms: u64,
    /// Events asked of the global feed per request (1..=1000).
    pub feed_batch_size: u32,
    /// `COMMAND_SERVICE_TOKEN`: the bearer token the query service sends the command
    /// service (it needs `events:read`).
    pub command_service_token: Option<ServiceToken>,
    /// `COMMAND_SERVICE_TOKEN_FILE`: the same token read from a file, re-read when it
    /// changes (a mounted secret that is rotated); surrounding whitespace is ignored.
    pub command_service_token_file: Option<PathBuf>,
    /// `AMQP_PUBLISHER_USER`: the broker user whose messages are applied (the command
    /// service's relay); others are dead-lettered. Default: the user of `AMQP_URL`.
    pub amqp_publisher_user: Option<String>,
    /// Bearer-token authentication of the REST API.
    #[serde(flatten)]
    pub auth: AuthSettings,
    /// Limits on HTTP connections and requests in flight.
    #[serde(flatten)]
    pub connections: ConnectionLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: SecretUrl::new("mysql://root@127.0.0.1:3306/bank_read"),
            database_max_connections: 10,
            amqp_url: SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_exchange: "bank.events".to_owned(),
            amqp_queue: "query-service.projection".to_owned(),
            amqp_prefetch: 256,
            http_host: "0.0.0.0".to_owned(),
            http_port: 8082,
            command_service_url: "http://127.0.0.1:8081".to_owned(),
            log_format: "pretty".to_owned(),
            feed_follow_enabled: true,
            feed_poll_interval_ms: 1000,
            feed_batch_size: 500,
            command_service_token: None,
            command_service_token_file: None,
            amqp_publisher_user: None,
            auth: AuthSettings::default(),
            connections: ConnectionLimits::default(),
        }
    }
}

impl Settings {
    /// Whether logs are JSON lines.
    pub fn json_logs(&self) -> bool {
        self.log_format.eq_ignore_ascii_case("json")
    }

    /// Exchange that rejected messages are dead-lettered to.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.amqp_exchange)
    }

    /// Durable queue that keeps the dead letters for inspection.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.amqp_exchange)
    }

    /// The broker user whose messages the projection trusts: `AMQP_PUBLISHER_USER`,
    /// else the user of `AMQP_URL` (`guest` when it names none).
    pub fn publisher_user(&self) -> Result<String, String> {
        if let Some(user) = self
            .amqp_publisher_user
            .as_deref()
            .map(str::trim)
            .filter(|user| !user.is_empty())
        {
            return Ok(user.to_owned());
        }
        self.amqp_url
            .expose()
            .parse::<lapin::uri::AMQPUri>()
            .map(|uri| uri.authority.userinfo.username)
            .map_err(|error| format!("AMQP_URL is not an AMQP URL: {error}"))
    }

    /// Pause of the feed follower once caught up.
    pub fn feed_poll_interval(&self) -> Duration {
        Duration::from_millis(self.feed_poll_interval_ms.max(10))
    }
}
