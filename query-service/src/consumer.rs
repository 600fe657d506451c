//! The broker path: consumes `account.*` and `transfer.*` events from the projection's
//! durable queue, projects them and acknowledges each message only once its effect is
//! committed.
//!
//! Only messages whose AMQP `user_id` is the publisher user (the command service's
//! relay; RabbitMQ refuses a `user_id` that is not the publishing connection's user)
//! are read at all; any other is dead-lettered unread as `untrusted_publisher`.
//!
//! Messages that can never be applied are rejected without requeue, so that the
//! queue dead-letters them to `{exchange}.dlx` (kept in `{exchange}.dlq`). Failures
//! of the read model or of the command service are retried: the messages go back to
//! the queue after a growing pause. A lost connection is re-established with backoff.
//!
//! Batches are pipelined: the next batch is projected while the previous one commits,
//! unless the two share a stream; batches are settled in delivery order.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use service_kit::amqp::BrokerStatus;
use service_kit::backoff::Backoff;
use shared_events::EventEnvelope;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use uuid::Uuid;

use crate::projection::plan::{Candidate, Origin, Stream, Verdict};
use crate::projection::stages::{self, Stage};
use crate::projection::{ProjectionError, Projector};
use crate::settings::Settings;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest name RabbitMQ accepts for an exchange or a queue.
const MAX_NAME_BYTES: usize = 255;
/// The routing keys the projection queue is bound to: accounts' and transfers' events.
const PROJECTED_ROUTING_KEYS: [&str; 2] = ["account.*", "transfer.*"];

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the consumer")]
    Cancelled,
}

/// Names of the broker objects the consumer declares.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    pub(crate) exchange: String,
    pub(crate) queue: String,
    pub(crate) dead_letter_exchange: String,
    pub(crate) dead_letter_queue: String,
}

impl Topology {
    /// The names configured in `settings`; refused when the broker could not take them.
    pub(crate) fn from_settings(settings: &Settings) -> Result<Self, String> {
        let topology = Self {
            exchange: settings.amqp_exchange.clone(),
            queue: settings.amqp_queue.clone(),
            dead_letter_exchange: settings.dead_letter_exchange(),
            dead_letter_queue: settings.dead_letter_queue(),
        };
        for name in [
            &topology.exchange,
            &topology.queue,
            &topology.dead_letter_exchange,
            &topology.dead_letter_queue,
        ] {
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "broker object names must be 1 to {MAX_NAME_BYTES} bytes (got {name:?})"
                ));
            }
        }
        Ok(topology)
    }

    /// Declares the events exchange, the projection queue (dead-lettering to the DLX,
    /// bound to `account.*` and `transfer.*`) and the dead-letter exchange and queue,
    /// all durable.
    pub(crate) async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable_exchange = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        service_kit::amqp::declare_events_exchange(channel, &self.exchange).await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange.as_str().into(),
                ExchangeKind::Fanout,
                durable_exchange,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable_queue,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue.as_str().into(),
                self.dead_letter_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(self.dead_letter_exchange.as_str())),
        );
        channel
            .queue_declare(self.queue.as_str().into(), durable_queue, arguments)
            .await?;
        for routing_key in PROJECTED_ROUTING_KEYS {
            channel
                .queue_bind(
                    self.queue.as_str().into(),
                    self.exchange.as_str().into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }
}

/// Consumes the projection queue until shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    projector: Projector,
    amqp_url: String,
    topology: Topology,
    prefetch: u16,
    /// The only broker user whose messages are applied.
    publisher: String,
    status: BrokerStatus,
}

/// What the consumer waits for: a message, or the end of the batch in flight.
enum Next {
    Message(Box<Option<Result<Delivery, lapin::Error>>>),
    Projected(Result<Vec<Result<Vec<Verdict>, ProjectionError>>, tokio::task::JoinError>),
}

/// A batch being projected, with its messages by stream.
struct InFlight {
    accounts: BTreeMap<Stream, Vec<Received>>,
    projecting: AbortOnDropHandle<Vec<Result<Vec<Verdict>, ProjectionError>>>,
}

impl InFlight {
    /// Whether it holds messages of any stream of `streams` (of any kind: an id is
    /// one stream's only).
    fn shares_a_stream(&self, streams: &BTreeMap<Stream, Vec<Received>>) -> bool {
        let ids: HashSet<Uuid> = self.accounts.keys().map(|stream| stream.id).collect();
        streams.keys().any(|stream| ids.contains(&stream.id))
    }
}

/// A received message that decodes, waiting for its verdict.
struct Received {
    delivery: Delivery,
    candidate: Candidate,
    span: tracing::Span,
}

