//! The broker objects the projection declares, and the depth of its dead letters.
//!
//! By default (`AMQP_PARTITIONS` > 0) the events reach the projection like this:
//!
//! ```text
//! bank.events (topic) --account.#, transfer.#--> {queue}.partitions (x-consistent-hash,
//!     hash-header account_id) --weight 1 each--> {queue}.0 .. {queue}.{N-1}
//! ```
//!
//! Each partition queue has a single active consumer, so every replica consumes every
//! partition and the broker makes exactly one of them active per queue: each stream's
//! events reach one consumer, in order. With `AMQP_PARTITIONS=0` one shared queue is
//! bound to the events exchange instead (today's design, no plugin needed).
//!
//! Every projection queue dead-letters to `{exchange}.dlx` (fanout), kept in the
//! bounded dead-letter queue. Queues are quorum queues unless `AMQP_QUEUE_TYPE=classic`;
//! a quorum queue dead-letters a message the broker delivered `AMQP_DELIVERY_LIMIT`
//! times without an acknowledgement (reason `delivery_limit`).

use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};
use tokio_util::sync::CancellationToken;

use crate::settings::{QueueType, Settings};

/// Longest name RabbitMQ accepts for an exchange or a queue.
const MAX_NAME_BYTES: usize = 255;
/// The routing keys the projection is bound to: accounts' and transfers' events.
const PROJECTED_ROUTING_KEYS: [&str; 2] = ["account.#", "transfer.#"];
/// The exchange type of the partitions, from the broker plugin named below.
const CONSISTENT_HASH: &str = "x-consistent-hash";
const CONSISTENT_HASH_PLUGIN: &str = "rabbitmq_consistent_hash_exchange";
/// The message header the partitions hash on: the stream, which the relay sets.
const HASH_HEADER: &str = "account_id";
/// Every partition's share of the hash ring (equal weights).
const PARTITION_WEIGHT: &str = "1";

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TopologyError {
    /// The broker refuses the topology as configured; retrying cannot help.
    #[error("{0}")]
    Refused(String),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
}

/// Names and arguments of the broker objects the projection declares.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    pub(crate) exchange: String,
    pub(crate) dead_letter_exchange: String,
    pub(crate) dead_letter_queue: String,
    /// The consistent-hash exchange, when the queues are partitions.
    pub(crate) partition_exchange: Option<String>,
    /// The queues consumed: the partitions, or the one shared queue.
    pub(crate) queues: Vec<String>,
    queue_type: QueueType,
    delivery_limit: u32,
    dead_letter_max_length: u32,
}

