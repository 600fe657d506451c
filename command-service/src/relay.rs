//! The relay: publishes committed events to RabbitMQ with publisher confirms, in
//! position order (so in version order per account), reading the events after the
//! relay checkpoint and moving it once a window is confirmed (the events table is the
//! outbox). Up to sixteen windows are published ahead of their confirms;
//! the checkpoint moves in order, only past fully confirmed windows, and a refusal or
//! a broker failure restarts from it (at least once). One relay leads across all
//! replicas; the others stand by.

use std::collections::VecDeque;
use std::task::Poll;
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_store::{EventStore, OutboxLeader, RecordedEvent, StoreError};
use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
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
/// Windows published and not yet confirmed at once: the next is read and published
/// while the broker confirms the previous ones. Under load the broker takes tens of
/// milliseconds to confirm; with three windows the events committed meanwhile waited
/// for a slot (at 50 % of peak, `relay_read` 14 ms and `confirmed` 85 ms after
/// `committed` at p50; with sixteen, 2.5 ms and 19 ms: `bench --quick`).
const WINDOWS_IN_FLIGHT: usize = 16;
/// Events published and not yet confirmed at once, in windows of the batch size: small
/// windows may fly sixteen at once, a backlog drains three full windows at a time (as
/// before there were sixteen), which bounds the memory the unconfirmed messages hold.
const FULL_WINDOWS_IN_FLIGHT: i64 = 3;
/// The shortest time between two reads woken by commits. Under load every writer's
/// commit wakes the relay, and each read became a window of one or two messages, which
/// the broker confirms at a fixed cost per window: spaced by 2 ms, RabbitMQ spent
/// 360 µs of CPU per command instead of 450 at 4 clients, and the command service kept
/// pace with cqrs-es (0.90× instead of 0.83×; `bench --quick --only cqrs`). An event
/// committed after a quiet spell is read at once; a backlog is read without pause.
const WOKEN_READ_SPACING: Duration = Duration::from_millis(2);
/// How long a confirmed position may wait before the checkpoint is written: one write
/// serves every window confirmed meanwhile. A crash in between only republishes the
/// events confirmed since the last write, which delivery at least once allows.
const CHECKPOINT_DELAY: Duration = Duration::from_millis(20);
/// Seconds from an event's `occurred_at` to each stage it reaches (histogram).
pub(crate) const PIPELINE: &str = "event_pipeline_seconds";

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused (nacked) event at position {0}")]
    Nacked(i64),
    #[error("event at position {0} cannot be encoded: {1}")]
    Encode(i64, serde_json::Error),
    #[error("a published window held no event")]
    EmptyWindow,
    #[error("the broker did not {0} within {1:?}")]
    Stalled(&'static str, Duration),
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
    /// Longest wait for the broker to take a window or confirm it, or to connect.
    pub(crate) broker_timeout: Duration,
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
                    metrics::gauge!("relay_leading").set(1.0);
                    if let Err(error) = self.lead(leader, &shutdown).await {
                        tracing::warn!(error = %error, "outbox relay lost its database connection; re-electing");
                    }
                    // The backlog is the next leader's to report.
                    metrics::gauge!("relay_leading").set(0.0);
                    metrics::gauge!("relay_backlog_events").set(0.0);
                    metrics::gauge!("relay_backlog_seconds").set(0.0);
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
        let mut confirmed = leader.checkpoint().await?;
        // Since when `confirmed` is ahead of the stored checkpoint.
        let mut unsaved_since: Option<tokio::time::Instant> = None;
        let mut read_to = confirmed;
        let mut in_flight: VecDeque<Window> = VecDeque::with_capacity(WINDOWS_IN_FLIGHT);
        // Whether the last read found fewer events than a window: then the oldest
        // window is settled (or a wake-up awaited) before reading again, so that events
        // committed meanwhile are read together.
        let mut caught_up = false;
        // Whether the next read follows a wake-up (not a read that filled its window):
        // it then waits for the rest of [`WOKEN_READ_SPACING`] since the last read.
        let mut last_read = tokio::time::Instant::now();
        let mut woken = false;
        while !shutdown.is_cancelled() {
            if unsaved_since.is_some_and(|since| since.elapsed() >= CHECKPOINT_DELAY) {
                leader.confirm(confirmed).await?;
                unsaved_since = None;
            }
            let budget = self.budget(&in_flight);
            let outcome = if !caught_up && budget > 0 {
                if woken {
                    tokio::time::sleep_until(last_read + WOKEN_READ_SPACING).await;
                    woken = false;
                }
                last_read = tokio::time::Instant::now();
                let batch = leader.read_after(read_to, budget).await?;
                record_stage("relay_read", &batch);
                let oldest = in_flight
                    .front()
                    .map(|window| window.oldest)
                    .or_else(|| batch.first().map(|event| event.occurred_at));
                caught_up = i64::try_from(batch.len()).unwrap_or(i64::MAX) < budget;
                self.record_backlog(&mut leader, (confirmed, read_to), oldest, &batch, caught_up)
                    .await?;
                let Some(last) = batch.last().map(|event| event.position) else {
                    continue;
                };
                let connected = match publisher.take().filter(Publisher::is_connected) {
                    Some(connected) => Ok(connected),
                    None => self.within("connect", self.connect()).await,
                };
                match connected {
                    Ok(connected) => {
                        let published = self
                            .within("take a window", connected.publish(&self.exchange, &batch))
                            .await;
                        publisher = Some(connected);
                        published.map(|window| {
                            read_to = last;
                            in_flight.push_back(window);
                        })
                    }
                    Err(error) => Err(error),
                }
            } else if !in_flight.is_empty() {
                // Caught up, or as many windows in flight as allowed: the oldest window's
                // confirms, or (with room for another window) a wake-up for new events,
                // which are then published without waiting for those confirms.
                let room = budget > 0;
                let Some(window) = in_flight.front_mut() else {
                    continue;
                };
                let settled = tokio::select! {
                    biased;
                    settled = self.within("confirm a window", &mut window.settled) => Some(settled),
                    _ = listener.recv(), if room => None,
                };
                // A settled window alone is no reason to read again: events committed
                // since the last read have notified the listener, which wakes the relay.
                let Some(settled) = settled else {
                    listener.drain();
                    woken = true;
                    caught_up = false;
                    continue;
                };
                in_flight.pop_front();
                match settled {
                    Ok((last, count)) => {
                        confirmed = last;
                        unsaved_since.get_or_insert_with(tokio::time::Instant::now);
                        metrics::counter!("outbox_published_total").increment(count);
                        self.status.set_up();
                        backoff.reset();
                        Ok(())
                    }
                    Err(error) => Err(error),
                }
            } else {
                metrics::gauge!("relay_backlog_seconds").set(0.0);
                publisher = self.keep_connected(publisher).await;
                let save_at = unsaved_since.map(|since| since + CHECKPOINT_DELAY);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = listener.recv() => {
                        // One read serves every append committed so far.
                        listener.drain();
                        woken = true;
                        caught_up = false;
                    }
                    () = sleep_until_some(save_at) => {}
                    () = tokio::time::sleep(IDLE_POLL) => caught_up = false,
                }
                continue;
            };
            if let Err(error) = outcome {
                self.status.set_down();
                tracing::warn!(error = %error, retry_within = ?backoff.current(), "publishing failed; the relay resumes from its checkpoint");
                in_flight.clear();
                read_to = confirmed;
                caught_up = false;
                if let Some(failed) = publisher.take() {
                    failed.close().await;
                }
                if !backoff.wait(shutdown).await {
                    break;
                }
            }
        }
        if let Some(publisher) = publisher {
            publisher.close().await;
        }
        if unsaved_since.is_some() {
            leader.confirm(confirmed).await?;
        }
        leader.resign().await
    }

    /// How many events the next window may hold: at most a batch, within
    /// [`WINDOWS_IN_FLIGHT`] and [`FULL_WINDOWS_IN_FLIGHT`].
    fn budget(&self, in_flight: &VecDeque<Window>) -> i64 {
        if in_flight.len() >= WINDOWS_IN_FLIGHT {
            return 0;
        }
        let unconfirmed: u64 = in_flight.iter().map(|window| window.events).sum();
        let unconfirmed = i64::try_from(unconfirmed).unwrap_or(i64::MAX);
        (FULL_WINDOWS_IN_FLIGHT * self.batch_size - unconfirmed).clamp(0, self.batch_size)
    }

    /// Sets `relay_backlog_events` (head position less the checkpoint) and
    /// `relay_backlog_seconds` (age of the oldest unconfirmed event) after a read of
    /// the events after `read_to`: only a read that filled its limit (not `caught_up`)
    /// needs the head.
    async fn record_backlog(
        &self,
        leader: &mut OutboxLeader,
        (checkpoint, read_to): (i64, i64),
        oldest: Option<DateTime<Utc>>,
        read: &[RecordedEvent],
        caught_up: bool,
    ) -> Result<(), StoreError> {
        let head = match read.last() {
            Some(_) if !caught_up => leader.head().await?,
            Some(last) => last.position,
            None => read_to,
        };
        metrics::gauge!("relay_backlog_events").set((head - checkpoint).max(0) as f64);
        metrics::gauge!("relay_backlog_seconds").set(oldest.map_or(0.0, seconds_since));
        Ok(())
    }

    /// `operation`'s outcome, or [`PublishError::Stalled`] once the broker took longer
    /// than [`Relay::broker_timeout`].
    async fn within<T>(
        &self,
        what: &'static str,
        operation: impl Future<Output = Result<T, PublishError>>,
    ) -> Result<T, PublishError> {
        tokio::time::timeout(self.broker_timeout, operation)
            .await
            .unwrap_or(Err(PublishError::Stalled(what, self.broker_timeout)))
    }

    /// While idle, keeps the broker connection open (or retries it) so that
    /// readiness reports an outage even when nothing is being published.
    async fn keep_connected(&self, publisher: Option<Publisher>) -> Option<Publisher> {
        if let Some(connected) = publisher.filter(Publisher::is_connected) {
            return Some(connected);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT.min(self.broker_timeout), self.connect()).await {
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
pub(crate) fn seconds_since(since: DateTime<Utc>) -> f64 {
    (Utc::now() - since)
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

/// A published window of events whose confirms are still to come.
struct Window {
    /// When the oldest event of the window occurred.
    oldest: DateTime<Utc>,
    /// How many events it holds.
    events: u64,
    /// The broker's confirms of every event of the window: the position of the last one
    /// and how many there were, or the first refusal.
    settled: BoxFuture<'static, Result<(i64, u64), PublishError>>,
}

/// Waits for the broker to confirm each of `confirms`, in order.
async fn settle(
    confirms: Vec<(i64, DateTime<Utc>, PublisherConfirm)>,
) -> Result<(i64, u64), PublishError> {
    let confirmed = metrics::histogram!(PIPELINE, "stage" => "confirmed");
    let mut last = None;
    let count = confirms.len() as u64;
    for (position, occurred_at, confirm) in confirms {
        if !confirm.await?.is_ack() {
            return Err(PublishError::Nacked(position));
        }
        confirmed.record(seconds_since(occurred_at));
        last = Some(position);
    }
    last.map(|last| (last, count))
        .ok_or(PublishError::EmptyWindow)
}

/// Records in `event_pipeline_seconds` that `events` reached `stage`.
fn record_stage(stage: &'static str, events: &[RecordedEvent]) {
    let histogram = metrics::histogram!(PIPELINE, "stage" => stage);
    for event in events {
        histogram.record(seconds_since(event.occurred_at));
    }
}

impl Publisher {
    fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes a window of events; the broker's confirms are awaited through
    /// [`Window::settled`]. Every message is handed to the connection before any
    /// hand-over is awaited, in position order: a window costs lapin's I/O thread one
    /// wake-up, not one per message.
    async fn publish(
        &self,
        exchange: &str,
        events: &[RecordedEvent],
    ) -> Result<Window, PublishError> {
        let messages = events
            .iter()
            .map(|event| self.message(event))
            .collect::<Result<Vec<_>, _>>()?;
        let sends = messages
            .iter()
            .map(|(routing_key, body, properties)| {
                self.channel.basic_publish(
                    exchange.into(),
                    (*routing_key).into(),
                    BasicPublishOptions::default(),
                    body,
                    properties.clone(),
                )
            })
            .collect();
        let handed_over = in_order(sends).await;
        let published = metrics::histogram!(PIPELINE, "stage" => "published");
        let mut confirms = Vec::with_capacity(events.len());
        for (event, confirm) in events.iter().zip(handed_over) {
            published.record(seconds_since(event.occurred_at));
            confirms.push((event.position, event.occurred_at, confirm?));
        }
        Ok(Window {
            oldest: events.first().map_or_else(Utc::now, |e| e.occurred_at),
            events: events.len() as u64,
            settled: Box::pin(settle(confirms)),
        })
    }

    /// The routing key, body and properties of the message that carries `event`.
    fn message(
        &self,
        event: &RecordedEvent,
    ) -> Result<(&'static str, Vec<u8>, BasicProperties), PublishError> {
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
        Ok((routing_key, body, properties))
    }

    /// Closes the connection; a broker that does not answer the close within a second
    /// is left behind (the socket is dropped with the connection).
    async fn close(self) {
        let closing = self.connection.close(200, "relay reconnecting".into());
        let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
    }
}

/// The outputs of `futures`, which are polled in the order given every time: each
/// future's first poll runs before the next one's (a publish takes its place in the
/// connection's frame queue on its first poll).
async fn in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(context) {
                    Poll::Ready(done) => *output = Some(done),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
