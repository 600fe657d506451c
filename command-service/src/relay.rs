//! The relay: publishes committed events to RabbitMQ with publisher confirms, in
//! position order (so in version order per account), reading the events after the
//! relay checkpoint and moving it once a window is confirmed (the events table is the
//! outbox). One relay leads across all replicas; the others stand by.

use std::time::Duration;

use event_store::{EventStore, OutboxLeader, RecordedEvent, StoreError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use service_kit::amqp::BrokerStatus;
use service_kit::backoff::Backoff;
use shared_events::EventType;
use tokio_util::sync::CancellationToken;

use crate::envelope::to_envelope;

/// How often a standby relay tries to take the lead, and the longest wait for a
/// wake-up before the outbox is looked at anyway.
const STANDBY_RETRY: Duration = Duration::from_secs(2);
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The pause before publishing again after the broker failed.
const RECONNECT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused (nacked) event at position {0}")]
    Nacked(i64),
    #[error("event at position {0} cannot be encoded: {1}")]
    Encode(i64, serde_json::Error),
}

/// Publishes the outbox to the events exchange.
#[derive(Debug, Clone)]
pub(crate) struct Relay {
    pub(crate) store: EventStore,
    pub(crate) amqp_url: String,
    /// The user of `amqp_url`, set as every message's `user_id` (RabbitMQ checks it
    /// against the connection's user, so consumers can trust it).
    pub(crate) publisher_user: String,
    pub(crate) exchange: String,
    pub(crate) batch_size: i64,
    pub(crate) status: BrokerStatus,
}

struct Publisher {
    connection: Connection,
    channel: Channel,
    /// The connection's user, the `user_id` of every message.
    user_id: String,
}

impl Relay {
    /// Runs until `shutdown`: waits for the lead, then publishes.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.store.try_lead_outbox().await {
                Ok(Some(leader)) => {
                    tracing::info!("outbox relay is leading");
                    if let Err(error) = self.lead(leader, &shutdown).await {
                        tracing::warn!(error = %error, "outbox relay lost its database connection; re-electing");
                    }
                    self.status.set_idle();
                }
                Ok(None) => self.status.set_idle(),
                Err(error) => {
                    tracing::warn!(error = %error, "outbox relay cannot reach the database")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(STANDBY_RETRY) => {}
            }
        }
    }

    async fn lead(
        &self,
        mut leader: OutboxLeader,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let mut listener = self.store.listen_appends().await?;
        let mut publisher: Option<Publisher> = None;
        let mut backoff = RECONNECT_BACKOFF;
        let mut checkpoint = leader.checkpoint().await?;
        while !shutdown.is_cancelled() {
            let batch = leader.read_after(checkpoint, self.batch_size).await?;
            metrics::gauge!("outbox_pending_batch").set(batch.len() as f64);
            self.record_backlog(&mut leader, checkpoint, &batch).await?;
            let Some(last) = batch.last().map(|e| e.position) else {
                publisher = self.keep_connected(publisher).await;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = listener.recv() => {}
                    () = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            };
            let outcome = match publisher.take().filter(Publisher::is_connected) {
                Some(connected) => Ok(connected),
                None => self.connect().await,
            };
            let outcome = match outcome {
                Ok(connected) => {
                    let published = connected.publish(&self.exchange, &batch).await;
                    publisher = Some(connected);
                    published
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {
                    leader.confirm(last).await?;
                    checkpoint = last;
                    metrics::counter!("outbox_published_total").increment(batch.len() as u64);
                    self.status.set_up();
                    backoff.reset();
                }
                Err(error) => {
                    self.status.set_down();
                    tracing::warn!(error = %error, retry_within = ?backoff.current(), "publishing failed; events stay in the outbox");
                    if let Some(failed) = publisher.take() {
                        failed.close().await;
                    }
                    if !backoff.wait(shutdown).await {
                        break;
                    }
                }
            }
        }
        if let Some(publisher) = publisher {
            publisher.close().await;
        }
        leader.resign().await
    }

    /// Sets `relay_backlog_events` (head position less the checkpoint) and
    /// `relay_backlog_seconds` (age of the oldest unconfirmed event, 0 when none) from
    /// the events just read after `checkpoint`: only a full window needs the head.
    async fn record_backlog(
        &self,
        leader: &mut OutboxLeader,
        checkpoint: i64,
        read: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let head = match read.last() {
            Some(_) if i64::try_from(read.len()).unwrap_or(i64::MAX) >= self.batch_size => {
                leader.head().await?
            }
            Some(last) => last.position,
            None => checkpoint,
        };
        metrics::gauge!("relay_backlog_events").set((head - checkpoint).max(0) as f64);
        let age = read
            .first()
            .map_or(0.0, |oldest| seconds_since(oldest.occurred_at));
        metrics::gauge!("relay_backlog_seconds").set(age);
        Ok(())
    }

    /// While idle, keeps the broker connection open (or retries it) so that
    /// readiness reports an outage even when nothing is being published.
    async fn keep_connected(&self, publisher: Option<Publisher>) -> Option<Publisher> {
        if let Some(connected) = publisher.filter(Publisher::is_connected) {
            return Some(connected);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect()).await {
            Ok(Ok(connected)) => {
                self.status.set_up();
                Some(connected)
            }
            Ok(Err(error)) => {
                self.status.set_down();
                tracing::debug!(error = %error, "broker unreachable while idle");
                None
            }
            Err(_) => {
                self.status.set_down();
                None
            }
        }
    }

    async fn connect(&self) -> Result<Publisher, PublishError> {
        let connection =
            service_kit::amqp::connect(&self.amqp_url, "command-service relay").await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        service_kit::amqp::declare_events_exchange(&channel, &self.exchange).await?;
        tracing::info!("outbox relay connected to the broker");
        Ok(Publisher {
            connection,
            channel,
            user_id: self.publisher_user.clone(),
        })
    }
}