impl Topology {
    /// The objects configured in `settings`; refused when the broker could not take them.
    pub(crate) fn from_settings(settings: &Settings) -> Result<Self, String> {
        let topology = Self {
            exchange: settings.amqp_exchange.clone(),
            dead_letter_exchange: settings.dead_letter_exchange(),
            dead_letter_queue: settings.dead_letter_queue(),
            partition_exchange: settings.partition_exchange(),
            queues: settings.projection_queues(),
            queue_type: settings.amqp_queue_type,
            delivery_limit: settings.amqp_delivery_limit.max(1),
            dead_letter_max_length: settings.amqp_dead_letter_max_length.max(1),
        };
        let names = [
            &topology.exchange,
            &topology.dead_letter_exchange,
            &topology.dead_letter_queue,
        ]
        .into_iter()
        .chain(&topology.partition_exchange)
        .chain(&topology.queues);
        for name in names {
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "broker object names must be 1 to {MAX_NAME_BYTES} bytes (got {name:?})"
                ));
            }
        }
        Ok(topology)
    }

    /// Declares everything, durable: the events exchange, the dead-letter exchange and
    /// its bounded queue, the projection queues and, last, their bindings to the events.
    pub(crate) async fn declare(&self, connection: &Connection) -> Result<(), TopologyError> {
        let channel = connection.create_channel().await?;
        let declared = self.declare_on(&channel).await;
        let _ = channel.close(200, "declared".into()).await;
        declared
    }

    async fn declare_on(&self, channel: &Channel) -> Result<(), TopologyError> {
        service_kit::amqp::declare_events_exchange(channel, &self.exchange)
            .await
            .map_err(|e| self.explain(e, "exchange", &self.exchange))?;
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable_exchange(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.explain(e, "exchange", &self.dead_letter_exchange))?;
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable_queue(),
                self.dead_letter_arguments(),
            )
            .await
            .map_err(|e| self.explain(e, "queue", &self.dead_letter_queue))?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // The plugin's exchange first: a broker without it is refused before any
        // queue is made.
        if let Some(partitions) = &self.partition_exchange {
            let mut arguments = FieldTable::default();
            arguments.insert(ShortString::from("hash-header"), long_string(HASH_HEADER));
            channel
                .exchange_declare(
                    partitions.as_str().into(),
                    ExchangeKind::Custom(CONSISTENT_HASH.to_owned()),
                    durable_exchange(),
                    arguments,
                )
                .await
                .map_err(|e| self.explain(e, "exchange", partitions))?;
        }
        for queue in &self.queues {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    durable_queue(),
                    self.projection_arguments(),
                )
                .await
                .map_err(|e| self.explain(e, "queue", queue))?;
        }
        match &self.partition_exchange {
            Some(partitions) => {
                for queue in &self.queues {
                    channel
                        .queue_bind(
                            queue.as_str().into(),
                            partitions.as_str().into(),
                            PARTITION_WEIGHT.into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
                for routing_key in PROJECTED_ROUTING_KEYS {
                    channel
                        .exchange_bind(
                            partitions.as_str().into(),
                            self.exchange.as_str().into(),
                            routing_key.into(),
                            ExchangeBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .map_err(|e| self.explain(e, "exchange binding of", partitions))?;
                }
            }
            None => {
                for queue in &self.queues {
                    for routing_key in PROJECTED_ROUTING_KEYS {
                        channel
                            .queue_bind(
                                queue.as_str().into(),
                                self.exchange.as_str().into(),
                                routing_key.into(),
                                QueueBindOptions::default(),
                                FieldTable::default(),
                            )
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A projection queue's arguments: where it dead-letters, its type and, for a
    /// quorum queue, the delivery limit; a partition has a single active consumer.
    fn projection_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-dead-letter-exchange"),
            long_string(&self.dead_letter_exchange),
        );
        if self.queue_type == QueueType::Quorum {
            arguments.insert(
                ShortString::from("x-queue-type"),
                long_string(self.queue_type.as_str()),
            );
            arguments.insert(
                ShortString::from("x-delivery-limit"),
                AMQPValue::LongLongInt(i64::from(self.delivery_limit)),
            );
        }
        if self.partition_exchange.is_some() {
            arguments.insert(
                ShortString::from("x-single-active-consumer"),
                AMQPValue::Boolean(true),
            );
        }
        arguments
    }

    /// The dead-letter queue's arguments: its type and its bound, the oldest dropped.
    /// A classic queue is declared without `x-queue-type`, as before there was a choice.
    fn dead_letter_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            arguments.insert(
                ShortString::from("x-queue-type"),
                long_string(self.queue_type.as_str()),
            );
        }
        arguments.insert(
            ShortString::from("x-max-length"),
            AMQPValue::LongLongInt(i64::from(self.dead_letter_max_length)),
        );
        arguments.insert(ShortString::from("x-overflow"), long_string("drop-head"));
        arguments
    }

    /// Turns a refusal that retrying cannot mend into what the operator must do.
    fn explain(&self, error: lapin::Error, what: &str, name: &str) -> TopologyError {
        let ErrorKind::ProtocolError(refusal) = error.kind() else {
            return TopologyError::Broker(error);
        };
        let message = refusal.get_message().as_str().to_owned();
        let advice = match refusal.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => format!(
                "it exists with other arguments than these settings ask for (a classic queue \
                 where AMQP_QUEUE_TYPE={} asks for a {} one, or another delivery limit, \
                 length or single-active-consumer flag). Queue arguments cannot change: either \
                 set the settings back to what the broker holds (e.g. AMQP_QUEUE_TYPE=classic), \
                 or move to the new queue as docs/operations.md (\"Queue topology\", \
                 \"Moving from classic queues\") says: drain it, delete it \
                 (`rabbitmqctl delete_queue {name}`) and start again",
                self.queue_type.as_str(),
                self.queue_type.as_str(),
            ),
            AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID)
                if message.contains(CONSISTENT_HASH) =>
            {
                format!(
                    "the broker lacks the exchange type {CONSISTENT_HASH}: enable its plugin \
                     (`rabbitmq-plugins enable {CONSISTENT_HASH_PLUGIN}`), or set \
                     AMQP_PARTITIONS=0 for one queue shared by all replicas"
                )
            }
            AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID | AMQPHardError::NOTIMPLEMENTED) => {
                format!(
                    "the broker does not support it as configured (AMQP_QUEUE_TYPE={}: a \
                     broker without quorum queues needs AMQP_QUEUE_TYPE=classic)",
                    self.queue_type.as_str()
                )
            }
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                "the broker user of AMQP_URL may not configure it: grant it configure, write \
                 and read on the query service's names (see \
                 k8s/overlays/local/rabbitmq/README.md)"
                    .to_owned()
            }
            _ => return TopologyError::Broker(error),
        };
        TopologyError::Refused(format!(
            "the broker refused to declare the {what} {name:?} ({message}): {advice}"
        ))
    }
}