impl Consumer {
    /// A consumer of `topology.queue` that projects with `projector` the messages
    /// `publisher` sent, and reports its connection state in `status`.
    pub(crate) fn new(
        projector: Projector,
        amqp_url: &str,
        topology: Topology,
        prefetch: u16,
        publisher: String,
        status: BrokerStatus,
    ) -> Self {
        Self {
            projector,
            amqp_url: amqp_url.to_owned(),
            topology,
            prefetch: prefetch.max(1),
            publisher,
            status,
        }
    }

    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker goes away.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        while !shutdown.is_cancelled() {
            match self.consume(&shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(error) => {
                    self.status.set_down();
                    metrics::gauge!("amqp_consumer_connected").set(0.0);
                    metrics::counter!("amqp_consumer_failures_total").increment(1);
                    tracing::warn!(error = %error, retry_in = ?backoff.current(), "projection consumer lost the broker");
                    if !backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("projection consumer stopped");
    }

    async fn consume(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), ConsumeError> {
        let connection =
            service_kit::amqp::connect(&self.amqp_url, "query-service projection").await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.status.set_up();
        metrics::gauge!("amqp_consumer_connected").set(1.0);
        backoff.reset();
        tracing::info!(queue = %self.topology.queue, "projection consumer connected");
        let mut retry = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        // At most two batches in flight: the next one is projected while the previous
        // one commits, unless they share a stream (then it waits its turn, so each
        // stream's events stay in order). Batches are settled in delivery order.
        let mut previous: Option<InFlight> = None;
        let outcome = loop {
            let next = match previous.as_mut() {
                Some(earlier) => tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break Ok(()),
                    joined = &mut earlier.projecting => Next::Projected(joined),
                    next = consumer.next() => Next::Message(Box::new(next)),
                },
                None => tokio::select! {
                    () = shutdown.cancelled() => break Ok(()),
                    next = consumer.next() => Next::Message(Box::new(next)),
                },
            };
            let next = match next {
                Next::Message(next) => *next,
                Next::Projected(joined) => {
                    if let Some(earlier) = previous.take()
                        && let Err(error) = self
                            .settle_joined(earlier.accounts, joined, &mut retry, shutdown)
                            .await
                    {
                        break Err(error.into());
                    }
                    continue;
                }
            };
            let mut batch = match next {
                Some(Ok(delivery)) => vec![delivery],
                Some(Err(error)) => break Err(error.into()),
                None => break Err(ConsumeError::Cancelled),
            };
            while batch.len() < usize::from(self.prefetch) {
                match consumer.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    _ => break,
                }
            }
            metrics::histogram!("projection_batch_size").record(batch.len() as f64);
            let accounts = match self.sort(batch).await {
                Ok(accounts) => accounts,
                Err(error) => break Err(error.into()),
            };
            if accounts.is_empty() {
                continue;
            }
            if let Some(earlier) = previous.take_if(|earlier| earlier.shares_a_stream(&accounts))
                && let Err(error) = self.settle(earlier, &mut retry, shutdown).await
            {
                break Err(error.into());
            }
            let started = self.start(accounts);
            if let Some(earlier) = previous.replace(started)
                && let Err(error) = self.settle(earlier, &mut retry, shutdown).await
            {
                break Err(error.into());
            }
        };
        let outcome = match previous {
            Some(last) => match self.settle(last, &mut retry, shutdown).await {
                Ok(()) => outcome,
                Err(error) => Err(error.into()),
            },
            None => outcome,
        };
        // Unacknowledged prefetched messages go back to the queue with the channel.
        let _ = channel.close(200, "query service stopping".into()).await;
        let _ = connection.close(200, "query service stopping".into()).await;
        outcome
    }

    /// Sorts a batch's messages by stream, dead-lettering those that are not from
    /// the publisher or cannot be read.
    async fn sort(
        &self,
        batch: Vec<Delivery>,
    ) -> Result<BTreeMap<Stream, Vec<Received>>, lapin::Error> {
        let mut accounts: BTreeMap<Stream, Vec<Received>> = BTreeMap::new();
        let received_at = Utc::now();
        for delivery in batch {
            if let Some(reason) = untrusted(&delivery, &self.publisher) {
                dead_letter(&delivery, "untrusted_publisher", &reason).await?;
                continue;
            }
            match parse(&delivery) {
                Ok((candidate, span)) => {
                    accounts
                        .entry(candidate.stream())
                        .or_default()
                        .push(Received {
                            delivery,
                            candidate,
                            span,
                        })
                }
                Err((reason, span)) => {
                    dead_letter(&delivery, "unreadable", &reason)
                        .instrument(span)
                        .await?;
                }
            }
        }
        stages::record(
            Stage::Delivered,
            received_at,
            accounts
                .values()
                .flatten()
                .map(|r| r.candidate.envelope.occurred_at),
        );
        Ok(accounts)
    }

    /// Starts projecting the messages of a batch, each stream's in one go.
    fn start(&self, accounts: BTreeMap<Stream, Vec<Received>>) -> InFlight {
        let groups: Vec<(Stream, Vec<Candidate>)> = accounts
            .iter()
            .map(|(account, received)| {
                let candidates = received.iter().map(|r| r.candidate.clone()).collect();
                (*account, candidates)
            })
            .collect();
        let projector = self.projector.clone();
        let projecting = AbortOnDropHandle::new(tokio::spawn(async move {
            projector.project_deliveries(&groups, "broker").await
        }));
        InFlight {
            accounts,
            projecting,
        }
    }

