//! The transfer process: drives every requested transfer to its end, across crashes
//! and restarts. One process leads across all replicas (a session advisory lock);
//! the others stand by.
//!
//! Woken by every commit that requests a transfer (a notification; a poll every second
//! covers one missed while the process reconnects), the leader reads the
//! transfer requests after the last one it saw and drives each in a task of its own:
//! debit the source, then credit the destination, or refund the source when the
//! destination refuses, recording each outcome in the transfer's stream (a leg taken
//! is recorded in the leg's own transaction). Every leg is
//! an account command with a deterministic identity: its idempotency key
//! (`transfer:<id>:<kind>`) and its event id ([`TransferLeg::event_id`]), so a leg
//! repeated after a crash is recognised instead of applied again. The checkpoint
//! stays before the oldest transfer not yet ended, so a new leader resumes every one.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use event_store::{Append, EventStore, StoreError, StreamAppend, TransferProcessLeader};
use service_kit::backoff::Backoff;
use shared_events::{LegKind, TransferId};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::application::{
    CommandContext, CommandHandler, IdempotencyKey, Reply, TransferRecord, load_transfer,
    transfer_events,
};
use crate::domain::transfer::{Step, Transfer, TransferCommand, decide, evolve};
use crate::domain::{AccountCommand, Requester};
use crate::error::CommandError;

/// How often a standby process tries to take the lead, and the longest wait for a
/// wake-up before looking for requests anyway.
const STANDBY_RETRY: Duration = Duration::from_secs(2);
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Transfers driven at once; the others wait their turn.
const MAX_DRIVEN: usize = 64;
/// Requests read at once.
const READ_LIMIT: i64 = 1_000;
/// The pause before trying a step again after the store failed.
const STEP_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
/// How long a leg may take before it is tried again.
const LEG_TIMEOUT: Duration = Duration::from_secs(10);
/// Who the legs' events record as their client.
const PROCESS_CLIENT: &str = "transfer-process";

/// Drives transfers to their end. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct TransferProcess {
    pub(crate) store: EventStore,
    pub(crate) handler: CommandHandler,
}

/// What a leg came to.
enum LegOutcome {
    /// Taken and recorded: the transfer after it (`None`: load it again).
    Taken(Option<TransferRecord>),
    /// Refused by the account, with the contract's code.
    Refused(String),
}

