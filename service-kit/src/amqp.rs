//! RabbitMQ connections and the `bank.events` topology.

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

/// Connects to the broker, naming the connection after the service.
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    Connection::connect(url, properties).await
}

/// Declares the durable topic exchange the events are published to.
pub async fn declare_events_exchange(
    channel: &Channel,
    exchange: &str,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

/// The consistent-hash exchange that spreads a projection's events over its partition
/// queues (`{queue}.partitions`, named after the projection's queue setting).
pub fn partition_exchange(queue: &str) -> String {
    format!("{queue}.partitions")
}

/// The partition queues of a projection: `{queue}.0` to `{queue}.{partitions - 1}`.
pub fn partition_queues(queue: &str, partitions: u16) -> Vec<String> {
    (0..partitions)
        .map(|index| format!("{queue}.{index}"))
        .collect()
}

/// A service's view of its broker connection, reported by `/health/ready`.
#[derive(Debug, Clone)]
pub struct BrokerStatus {
    state: std::sync::Arc<std::sync::atomic::AtomicU8>,
    idle: &'static str,
}

impl BrokerStatus {
    const IDLE: u8 = 0;
    const UP: u8 = 1;
    const DOWN: u8 = 2;

    /// A status that reads `idle` (e.g. `"connecting"`, `"standby"`) until set.
    pub fn new(idle: &'static str) -> Self {
        Self {
            state: std::sync::Arc::default(),
            idle,
        }
    }

    pub fn set_up(&self) {
        self.store(Self::UP);
    }

    pub fn set_down(&self) {
        self.store(Self::DOWN);
    }

    pub fn set_idle(&self) {
        self.store(Self::IDLE);
    }

    fn store(&self, state: u8) {
        self.state
            .store(state, std::sync::atomic::Ordering::Relaxed);
    }

    /// `"up"`, `"down"` or the idle word.
    pub fn describe(&self) -> &'static str {
        match self.state.load(std::sync::atomic::Ordering::Relaxed) {
            Self::UP => "up",
            Self::DOWN => "down",
            _ => self.idle,
        }
    }
}