    /// Waits for a batch's projection, then settles every message of it.
    async fn settle(
        &self,
        batch: InFlight,
        retry: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        let joined = batch.projecting.await;
        self.settle_joined(batch.accounts, joined, retry, shutdown)
            .await
    }

    /// Settles every message of a batch whose projection ended.
    async fn settle_joined(
        &self,
        accounts: BTreeMap<Stream, Vec<Received>>,
        joined: Result<Vec<Result<Vec<Verdict>, ProjectionError>>, tokio::task::JoinError>,
        retry: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        let results = match joined {
            Ok(results) => results,
            Err(error) => accounts
                .keys()
                .map(|_| Err(ProjectionError::Stopped(error.to_string())))
                .collect(),
        };
        let mut settled = Vec::new();
        let mut later = Vec::new();
        let mut failure = None;
        for (received, verdicts) in accounts.into_values().zip(results) {
            match verdicts {
                Ok(verdicts) => {
                    for (message, verdict) in received.into_iter().zip(verdicts) {
                        let Received { delivery, span, .. } = message;
                        match verdict {
                            Verdict::Applied => settled.push(delivery),
                            Verdict::Duplicate => {
                                span.in_scope(|| tracing::debug!("duplicate skipped"));
                                settled.push(delivery);
                            }
                            Verdict::Conflict(reason) => {
                                dead_letter(&delivery, "conflicting_event", &reason)
                                    .instrument(span)
                                    .await?;
                            }
                            Verdict::Poison(reason) => {
                                dead_letter(&delivery, "unprojectable", &reason)
                                    .instrument(span)
                                    .await?;
                            }
                        }
                    }
                }
                Err(error) => {
                    later.extend(received.into_iter().map(|r| r.delivery));
                    failure = Some(error);
                }
            }
        }
        acknowledge(settled, later.is_empty()).await?;
        let Some(error) = failure else {
            retry.reset();
            return Ok(());
        };
        metrics::counter!("projection_retries_total").increment(later.len() as u64);
        tracing::warn!(error = %error, messages = later.len(), retry_in = ?retry.current(), "projection failed; the messages go back to the queue");
        // Shut down or not, the messages go back to the queue.
        retry.wait(shutdown).await;
        for delivery in later {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
        Ok(())
    }
}

/// Acknowledges messages whose effect is committed. When no other message of the
/// batch is left unsettled (`alone`: the others are already rejected; earlier batches
/// are settled, and a later one's messages have higher delivery tags), one
/// `multiple` ack covers them all.
async fn acknowledge(mut settled: Vec<Delivery>, alone: bool) -> Result<(), lapin::Error> {
    settled.sort_by_key(|delivery| delivery.delivery_tag);
    if alone && let Some(last) = settled.last() {
        last.ack(BasicAckOptions { multiple: true }).await?;
        return Ok(());
    }
    for delivery in settled {
        delivery.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// Why a message does not come from `publisher`, if it does not: its `user_id`
/// (which the broker guarantees is the publishing connection's user) is missing or
/// names someone else.
fn untrusted(delivery: &Delivery, publisher: &str) -> Option<String> {
    match delivery.properties.user_id() {
        Some(user) if user.as_str() == publisher => None,
        Some(user) => Some(format!(
            "published by broker user {:?}, not by the publisher {publisher:?}",
            user.as_str()
        )),
        None => Some(format!(
            "the message has no user_id; only the publisher {publisher:?} is trusted"
        )),
    }
}

/// Reads a message into a candidate, within a span carrying its correlation id.
fn parse(delivery: &Delivery) -> Result<(Candidate, tracing::Span), (String, tracing::Span)> {
    let header = delivery.properties.headers().as_ref().and_then(|headers| {
        match headers.inner().get("correlation_id") {
            Some(AMQPValue::LongString(value)) => {
                Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(value)) => Some(value.to_string()),
            _ => None,
        }
    });
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let envelope = match serde_json::from_slice::<EventEnvelope>(&delivery.data) {
        Ok(envelope) => envelope,
        Err(error) => {
            let span = tracing::info_span!(
                "message",
                message_id,
                correlation_id = header.unwrap_or_default()
            );
            return Err((format!("not an event envelope: {error}"), span));
        }
    };
    let correlation_id = header
        .or_else(|| envelope.metadata.correlation_id.clone())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "message",
        event_id = %envelope.event_id,
        account = %envelope.account_id,
        version = envelope.version,
        correlation_id,
    );
    match Candidate::decode(envelope, Origin::Delivered) {
        Ok(candidate) => Ok((candidate, span)),
        Err(reason) => Err((reason, span)),
    }
}

/// Rejects a message for good (the queue dead-letters it), logging why once.
async fn dead_letter(
    delivery: &Delivery,
    kind: &'static str,
    reason: &str,
) -> Result<(), lapin::Error> {
    tracing::warn!(
        routing_key = %delivery.routing_key,
        %reason,
        "rejected a message that can never be projected; it goes to the dead-letter queue"
    );
    metrics::counter!("projection_dead_lettered_total", "reason" => kind).increment(1);
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .map(|_| ())
}