/// Keeps the gauge `dead_letter_queue_messages{queue}` at the dead-letter queue's depth, read
/// by a passive declare every `interval`, until `stop`.
pub(crate) async fn watch_dead_letters(
    connection: &Connection,
    queue: &str,
    interval: Duration,
    stop: &CancellationToken,
) {
    let gauge = metrics::gauge!("dead_letter_queue_messages", "queue" => queue.to_owned());
    loop {
        match dead_letter_depth(connection, queue).await {
            Ok(depth) => gauge.set(f64::from(depth)),
            Err(error) => {
                tracing::warn!(%queue, error = %error, "cannot read the dead-letter queue's depth");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Messages in `queue`, on a channel of its own (a missing queue closes the channel).
async fn dead_letter_depth(connection: &Connection, queue: &str) -> Result<u32, lapin::Error> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "read".into()).await;
    Ok(declared.message_count())
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(partitions: u16, queue_type: QueueType) -> Settings {
        Settings {
            amqp_exchange: "bank.events".to_owned(),
            amqp_queue: "query-service.projection".to_owned(),
            amqp_partitions: partitions,
            amqp_queue_type: queue_type,
            ..Settings::default()
        }
    }

    #[test]
    fn partitions_are_numbered_queues_behind_a_hash_exchange() {
        let topology = Topology::from_settings(&settings(3, QueueType::Quorum)).unwrap();
        assert_eq!(
            topology.partition_exchange.as_deref(),
            Some("query-service.projection.partitions")
        );
        assert_eq!(
            topology.queues,
            [
                "query-service.projection.0",
                "query-service.projection.1",
                "query-service.projection.2"
            ]
        );
        assert_eq!(topology.dead_letter_queue, "bank.events.dlq");
    }

    #[test]
    fn no_partitions_is_one_shared_queue_bound_to_the_events() {
        let topology = Topology::from_settings(&settings(0, QueueType::Classic)).unwrap();
        assert_eq!(topology.partition_exchange, None);
        assert_eq!(topology.queues, ["query-service.projection"]);
        let arguments = topology.projection_arguments();
        assert!(!arguments.inner().contains_key("x-single-active-consumer"));
        assert!(!arguments.inner().contains_key("x-delivery-limit"));
    }

    #[test]
    fn quorum_partitions_have_a_delivery_limit_and_one_active_consumer() {
        let topology = Topology::from_settings(&settings(8, QueueType::Quorum)).unwrap();
        let arguments = topology.projection_arguments();
        let arguments = arguments.inner();
        assert_eq!(arguments.get("x-queue-type"), Some(&long_string("quorum")));
        assert_eq!(
            arguments.get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(5))
        );
        assert_eq!(
            arguments.get("x-single-active-consumer"),
            Some(&AMQPValue::Boolean(true))
        );
        let dead_letters = topology.dead_letter_arguments();
        assert_eq!(
            dead_letters.inner().get("x-max-length"),
            Some(&AMQPValue::LongLongInt(10_000))
        );
        assert_eq!(
            dead_letters.inner().get("x-overflow"),
            Some(&long_string("drop-head"))
        );
    }

    fn refusal(kind: AMQPErrorKind, message: &str) -> lapin::Error {
        lapin::Error::from(ErrorKind::ProtocolError(lapin::protocol::AMQPError::new(
            kind,
            message.into(),
        )))
    }

    #[test]
    fn a_broker_without_the_plugin_is_told_which_plugin_to_enable() {
        let topology = Topology::from_settings(&settings(8, QueueType::Quorum)).unwrap();
        let error = topology.explain(
            refusal(
                AMQPErrorKind::Hard(AMQPHardError::COMMANDINVALID),
                "COMMAND_INVALID - unknown exchange type 'x-consistent-hash'",
            ),
            "exchange",
            "query-service.projection.partitions",
        );
        let TopologyError::Refused(reason) = error else {
            panic!("not a refusal: {error:?}");
        };
        assert!(reason.contains("rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"));
        assert!(reason.contains("AMQP_PARTITIONS=0"));
    }

    #[test]
    fn a_queue_of_another_type_is_refused_with_the_way_out() {
        let topology = Topology::from_settings(&settings(8, QueueType::Quorum)).unwrap();
        let error = topology.explain(
            refusal(
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type'",
            ),
            "queue",
            "bank.events.dlq",
        );
        let TopologyError::Refused(reason) = error else {
            panic!("not a refusal: {error:?}");
        };
        assert!(reason.contains("AMQP_QUEUE_TYPE=classic"), "{reason}");
        assert!(
            reason.contains("rabbitmqctl delete_queue bank.events.dlq"),
            "{reason}"
        );
        assert!(reason.contains("docs/operations.md"), "{reason}");
    }

    #[test]
    fn a_lost_connection_is_not_a_refusal() {
        let topology = Topology::from_settings(&settings(8, QueueType::Quorum)).unwrap();
        let error = topology.explain(
            refusal(
                AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
                "CONNECTION_FORCED - broker forced connection closure",
            ),
            "queue",
            "bank.events.dlq",
        );
        assert!(matches!(error, TopologyError::Broker(_)), "{error:?}");
    }

    #[test]
    fn a_name_the_broker_cannot_take_is_refused() {
        let mut long = settings(8, QueueType::Quorum);
        long.amqp_queue = "q".repeat(254);
        assert!(Topology::from_settings(&long).is_err());
    }
}