impl TransferProcess {
    /// Runs until `shutdown`: waits for the lead, then drives transfers.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.store.try_lead_transfers().await {
                Ok(Some(leader)) => {
                    tracing::info!("transfer process is leading");
                    metrics::gauge!("transfer_process_leading").set(1.0);
                    if let Err(error) = self.lead(leader, &shutdown).await {
                        tracing::warn!(error = %error, "transfer process lost its database connection; re-electing");
                    }
                    metrics::gauge!("transfer_process_leading").set(0.0);
                    metrics::gauge!("transfers_in_progress").set(0.0);
                    metrics::gauge!("transfers_oldest_open_seconds").set(0.0);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "transfer process cannot reach the database")
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
        mut leader: TransferProcessLeader,
        shutdown: &CancellationToken,
    ) -> Result<(), StoreError> {
        let mut listener = self.store.listen_transfer_requests().await?;
        let mut saved = leader.checkpoint().await?;
        let mut read_to = saved;
        // Transfers seen and not known to have ended, by the position of their request,
        // with when this process first saw them.
        let mut open: BTreeMap<i64, (Uuid, Instant)> = BTreeMap::new();
        let mut waiting: VecDeque<(i64, Uuid)> = VecDeque::new();
        // Each task answers with its transfer's position and whether it ended.
        let mut driven: JoinSet<(i64, bool)> = JoinSet::new();
        let stop = shutdown.child_token();
        // Whether requests may have arrived since the last read: a wake-up, the poll, or
        // a full read. A task that ended does not make the process look again.
        let mut look = true;
        let mut poll_at = Instant::now() + IDLE_POLL;
        let outcome = loop {
            if shutdown.is_cancelled() {
                break Ok(());
            }
            let requests = if look {
                poll_at = Instant::now() + IDLE_POLL;
                match leader.requests_after(read_to, READ_LIMIT).await {
                    Ok(requests) => requests,
                    Err(error) => break Err(error),
                }
            } else {
                Vec::new()
            };
            let full = i64::try_from(requests.len()).unwrap_or(i64::MAX) >= READ_LIMIT;
            look = full;
            for request in requests {
                read_to = request.position;
                open.insert(request.position, (request.transfer_id, Instant::now()));
                waiting.push_back((request.position, request.transfer_id));
            }
            while driven.len() < MAX_DRIVEN
                && let Some((position, id)) = waiting.pop_front()
            {
                let process = self.clone();
                let stop = stop.clone();
                driven.spawn(async move {
                    let ended = process.drive(TransferId::from(id), &stop).await;
                    (position, ended)
                });
            }
            let checkpoint = open.keys().next().map_or(read_to, |oldest| oldest - 1);
            if checkpoint > saved {
                if let Err(error) = leader.save_checkpoint(checkpoint).await {
                    break Err(error);
                }
                saved = checkpoint;
            }
            metrics::gauge!("transfers_in_progress").set(open.len() as f64);
            let oldest = open.values().map(|(_, seen)| seen.elapsed()).max();
            metrics::gauge!("transfers_oldest_open_seconds")
                .set(oldest.map_or(0.0, |age| age.as_secs_f64()));
            if full && driven.len() < MAX_DRIVEN {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                Some(first) = driven.join_next() => {
                    let mut finished = vec![first];
                    while let Some(next) = driven.try_join_next() {
                        finished.push(next);
                    }
                    for (position, ended) in finished.into_iter().flatten() {
                        if ended {
                            open.remove(&position);
                        }
                    }
                }
                notification = listener.recv() => {
                    if let Err(error) = notification {
                        break Err(error.into());
                    }
                    while listener.next_buffered().is_some() {}
                    look = true;
                }
                () = tokio::time::sleep_until(poll_at) => look = true,
            }
        };
        stop.cancel();
        while driven.join_next().await.is_some() {}
        outcome
    }

    /// Drives one transfer until it ends (true) or the process stops (false): step
    /// after step, each retried after a pause while the store or an account fails.
    async fn drive(&self, id: TransferId, stop: &CancellationToken) -> bool {
        let mut backoff = STEP_BACKOFF;
        // The transfer as this task last recorded it: then nobody else took its next
        // leg (it follows the outcome this task just recorded), so the leg is not
        // looked for in the store first.
        let mut current: Option<TransferRecord> = None;
        while !stop.is_cancelled() {
            let recorded_here = current.is_some();
            let record = match current.take() {
                Some(record) => record,
                None => match load_transfer(&self.store, id).await {
                    Ok(Some(record)) => record,
                    Ok(None) => {
                        tracing::error!(transfer_id = %id, "a requested transfer has no stream");
                        return true;
                    }
                    Err(error) => {
                        tracing::warn!(transfer_id = %id, error = %error, "cannot load transfer");
                        pause(&mut backoff, stop).await;
                        continue;
                    }
                },
            };
            let Some(step) = record.transfer.next_step() else {
                return true;
            };
            match self.step(&record, step, !recorded_here).await {
                Ok(next) => {
                    backoff = STEP_BACKOFF;
                    current = next;
                }
                Err(error) => {
                    tracing::warn!(transfer_id = %id, error = %error, "transfer step failed; retrying");
                    pause(&mut backoff, stop).await;
                }
            }
        }
        false
    }

    /// Runs one step and records its outcome; returns the transfer after it (`None`
    /// when it must be loaded again: another writer recorded first).
    /// `resumed`: the transfer was loaded from the store, so its next leg may have been
    /// taken by an earlier attempt whose outcome was not recorded.
    async fn step(
        &self,
        record: &TransferRecord,
        step: Step,
        resumed: bool,
    ) -> Result<Option<TransferRecord>, CommandError> {
        let transfer = &record.transfer;
        match step {
            Step::DebitSource => {
                let debit = TransferCommand::RecordDebit;
                match self
                    .leg(record, LegKind::TransferOut, debit, resumed)
                    .await?
                {
                    LegOutcome::Taken(after) => Ok(after),
                    LegOutcome::Refused(code) => {
                        self.record(record, &TransferCommand::RecordDebitRefused { code })
                            .await
                    }
                }
            }
            Step::CreditDestination if resumed && self.refunded(transfer).await? => {
                let code = self.credit_refusal(transfer).await?;
                self.record(record, &TransferCommand::RecordRefund { code })
                    .await
            }
            Step::CreditDestination => {
                let credit = TransferCommand::RecordCredit;
                match self
                    .leg(record, LegKind::TransferIn, credit, resumed)
                    .await?
                {
                    LegOutcome::Taken(after) => Ok(after),
                    LegOutcome::Refused(code) => {
                        let refund = TransferCommand::RecordRefund { code };
                        match self
                            .leg(record, LegKind::TransferRefund, refund, resumed)
                            .await?
                        {
                            LegOutcome::Taken(after) => Ok(after),
                            LegOutcome::Refused(refusal) => Err(CommandError::Unavailable(
                                format!("the source refused the refund ({refusal})"),
                            )),
                        }
                    }
                }
            }
        }
    }

    /// Runs a leg once, recording `then` in the same transaction when it is taken: a
    /// leg whose event is already in the store was taken (looked for when `resumed`;
    /// otherwise its idempotency key still recognises a repeat), and is recorded on
    /// its own.
    async fn leg(
        &self,
        record: &TransferRecord,
        kind: LegKind,
        then: TransferCommand,
        resumed: bool,
    ) -> Result<LegOutcome, CommandError> {
        let transfer = &record.transfer;
        let leg = transfer.leg(kind);
        let recording = self.recording(record, &then)?;
        if resumed && self.store.event_exists(leg.event_id()).await? {
            return Ok(LegOutcome::Taken(
                self.append_alone(recording, &then).await?,
            ));
        }
        let account = match kind {
            LegKind::TransferOut | LegKind::TransferRefund => transfer.from,
            LegKind::TransferIn => transfer.to,
        };
        let key = leg_key(transfer, kind);
        let context = CommandContext {
            idempotency: Some(IdempotencyKey {
                key: key.clone(),
                client_key: key,
                fingerprint: b"transfer-leg".to_vec(),
            }),
            ..process_context(transfer)
        };
        let command = AccountCommand::Leg {
            leg,
            amount: transfer.amount,
        };
        let companion = recording.as_ref().map(|recording| recording.append.clone());
        let taken = match self
            .handler
            .execute_with(account, command, context, companion)
            .await
        {
            Ok(Reply::Accepted(accepted)) => accepted.companion_appended,
            Ok(Reply::Replayed(stored)) if stored.status < 300 => false,
            Ok(Reply::Replayed(stored)) => {
                return Ok(LegOutcome::Refused(
                    stored.body["code"]
                        .as_str()
                        .unwrap_or("invalid_state")
                        .to_owned(),
                ));
            }
            Err(CommandError::Domain(refusal)) => {
                return Ok(LegOutcome::Refused(refusal.code().as_str().to_owned()));
            }
            Err(error) => return Err(error),
        };
        match recording {
            Some(recording) if taken => {
                count_step(&then);
                Ok(LegOutcome::Taken(recording.after))
            }
            recording => Ok(LegOutcome::Taken(
                self.append_alone(recording, &then).await?,
            )),
        }
    }

    /// Whether the source was refunded already (an earlier attempt refunded it after the
    /// destination refused, and stopped before recording it): the credit is then never
    /// tried again, whatever the destination would say now.
    async fn refunded(&self, transfer: &Transfer) -> Result<bool, CommandError> {
        let refund = transfer.leg(LegKind::TransferRefund);
        Ok(self.store.event_exists(refund.event_id()).await?)
    }

    /// The code the destination refused the credit with, as its idempotency record
    /// kept it (`destination_refused` once the record has expired).
    async fn credit_refusal(&self, transfer: &Transfer) -> Result<String, CommandError> {
        let key = leg_key(transfer, LegKind::TransferIn);
        let stored = self.store.stored_response(&key).await?;
        Ok(stored
            .and_then(|stored| stored.body["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "destination_refused".to_owned()))
    }

    /// The append that records `command` in the transfer's stream, and the transfer
    /// after it (`None`: the command changes nothing).
    fn recording(
        &self,
        record: &TransferRecord,
        command: &TransferCommand,
    ) -> Result<Option<Recording>, CommandError> {
        let transfer = &record.transfer;
        let events = decide(Some(transfer), command)?;
        if events.is_empty() {
            return Ok(None);
        }
        let occurred_at = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
        let new_events = transfer_events(&events, &process_context(transfer), occurred_at);
        let after = events
            .iter()
            .try_fold(transfer.clone(), |t, e| evolve(transfer.id, Some(t), e))
            .map(|transfer| TransferRecord {
                transfer,
                created_at: record.created_at,
                updated_at: occurred_at,
            });
        Ok(Some(Recording {
            append: StreamAppend {
                stream_id: transfer.id.as_uuid(),
                expected_version: i64::try_from(transfer.version).unwrap_or(i64::MAX),
                events: new_events,
                snapshot: None,
                responses: Vec::new(),
                requires: None,
            },
            after,
        }))
    }

    /// Appends the events `command` causes to the transfer's stream, alone.
    async fn record(
        &self,
        record: &TransferRecord,
        command: &TransferCommand,
    ) -> Result<Option<TransferRecord>, CommandError> {
        let recording = self.recording(record, command)?;
        self.append_alone(recording, command).await
    }

    /// Appends `recording` (what `command` causes) on its own; `None` when there is
    /// nothing to append or another writer recorded first.
    async fn append_alone(
        &self,
        recording: Option<Recording>,
        command: &TransferCommand,
    ) -> Result<Option<TransferRecord>, CommandError> {
        let Some(recording) = recording else {
            return Ok(None);
        };
        let append = Append {
            stream_id: recording.append.stream_id,
            expected_version: recording.append.expected_version,
            events: &recording.append.events,
            snapshot: None,
            response: None,
        };
        match self.store.append(append).await {
            Ok(_) => {
                count_step(command);
                Ok(recording.after)
            }
            Err(StoreError::Conflict { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

/// A transfer step's events, ready to append, and the transfer they leave.
struct Recording {
    append: StreamAppend,
    after: Option<TransferRecord>,
}

/// Who the process's commands and records act as: the requester, through the process,
/// correlated by the transfer id.
fn process_context(transfer: &Transfer) -> CommandContext {
    CommandContext {
        requester: Requester {
            sub: transfer.requested_by.clone(),
            admin: true,
        },
        client_id: Some(PROCESS_CLIENT.to_owned()),
        correlation_id: Some(transfer.id.to_string()),
        idempotency: None,
        deadline: Instant::now() + LEG_TIMEOUT,
    }
}

fn count_step(command: &TransferCommand) {
    metrics::counter!("transfer_steps_total", "outcome" => outcome_label(command)).increment(1);
}

/// The idempotency key of a leg: the same for every attempt.
fn leg_key(transfer: &Transfer, kind: LegKind) -> String {
    format!("transfer:{}:{kind}", transfer.id)
}

fn outcome_label(command: &TransferCommand) -> &'static str {
    match command {
        TransferCommand::Request { .. } => "requested",
        TransferCommand::RecordDebit => "debited",
        TransferCommand::RecordDebitRefused { .. } => "failed",
        TransferCommand::RecordCredit => "completed",
        TransferCommand::RecordRefund { .. } => "refunded",
    }
}

async fn pause(backoff: &mut Backoff, stop: &CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(backoff.next_delay()) => {}
    }
}
