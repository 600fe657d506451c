//! The broker path: consumes `account.*` and `transfer.*` events from the projection's
//! queues ([`crate::topology`]: by default the partitions, each with a single active
//! consumer across the replicas), projects them and acknowledges each message only
//! once its effect is committed.
//!
//! Only messages whose AMQP `user_id` is the publisher user (the command service's
//! relay; RabbitMQ refuses a `user_id` that is not the publishing connection's user)
//! are read at all; any other is dead-lettered unread as `untrusted_publisher`.
//!
//! Messages that can never be applied are rejected without requeue, so that the
//! queue dead-letters them to `{exchange}.dlx` (kept in the dead-letter queue). When
//! the read model or the command service is out (an outage), the messages stay
//! unacknowledged and are projected again in place after a growing pause, so that an
//! outage does not count against the broker's delivery limit. Other failures (maybe the
//! events' own) send the messages back to the queue after the pause: a message that
//! keeps failing is dead-lettered by a quorum queue after its delivery limit. A lost
//! connection is re-established with backoff; a topology the broker refuses stops the
//! service with what to do.
//!
//! Each queue has its own channel and loop. Batches are pipelined: the next batch is
//! projected while the previous one commits, unless the two share a stream; batches are
//! settled in delivery order. At most [`BATCHES_PROJECTING`] batches of all queues are
//! projected at once.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use service_kit::amqp::BrokerStatus;
use service_kit::backoff::Backoff;
use shared_events::EventEnvelope;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use uuid::Uuid;

use crate::projection::plan::{Candidate, Origin, Stream, Verdict};
use crate::projection::stages::{self, Stage};
use crate::projection::{ProjectionError, Projector};
use crate::topology::{Topology, TopologyError, watch_dead_letters};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Batches projected at the same time across all the queues of a replica. Two (what
/// the one shared queue's pipeline had) left the eight partitions' small batches queueing
/// for a slot: 40 ms of the lag at 10 % of peak (`bench/run.sh --quick`). Six leave the
/// read model's pool (10 connections by default) room for the reads.
const BATCHES_PROJECTING: usize = 6;

#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("the broker cancelled the consumer of {0}")]
    Cancelled(String),
}

/// The broker refused the projection's topology: the service cannot consume as
/// configured, and says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct TopologyRefused(String);

/// How the consumer connects and consumes.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSettings {
    pub(crate) amqp_url: String,
    pub(crate) topology: Topology,
    /// Unacknowledged messages per queue (also the largest batch).
    pub(crate) prefetch: u16,
    /// The only broker user whose messages are applied.
    pub(crate) publisher: String,
    /// How often the dead-letter queue's depth is read.
    pub(crate) dead_letter_poll: Duration,
}

/// Consumes the projection's queues until shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    projector: Projector,
    settings: ConsumerSettings,
    status: BrokerStatus,
    projecting: Arc<Semaphore>,
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

/// Messages of streams whose projection failed for an outage: still unacknowledged,
/// to be projected again.
type Held = BTreeMap<Stream, Vec<Received>>;

