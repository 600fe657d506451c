//! RabbitMQ connections and the `bank.events` topology.

use lapin::options::ExchangeDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
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

/// Whether `exchange` exists, asked with a passive declare on a channel of its own (the
/// broker closes a channel whose passive declare fails), so that a user allowed to read
/// an exchange but not to configure it can still check for it.
pub async fn exchange_exists(
    connection: &Connection,
    exchange: &str,
) -> Result<bool, lapin::Error> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(()) => {
            let _ = channel.close(200, "done".into()).await;
            Ok(true)
        }
        Err(error)
            if matches!(
                error.kind(),
                lapin::ErrorKind::ProtocolError(amqp)
                    if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
            ) =>
        {
            Ok(false)
        }
        Err(error) => Err(error),
    }
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
