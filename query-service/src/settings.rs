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
    /// The projection's queue name. With partitions (the default) it names the
    /// consistent-hash exchange `{queue}.partitions` and the partition queues
    /// `{queue}.0` to `{queue}.{N-1}`; with `AMQP_PARTITIONS=0` it is the one queue all
    /// replicas share, bound to `account.#` and `transfer.#`.
    pub amqp_queue: String,
    /// `AMQP_PARTITIONS`: partition queues, each consumed by one replica at a time
    /// (single active consumer) so that each stream's events arrive in order; needs
    /// the broker plugin `rabbitmq_consistent_hash_exchange`. `0`: one shared queue
    /// (no plugin; replicas then compete and fill the gaps that reordering leaves).
    pub amqp_partitions: u16,
    /// `AMQP_QUEUE_TYPE`: `quorum` (replicated, with a delivery limit) or `classic`
    /// (for brokers without quorum queues; no delivery limit).
    pub amqp_queue_type: QueueType,
    /// `AMQP_DELIVERY_LIMIT`: deliveries of a message whose projection keeps failing
    /// (quorum queues) before the broker dead-letters it (reason `delivery_limit`).
    pub amqp_delivery_limit: u32,
    /// `AMQP_DEAD_LETTER_QUEUE`: the dead-letter queue; default `{exchange}.dlq`.
    pub amqp_dead_letter_queue: Option<String>,
    /// `AMQP_DEAD_LETTER_MAX_LENGTH`: dead letters kept; beyond it the oldest are
    /// dropped (`x-overflow: drop-head`).
    pub amqp_dead_letter_max_length: u32,
    /// `DEAD_LETTER_POLL_INTERVAL_MS`: how often the dead-letter queue's depth is
    /// read for the gauge `dead_letter_queue_messages`.
    pub dead_letter_poll_interval_ms: u64,
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

/// The kind of queue the projection and the dead letters are kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Replicated (Raft) queues; a delivery limit applies.
    Quorum,
    /// Single-node queues, for brokers without quorum queues.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: SecretUrl::new("mysql://root@127.0.0.1:3306/bank_read"),
            database_max_connections: 10,
            amqp_url: SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            amqp_exchange: "bank.events".to_owned(),
            amqp_queue: "query-service.projection".to_owned(),
            amqp_partitions: 8,
            amqp_queue_type: QueueType::Quorum,
            amqp_delivery_limit: 5,
            amqp_dead_letter_queue: None,
            amqp_dead_letter_max_length: 10_000,
            dead_letter_poll_interval_ms: 5_000,
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

    /// Durable queue that keeps the dead letters for inspection: `AMQP_DEAD_LETTER_QUEUE`,
    /// else `{exchange}.dlq`.
    pub fn dead_letter_queue(&self) -> String {
        self.amqp_dead_letter_queue
            .as_deref()
            .map(str::trim)
            .filter(|queue| !queue.is_empty())
            .map_or_else(|| format!("{}.dlq", self.amqp_exchange), str::to_owned)
    }

    /// The consistent-hash exchange of the partitions, when there are partitions.
    pub fn partition_exchange(&self) -> Option<String> {
        (self.amqp_partitions > 0).then(|| service_kit::amqp::partition_exchange(&self.amqp_queue))
    }

    /// The queues the projection consumes: the partitions, or the one shared queue.
    pub fn projection_queues(&self) -> Vec<String> {
        if self.amqp_partitions == 0 {
            vec![self.amqp_queue.clone()]
        } else {
            service_kit::amqp::partition_queues(&self.amqp_queue, self.amqp_partitions)
        }
    }

    /// How often the dead-letter queue's depth is read.
    pub fn dead_letter_poll_interval(&self) -> Duration {
        Duration::from_millis(self.dead_letter_poll_interval_ms.max(100))
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
