//! RabbitMQ: B2 (raw publishing with windowed confirms), queue inspection and cleanup.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

/// A connection of the benchmark's own.
#[derive(Debug)]
pub(crate) struct Broker {
    connection: Connection,
    /// The user of the URL, every message's `user_id` (as the relay sets it).
    user: String,
}

/// A representative message body: an `AccountCredited` event as the relay sends it.
pub(crate) fn sample_event() -> Vec<u8> {
    br#"{"event_id":"019a7d2e-4c1b-7f3a-9d2e-6b5a4c3d2e1f","account_id":"00000000-0000-4000-8000-000000000001","version":3,"position":1042,"type":"AccountCredited","schema_version":1,"occurred_at":"2026-11-22T10:00:00.123456Z","data":{"amount":"1.00","currency":"MAD","balance":"1001.00"},"metadata":{"correlation_id":"0b0e4d7e-4a4e-4b8f-9a57-2f1d3c5b6a79","causation_id":"019a7d2e-4c1b-7f3a-9d2e-6b5a4c3d2e20","idempotency_key":null}}"#.to_vec()
}

impl Broker {
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        let properties = ConnectionProperties::default().with_connection_name("bench".into());
        let connection = Connection::connect(url, properties)
            .await
            .context("cannot connect to RabbitMQ")?;
        Ok(Self {
            connection,
            user: url_user(url),
        })
    }

    /// Declares a durable topic exchange and a durable queue bound to it as the
    /// projection's queue is (`account.*`, a dead-letter exchange argument).
    pub(crate) async fn declare_sink(&self, exchange: &str, queue: &str) -> anyhow::Result<()> {
        let channel = self.connection.create_channel().await?;
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
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(format!("{exchange}.dlx"))),
        );
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "account.*".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// Messages ready in a queue and its consumers; `None` when it does not exist.
    pub(crate) async fn queue_state(&self, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
        let channel = self.connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(state) => {
                let _ = channel.close(200, "done".into()).await;
                Ok(Some((state.message_count(), state.consumer_count())))
            }
            // A missing queue closes the channel (404).
            Err(_) => Ok(None),
        }
    }

    /// Waits until every queue of `queues` exists and has a consumer.
    pub(crate) async fn wait_for_consumers(
        &self,
        queues: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        for queue in queues {
            loop {
                if let Some((_, consumers)) = self.queue_state(queue).await?
                    && consumers > 0
                {
                    break;
                }
                if started.elapsed() > timeout {
                    bail!(
                        "queue {queue} got no consumer within {} s",
                        timeout.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Waits until no message is ready in any of `queues` (their consumers took them all).
    pub(crate) async fn wait_drained(
        &self,
        queues: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.backlog(queues).await? != Some(0) {
            if started.elapsed() > timeout {
                bail!(
                    "messages still ready in {queues:?} after {} s",
                    timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Messages ready in all of `queues`; `None` when one of them does not exist.
    pub(crate) async fn backlog(&self, queues: &[String]) -> anyhow::Result<Option<u32>> {
        let mut ready = 0;
        for queue in queues {
            match self.queue_state(queue).await? {
                Some((messages, _)) => ready += messages,
                None => return Ok(None),
            }
        }
        Ok(Some(ready))
    }

    pub(crate) async fn purge(&self, queue: &str) -> anyhow::Result<u32> {
        let channel = self.connection.create_channel().await?;
        let purged = channel
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await?;
        let _ = channel.close(200, "done".into()).await;
        Ok(purged)
    }

    /// Deletes queues and exchanges (missing ones are fine).
    pub(crate) async fn delete(&self, queues: &[String], exchanges: &[String]) {
        test_support::amqp::delete_queues_and_exchanges(&self.connection, queues, exchanges).await;
    }

    /// B2: publishes messages as the relay does (the same body size, properties and
    /// headers, persistent, routing key `account.credited`) to `exchange` in windows of
    /// `window`, waiting for every confirm of a window before the next, for
    /// `duration`. Returns confirmed messages per second.
    pub(crate) async fn raw_publish(
        &self,
        exchange: &str,
        window: usize,
        duration: Duration,
    ) -> anyhow::Result<f64> {
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let body = sample_event();
        let started = Instant::now();
        let mut confirmed = 0usize;
        let mut sequence = 0u64;
        while started.elapsed() < duration {
            let mut confirms = Vec::with_capacity(window);
            for _ in 0..window {
                sequence += 1;
                let event_id = format!("019a7d2e-4c1b-7f3a-9d2e-{sequence:012x}");
                let mut headers = FieldTable::default();
                headers.insert(
                    ShortString::from("account_id"),
                    AMQPValue::LongString(LongString::from("00000000-0000-4000-8000-000000000001")),
                );
                headers.insert(
                    ShortString::from("correlation_id"),
                    AMQPValue::LongString(LongString::from("0b0e4d7e-4a4e-4b8f-9a57-2f1d3c5b6a79")),
                );
                headers.insert(
                    ShortString::from("traceparent"),
                    AMQPValue::LongString(LongString::from(format!(
                        "00-0b0e4d7e4a4e4b8f9a572f1d3c5b6a79-{sequence:016x}-01"
                    ))),
                );
                let properties = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(event_id.into())
                    .with_type("AccountCredited".into())
                    .with_user_id(self.user.as_str().into())
                    .with_timestamp(1_795_000_000)
                    .with_headers(headers);
                confirms.push(
                    channel
                        .basic_publish(
                            exchange.into(),
                            "account.credited".into(),
                            BasicPublishOptions::default(),
                            &body,
                            properties,
                        )
                        .await?,
                );
            }
            for confirm in confirms {
                if !confirm.await?.is_ack() {
                    bail!("the broker nacked a message");
                }
                confirmed += 1;
            }
        }
        let elapsed = started.elapsed();
        let _ = channel.close(200, "done".into()).await;
        Ok(confirmed as f64 / elapsed.as_secs_f64())
    }

    pub(crate) async fn close(self) {
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// The user of an AMQP URL (`guest` when it names none).
fn url_user(url: &str) -> String {
    url.split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .map(|(credentials, _)| credentials.split(':').next().unwrap_or_default())
        .filter(|user| !user.is_empty())
        .unwrap_or("guest")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_id_is_the_url_user() {
        assert_eq!(url_user("amqp://bench:pw@127.0.0.1:5672/%2f"), "bench");
        assert_eq!(url_user("amqp://127.0.0.1:5672"), "guest");
    }
}
