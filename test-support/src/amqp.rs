//! The test's own link to RabbitMQ: publishing straight to an exchange (as a relay, a
//! duplicating broker or a misbehaving producer would), a queue of its own bound to an
//! exchange to see what is published, and what queues hold.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::servers::{Server, amqp_url, require};

/// A connection with a confirming channel for publishing.
#[derive(Debug)]
pub struct Broker {
    connection: Connection,
    publisher: Channel,
}

/// What a queue holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    pub messages: u32,
    pub consumers: u32,
}

impl Broker {
    /// Connects to the shared broker; fails the test, saying how to start it, if it is down.
    pub async fn connect() -> Self {
        require(&[Server::RabbitMq]);
        Self::try_connect()
            .await
            .unwrap_or_else(|error| panic!("cannot open a connection to {}: {error}", amqp_url()))
    }

    /// Connects to the shared broker, if it answers.
    pub async fn try_connect() -> Result<Self, lapin::Error> {
        let properties = ConnectionProperties::default().with_connection_name("tests".into());
        let connection = Connection::connect(&amqp_url(), properties).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            publisher,
        })
    }

    /// A new channel on the connection.
    pub async fn channel(&self) -> Channel {
        self.connection
            .create_channel()
            .await
            .unwrap_or_else(|error| panic!("cannot open an AMQP channel: {error}"))
    }

    /// Publishes a body and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap_or_else(|error| panic!("cannot publish to {exchange}: {error}"));
        let confirmation = confirm
            .await
            .unwrap_or_else(|error| panic!("no publisher confirm from {exchange}: {error}"));
        assert!(confirmation.is_ack(), "the broker refused a message");
    }

    /// Publishes an event as the command service's relay does: routing key
    /// `account.<kind>`, JSON, persistent, `message_id` and `type` set, the `account_id`
    /// header (the stream, which the query service's partitions hash on), and the
    /// `correlation_id` header when the event's metadata has one.
    pub async fn publish_event(&self, exchange: &str, event: &Value) {
        let kind = event["type"].as_str().unwrap_or("Unknown");
        let mut headers = event["metadata"]["correlation_id"]
            .as_str()
            .map(correlation_header)
            .unwrap_or_default();
        if let Some(stream) = event["account_id"].as_str() {
            headers.insert(
                ShortString::from("account_id"),
                AMQPValue::LongString(LongString::from(stream)),
            );
        }
        let properties = json_properties()
            .with_message_id(event["event_id"].as_str().unwrap_or_default().into())
            .with_type(kind.into())
            .with_headers(headers);
        let body = serde_json::to_vec(event)
            .unwrap_or_else(|error| panic!("an event serialises: {error}"));
        self.publish(exchange, &routing_key(kind), &body, properties)
            .await;
    }

    /// A server-named queue of the test's own, bound to `exchange` with `binding_key`,
    /// deleted with the connection. The exchange must exist.
    pub async fn subscribe(self, exchange: &str, binding_key: &str) -> Subscription {
        let channel = self.channel().await;
        let declared = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|error| panic!("cannot declare a queue: {error}"));
        let queue = declared.name().clone();
        channel
            .queue_bind(
                queue.clone(),
                exchange.into(),
                binding_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|error| panic!("cannot bind a queue to {exchange}: {error}"));
        let consumer = channel
            .basic_consume(
                queue,
                "tests".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|error| panic!("cannot consume from a queue: {error}"));
        Subscription {
            consumer,
            _broker: self,
        }
    }

    /// Messages and consumers of a queue, by a passive declare (on a channel of its own,
    /// since the broker closes the channel when the queue does not exist).
    pub async fn depth(&self, queue: &str) -> Option<QueueDepth> {
        let channel = self.connection.create_channel().await.ok()?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = channel.close(200, "done".into()).await;
        Some(QueueDepth {
            messages: declared.message_count(),
            consumers: declared.consumer_count(),
        })
    }

    /// Takes every message out of a queue (acknowledging them) and returns the bodies.
    pub async fn drain(&self, queue: &str) -> Vec<Vec<u8>> {
        let channel = self.channel().await;
        let mut bodies = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .unwrap_or_else(|error| panic!("cannot read {queue}: {error}"))
        {
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .unwrap_or_else(|error| panic!("cannot acknowledge a message of {queue}: {error}"));
            bodies.push(message.delivery.data);
        }
        let _ = channel.close(200, "done".into()).await;
        bodies
    }

    /// Deletes queues and exchanges; what does not exist is skipped.
    pub async fn delete(&self, queues: &[String], exchanges: &[String]) {
        delete_queues_and_exchanges(&self.connection, queues, exchanges).await;
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Deletes queues and exchanges over `connection`, a channel each (the broker closes a
/// channel on error); what does not exist is skipped.
pub async fn delete_queues_and_exchanges(
    connection: &Connection,
    queues: &[String],
    exchanges: &[String],
) {
    for queue in queues {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            let _ = channel.close(200, "done".into()).await;
        }
    }
    for exchange in exchanges {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            let _ = channel.close(200, "done".into()).await;
        }
    }
}

/// `application/json`, persistent: the properties of every event message.
pub fn json_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

/// A `correlation_id` header, as the relay sets it.
pub fn correlation_header(correlation_id: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("correlation_id"),
        AMQPValue::LongString(LongString::from(correlation_id)),
    );
    headers
}

/// `account.<kind>` for `Account<Kind>`, as the contract routes events.
pub fn routing_key(event_type: &str) -> String {
    let kind = event_type.strip_prefix("Account").unwrap_or(event_type);
    format!("account.{}", kind.to_ascii_lowercase())
}

/// A queue of the test's own, bound to an exchange (see [`Broker::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    consumer: lapin::Consumer,
    _broker: Broker,
}

/// A message as received: its JSON body and the properties the contract fixes.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub traceparent: Option<String>,
    /// The AMQP `user_id`: the publishing connection's broker user.
    pub user_id: Option<String>,
    /// The `account_id` header: the stream the event belongs to.
    pub account_id: Option<String>,
}

impl Subscription {
    /// Receives (and acknowledges) until `count` messages arrived or `within` passed.
    pub async fn receive(&mut self, count: usize, within: Duration) -> Vec<Received> {
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while received.len() < count {
            let Ok(Some(Ok(delivery))) =
                tokio::time::timeout_at(deadline, self.consumer.next()).await
            else {
                break;
            };
            let properties = &delivery.properties;
            let header = |name: &str| {
                properties
                    .headers()
                    .as_ref()
                    .and_then(|headers| headers.inner().get(name).cloned())
                    .and_then(|value| match value {
                        AMQPValue::LongString(text) => Some(text.to_string()),
                        _ => None,
                    })
            };
            received.push(Received {
                body: serde_json::from_slice(&delivery.data)
                    .unwrap_or_else(|error| panic!("a message that is not JSON: {error}")),
                routing_key: delivery.routing_key.to_string(),
                message_id: properties.message_id().as_ref().map(ToString::to_string),
                kind: properties.kind().as_ref().map(ToString::to_string),
                content_type: properties.content_type().as_ref().map(ToString::to_string),
                delivery_mode: *properties.delivery_mode(),
                traceparent: header("traceparent"),
                user_id: properties.user_id().as_ref().map(ToString::to_string),
                account_id: header("account_id"),
            });
            delivery
                .ack(BasicAckOptions::default())
                .await
                .unwrap_or_else(|error| panic!("cannot acknowledge a message: {error}"));
        }
        received
    }
}
