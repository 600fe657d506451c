//! The test's own link to RabbitMQ: publishing straight to a stack's exchange, as a
//! misbehaving or duplicating broker would deliver, and counting what queues hold.

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::servers::AMQP_URL;

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
        match Self::open().await {
            Ok(broker) => broker,
            Err(error) => panic!(
                "cannot reach RabbitMQ at {AMQP_URL} ({error}); start it (as root) with \
                 `rabbitmq-server -detached && rabbitmqctl await_startup`"
            ),
        }
    }

    pub async fn try_connect() -> Option<Self> {
        Self::open().await.ok()
    }

    async fn open() -> Result<Self, lapin::Error> {
        let properties = ConnectionProperties::default().with_connection_name("e2e-tests".into());
        let connection = Connection::connect(AMQP_URL, properties).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            publisher,
        })
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
            .expect("publish");
        assert!(
            confirm.await.expect("publisher confirm").is_ack(),
            "the broker refused a message"
        );
    }

    /// Publishes an event as the command service's relay does: routing key
    /// `account.<kind>`, JSON, persistent, `message_id` and `type` set.
    pub async fn publish_event(&self, exchange: &str, event: &Value) {
        let kind = event["type"].as_str().unwrap_or("Unknown");
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(event["event_id"].as_str().unwrap_or_default().into())
            .with_type(kind.into());
        let body = serde_json::to_vec(event).expect("an event serialises");
        self.publish(exchange, &routing_key(kind), &body, properties)
            .await;
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
        let channel = self
            .connection
            .create_channel()
            .await
            .expect("an AMQP channel");
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
                .expect("ack");
            bodies.push(message.delivery.data);
        }
        let _ = channel.close(200, "done".into()).await;
        bodies
    }

    /// Deletes queues and exchanges; what does not exist is skipped.
    pub async fn delete(&self, queues: &[&str], exchanges: &[&str]) {
        for queue in queues {
            if let Ok(channel) = self.connection.create_channel().await {
                let _ = channel
                    .queue_delete((*queue).into(), QueueDeleteOptions::default())
                    .await;
                let _ = channel.close(200, "done".into()).await;
            }
        }
        for exchange in exchanges {
            if let Ok(channel) = self.connection.create_channel().await {
                let _ = channel
                    .exchange_delete((*exchange).into(), ExchangeDeleteOptions::default())
                    .await;
                let _ = channel.close(200, "done".into()).await;
            }
        }
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// `account.<kind>` for `Account<Kind>`, as the contract routes events.
pub fn routing_key(event_type: &str) -> String {
    let kind = event_type.strip_prefix("Account").unwrap_or(event_type);
    format!("account.{}", kind.to_ascii_lowercase())
}