/// Seconds from `since` until now (0 for a time in the future).
pub(crate) fn seconds_since(since: chrono::DateTime<chrono::Utc>) -> f64 {
    (chrono::Utc::now() - since)
        .to_std()
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// A W3C `traceparent` for the request that caused the event: its request id (a
/// UUID) is the trace id, the event id names the span.
fn traceparent(correlation_id: &str, event_id: uuid::Uuid) -> Option<String> {
    let trace_id = uuid::Uuid::parse_str(correlation_id)
        .ok()?
        .simple()
        .to_string();
    let span_id = &event_id.simple().to_string()[16..];
    Some(format!("00-{trace_id}-{span_id}-01"))
}

impl Publisher {
    fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes a window of events, then waits for the broker to confirm every one.
    async fn publish(&self, exchange: &str, events: &[RecordedEvent]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let envelope = to_envelope(event);
            let body = serde_json::to_vec(&envelope)
                .map_err(|error| PublishError::Encode(event.position, error))?;
            let routing_key = event
                .event_type
                .parse::<EventType>()
                .map_or("account.unknown", |kind| kind.routing_key());
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from("account_id"),
                AMQPValue::LongString(LongString::from(event.stream_id.to_string())),
            );
            if let Some(correlation_id) = &envelope.metadata.correlation_id {
                headers.insert(
                    ShortString::from("correlation_id"),
                    AMQPValue::LongString(LongString::from(correlation_id.as_str())),
                );
                if let Some(traceparent) = traceparent(correlation_id, event.event_id) {
                    headers.insert(
                        ShortString::from("traceparent"),
                        AMQPValue::LongString(LongString::from(traceparent)),
                    );
                }
            }
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(event.event_id.to_string().into())
                .with_type(event.event_type.as_str().into())
                .with_user_id(self.user_id.as_str().into())
                .with_timestamp(u64::try_from(event.occurred_at.timestamp()).unwrap_or_default())
                .with_headers(headers);
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?;
            confirms.push((event.position, confirm));
        }
        for (position, confirm) in confirms {
            if !confirm.await?.is_ack() {
                return Err(PublishError::Nacked(position));
            }
        }
        Ok(())
    }

    async fn close(self) {
        let _ = self
            .connection
            .close(200, "relay reconnecting".into())
            .await;
    }
}