impl Consumer {
    /// A consumer of the topology's queues that projects with `projector` the messages
    /// the publisher sent, and reports its connection state in `status`.
    pub(crate) fn new(
        projector: Projector,
        settings: ConsumerSettings,
        status: BrokerStatus,
    ) -> Self {
        Self {
            projector,
            settings: ConsumerSettings {
                prefetch: settings.prefetch.max(1),
                ..settings
            },
            status,
            projecting: Arc::new(Semaphore::new(BATCHES_PROJECTING)),
        }
    }

    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker goes
    /// away; returns early when the broker refuses the topology.
    pub(crate) async fn run(self, shutdown: CancellationToken) -> Result<(), TopologyRefused> {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        while !shutdown.is_cancelled() {
            match self.consume(&shutdown, &mut backoff).await {
                Ok(()) => break,
                Err(ConsumeError::Topology(TopologyError::Refused(reason))) => {
                    self.status.set_down();
                    metrics::gauge!("amqp_consumer_connected").set(0.0);
                    tracing::error!(%reason, "the broker refused the projection's topology");
                    return Err(TopologyRefused(reason));
                }
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
        Ok(())
    }

    /// One connection: declares the topology, consumes every queue on a channel of
    /// its own and watches the dead letters, until `shutdown` or the first failure.
    async fn consume(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), ConsumeError> {
        let connection =
            service_kit::amqp::connect(&self.settings.amqp_url, "query-service projection").await?;
        let topology = &self.settings.topology;
        topology.declare(&connection).await?;
        let mut consumers = Vec::with_capacity(topology.queues.len());
        for (queue, arguments) in subscriptions(topology) {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.settings.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    arguments,
                )
                .await?;
            consumers.push((queue, channel, consumer));
        }
        self.status.set_up();
        metrics::gauge!("amqp_consumer_connected").set(1.0);
        backoff.reset();
        tracing::info!(queues = consumers.len(), first = %topology.queues.first().map_or("", String::as_str), "projection consumer connected");
        // The first queue that fails stops the others (they finish their batches).
        let stop = shutdown.child_token();
        let loops = consumers.into_iter().map(|(queue, channel, consumer)| {
            let stop = stop.clone();
            async move {
                let outcome = self.consume_queue(&queue, consumer, &stop).await;
                if outcome.is_err() {
                    stop.cancel();
                }
                // Unacknowledged prefetched messages go back to the queue with the channel.
                let _ = channel.close(200, "query service stopping".into()).await;
                outcome
            }
        });
        let watching = watch_dead_letters(
            &connection,
            &topology.dead_letter_queue,
            self.settings.dead_letter_poll,
            &stop,
        );
        let (outcomes, ()) = futures::join!(futures::future::join_all(loops), watching);
        let _ = connection.close(200, "query service stopping".into()).await;
        outcomes.into_iter().collect()
    }

    /// Consumes one queue until `stop` (then settles what is in flight) or a failure.
    async fn consume_queue(
        &self,
        queue: &str,
        mut consumer: lapin::Consumer,
        stop: &CancellationToken,
    ) -> Result<(), ConsumeError> {
        let mut retry = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        // At most two batches in flight: the next one is projected while the previous
        // one commits, unless they share a stream (then it waits its turn, so each
        // stream's events stay in order). Batches are settled in delivery order.
        let mut previous: Option<InFlight> = None;
        let outcome = loop {
            let next = match previous.as_mut() {
                Some(earlier) => tokio::select! {
                    biased;
                    () = stop.cancelled() => break Ok(()),
                    joined = &mut earlier.projecting => Next::Projected(joined),
                    next = consumer.next() => Next::Message(Box::new(next)),
                },
                None => tokio::select! {
                    () = stop.cancelled() => break Ok(()),
                    next = consumer.next() => Next::Message(Box::new(next)),
                },
            };
            let next = match next {
                Next::Message(next) => *next,
                Next::Projected(joined) => {
                    if let Some(earlier) = previous.take() {
                        match self
                            .settle_joined(earlier.accounts, joined, &mut retry, stop)
                            .await
                        {
                            Ok(Some(held)) => previous = Some(self.start(held, None)),
                            Ok(None) => {}
                            Err(error) => break Err(error.into()),
                        }
                    }
                    continue;
                }
            };
            let mut batch = match next {
                Some(Ok(delivery)) => vec![delivery],
                Some(Err(error)) => break Err(error.into()),
                None => break Err(ConsumeError::Cancelled(queue.to_owned())),
            };
            // The batch takes what arrived while it waited for its turn to project: the
            // busier the read model, the bigger (and fewer) the transactions.
            let mut permit = tokio::select! {
                () = stop.cancelled() => break Ok(()),
                permit = Arc::clone(&self.projecting).acquire_owned() => permit.ok(),
            };
            while batch.len() < usize::from(self.settings.prefetch) {
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
            if let Some(earlier) = previous.take_if(|earlier| earlier.shares_a_stream(&accounts)) {
                // The earlier batch may have to wait for a permit to be projected again.
                permit = None;
                if let Err(error) = self.settle(earlier, &mut retry, stop).await {
                    break Err(error.into());
                }
            }
            let started = self.start(accounts, permit);
            if let Some(earlier) = previous.replace(started)
                && let Err(error) = self.settle(earlier, &mut retry, stop).await
            {
                break Err(error.into());
            }
        };
        match previous {
            Some(last) => match self.settle(last, &mut retry, stop).await {
                Ok(()) => outcome,
                Err(error) => Err(error.into()),
            },
            None => outcome,
        }
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
            if let Some(reason) = untrusted(&delivery, &self.settings.publisher) {
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

    /// Starts projecting the messages of a batch, each stream's in one go, once it has
    /// a `permit` (taken here when none is given).
    fn start(
        &self,
        accounts: BTreeMap<Stream, Vec<Received>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> InFlight {
        let groups: Vec<(Stream, Vec<Candidate>)> = accounts
            .iter()
            .map(|(account, received)| {
                let candidates = received.iter().map(|r| r.candidate.clone()).collect();
                (*account, candidates)
            })
            .collect();
        let projector = self.projector.clone();
        let permits = Arc::clone(&self.projecting);
        let projecting = AbortOnDropHandle::new(tokio::spawn(async move {
            // A closed semaphore (never closed) would only lift the bound.
            let _permit = match permit {
                Some(permit) => Some(permit),
                None => permits.acquire_owned().await.ok(),
            };
            projector.project_deliveries(&groups, "broker").await
        }));
        InFlight {
            accounts,
            projecting,
        }
    }

    /// Waits for a batch's projection, then settles every message of it; the streams
    /// held for an outage are projected again, until they settle or `shutdown`.
    async fn settle(
        &self,
        mut batch: InFlight,
        retry: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        loop {
            let joined = (&mut batch.projecting).await;
            match self
                .settle_joined(batch.accounts, joined, retry, shutdown)
                .await?
            {
                Some(held) => batch = self.start(held, None),
                None => return Ok(()),
            }
        }
    }

    /// Settles every message of a batch whose projection ended. Streams that failed
    /// for an outage are returned, after a pause, to be projected again (`None` once
    /// stopping: their messages go back to the queue with the channel); those that
    /// failed otherwise go back to the queue after the pause.
    async fn settle_joined(
        &self,
        accounts: BTreeMap<Stream, Vec<Received>>,
        joined: Result<Vec<Result<Vec<Verdict>, ProjectionError>>, tokio::task::JoinError>,
        retry: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<Option<Held>, lapin::Error> {
        let results = match joined {
            Ok(results) => results,
            Err(error) => accounts
                .keys()
                .map(|_| Err(ProjectionError::Stopped(error.to_string())))
                .collect(),
        };
        let mut settled = Vec::new();
        let mut requeued = Vec::new();
        let mut held = Held::new();
        let mut failure = None;
        for ((stream, received), verdicts) in accounts.into_iter().zip(results) {
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
                Err(error) if error.is_outage() => {
                    held.insert(stream, received);
                    failure = Some(error);
                }
                Err(error) => {
                    requeued.extend(received.into_iter().map(|r| r.delivery));
                    failure = Some(error);
                }
            }
        }
        acknowledge(settled, requeued.is_empty() && held.is_empty()).await?;
        let Some(error) = failure else {
            retry.reset();
            return Ok(None);
        };
        let held_messages: usize = held.values().map(Vec::len).sum();
        metrics::counter!("projection_retries_total")
            .increment((requeued.len() + held_messages) as u64);
        tracing::warn!(
            error = %error,
            requeued = requeued.len(),
            held = held_messages,
            retry_in = ?retry.current(),
            "projection failed; the messages are projected again after a pause (held when the read model or the command service is out, else back to the queue)"
        );
        let going_on = retry.wait(shutdown).await;
        // Shut down or not, these messages go back to the queue.
        for delivery in requeued {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await?;
        }
        Ok((going_on && !held.is_empty()).then_some(held))
    }
}

/// The queues to consume, each with its consumer's arguments, in this replica's order.
///
/// Partitions are subscribed in a random order, each with a random consumer priority
/// (`x-priority`): a broker whose quorum queues weigh priorities in the choice of the
/// single active consumer (RabbitMQ 4.0 and later) then spreads the partitions over the
/// replicas, a newcomer taking over those where it ranks first once their messages in
/// flight are settled (order is kept). Older brokers make the first subscriber active;
/// the random order spreads replicas that subscribe at the same time.
fn subscriptions(topology: &Topology) -> Vec<(String, FieldTable)> {
    use rand::Rng as _;
    use rand::seq::SliceRandom as _;
    let mut rng = rand::rng();
    let mut queues = topology.queues.clone();
    if topology.partition_exchange.is_none() {
        return queues
            .into_iter()
            .map(|queue| (queue, FieldTable::default()))
            .collect();
    }
    queues.shuffle(&mut rng);
    queues
        .into_iter()
        .map(|queue| {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-priority".into(),
                AMQPValue::LongInt(rng.random_range(1..=1_000)),
            );
            (queue, arguments)
        })
        .collect()
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
