//! The writer tasks: batches of commands decided together and committed in one
//! transaction, with the one retry loop for accounts written concurrently.
//!
//! A writer keeps the accounts it decided recently as it left them
//! ([`RecentMap`]), so that a command on one of them costs the append alone. The
//! append's version check still catches a write by another replica: the account is
//! then forgotten, loaded again and the command decided again on the fresh state. An
//! account is also forgotten when an append's outcome is unknown or failed.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use event_store::{
    EventStore, NewEvent, StoreError, StoredResponse, StreamAppend, WriterConnection,
};
use service_kit::backoff::Backoff;
use service_kit::recent::RecentMap;
use shared_events::{AccountEvent, AccountId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use super::idempotency::{self, ReplyEncoder};
use super::rehydrate::{self, NotAnAccount, SNAPSHOT_SCHEMA};
use super::{Accepted, CommandContext, MAX_BATCH, Outcome, Reply, WRITERS};
use crate::domain::{Account, AccountCommand, DomainError, decide, evolve};
use crate::error::CommandError;
use crate::relay::{PIPELINE, seconds_since};

/// Rounds a command is tried before it gives up with `concurrency_conflict`.
const MAX_ATTEMPTS: u32 = 12;

/// The pause before deciding again on accounts that another replica wrote meanwhile:
/// short, since that writer has just committed, and jittered so that the replicas do
/// not clash again in step.
const CONFLICT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(60));

/// Accounts kept in memory across all writers (each keeps its share).
const RECENT_ACCOUNTS: usize = 65_536;

/// A command waiting for its writer, with where to send its outcome.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) id: AccountId,
    pub(super) command: AccountCommand,
    pub(super) context: CommandContext,
    /// Appended with the command's events if it is accepted.
    pub(super) companion: Option<StreamAppend>,
    pub(super) reply: oneshot::Sender<Outcome>,
}

/// Takes every job waiting, up to [`MAX_BATCH`], and commits them together; until
/// every sender is dropped.
pub(super) async fn write_loop(
    store: EventStore,
    encode: ReplyEncoder,
    mut receiver: mpsc::Receiver<Job>,
) {
    let mut writer = Writer {
        connection: store.writer_connection(),
        store,
        encode,
        recent: RecentMap::new(RECENT_ACCOUNTS / WRITERS),
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics::histogram!("command_batch_size").record(batch.len() as f64);
        writer.process(std::mem::take(&mut batch)).await;
    }
}

/// A batch failed because an idempotency key was taken by a concurrent request.
struct TakenKey(Vec<Job>);

/// The commands of one account within a batch, decided in arrival order, and the
/// account they leave.
struct Plan {
    append: StreamAppend,
    decided: Vec<(Job, Outcome)>,
    after: Option<Account>,
}

struct Writer {
    store: EventStore,
    connection: WriterConnection,
    encode: ReplyEncoder,
    /// Accounts as last decided and committed.
    recent: RecentMap<Uuid, Account>,
}

impl Writer {
    /// Answers every job of a batch. When a concurrent request took one of their
    /// idempotency keys, the jobs are committed one by one instead, so that only the
    /// job whose key was taken gets the stored reply.
    async fn process(&mut self, jobs: Vec<Job>) {
        let Err(TakenKey(jobs)) = self.commit_with_retries(jobs).await else {
            return;
        };
        for job in jobs {
            if let Err(TakenKey(taken)) = self.commit_with_retries(vec![job]).await {
                for job in taken {
                    let outcome = idempotency::replay_taken(&self.store, &job.context).await;
                    let _ = job.reply.send(outcome);
                }
            }
        }
    }

    /// Decides and commits `jobs`, deciding again (after a [`CONFLICT_BACKOFF`]
    /// pause) those whose account was written concurrently, at most [`MAX_ATTEMPTS`]
    /// times.
    async fn commit_with_retries(&mut self, jobs: Vec<Job>) -> Result<(), TakenKey> {
        let mut backoff = CONFLICT_BACKOFF;
        let mut pending = jobs;
        for attempt in 1..=MAX_ATTEMPTS {
            pending = self.attempt(pending).await?;
            if pending.is_empty() {
                return Ok(());
            }
            metrics::counter!("command_conflicts_total").increment(pending.len() as u64);
            if attempt < MAX_ATTEMPTS {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        for job in pending {
            let _ = job.reply.send(Err(CommandError::Conflict));
        }
        Ok(())
    }

    /// One round: load (the accounts not kept), decide, append. Answers every job it
    /// settles and returns the jobs of the accounts that were written concurrently.
    async fn attempt(&mut self, jobs: Vec<Job>) -> Result<Vec<Job>, TakenKey> {
        let mut groups: Vec<(AccountId, Vec<Job>)> = Vec::new();
        for job in drop_abandoned(jobs) {
            match groups.iter_mut().find(|(id, _)| *id == job.id) {
                Some((_, group)) => group.push(job),
                None => groups.push((job.id, vec![job])),
            }
        }
        let kept: Vec<Option<Account>> = groups
            .iter()
            .map(|(id, _)| self.recent.take(&id.as_uuid()))
            .collect();
        let missing: Vec<Uuid> = groups
            .iter()
            .zip(&kept)
            .filter(|(_, kept)| kept.is_none())
            .map(|((id, _), _)| id.as_uuid())
            .collect();
        let mut loaded = if missing.is_empty() {
            HashMap::new()
        } else {
            match rehydrate::load_on(&mut self.connection, &self.store, &missing).await {
                Ok(loaded) => loaded,
                Err(error) => {
                    fail_all(groups.into_iter().flat_map(|(_, jobs)| jobs), &error);
                    return Ok(Vec::new());
                }
            }
        };

        let mut plans = Vec::new();
        let mut refused_on_kept = Vec::new();
        for ((id, group), kept) in groups.into_iter().zip(kept) {
            let Some(account) = kept else {
                let account = rehydrate::rebuild(id, loaded.remove(&id.as_uuid()));
                self.decide_or_settle(id, account, group, &mut plans).await;
                continue;
            };
            let plan = self.decide_group(id, Some(account), group);
            if plan.append.events.is_empty() {
                // No append will check the kept state: another replica may have changed
                // the account since, so the refusals are decided again on the stored one.
                refused_on_kept.push((id, plan.decided.into_iter().map(|(job, _)| job)));
            } else {
                plans.push(plan);
            }
        }
        if !refused_on_kept.is_empty() {
            let ids: Vec<Uuid> = refused_on_kept.iter().map(|(id, _)| id.as_uuid()).collect();
            match rehydrate::load_on(&mut self.connection, &self.store, &ids).await {
                Ok(mut stored) => {
                    for (id, group) in refused_on_kept {
                        let account = rehydrate::rebuild(id, stored.remove(&id.as_uuid()));
                        self.decide_or_settle(id, account, group.collect(), &mut plans)
                            .await;
                    }
                }
                Err(error) => fail_all(
                    refused_on_kept.into_iter().flat_map(|(_, jobs)| jobs),
                    &error,
                ),
            }
        }
        if plans.is_empty() {
            return Ok(Vec::new());
        }

        let mut appends: Vec<StreamAppend> = plans.iter().map(|plan| plan.append.clone()).collect();
        appends.extend(plans.iter().flat_map(companions));
        let jobs_of = |plans: Vec<Plan>| {
            plans
                .into_iter()
                .flat_map(|plan| plan.decided.into_iter().map(|(job, _)| job))
        };
        match self
            .connection
            .append_batch(&appends, SNAPSHOT_SCHEMA)
            .await
        {
            Ok(accepted_streams) => {
                let (committed, conflicted): (Vec<Plan>, Vec<Plan>) = plans
                    .into_iter()
                    .partition(|plan| accepted_streams.contains(&plan.append.stream_id));
                let stage = metrics::histogram!(PIPELINE, "stage" => "committed");
                for plan in committed {
                    for event in &plan.append.events {
                        stage.record(seconds_since(event.occurred_at));
                    }
                    if let Some(after) = plan.after {
                        self.recent.keep(plan.append.stream_id, after);
                    }
                    for (job, mut outcome) in plan.decided {
                        if let (Some(companion), Ok(Reply::Accepted(accepted))) =
                            (&job.companion, &mut outcome)
                        {
                            accepted.companion_appended =
                                accepted_streams.contains(&companion.stream_id);
                        }
                        let _ = job.reply.send(outcome);
                    }
                }
                Ok(jobs_of(conflicted).collect())
            }
            Err(StoreError::IdempotencyKeyTaken(_)) => Err(TakenKey(jobs_of(plans).collect())),
            Err(error) if error.outcome_unknown() => {
                tracing::error!(error = %error, "the connection broke during an append");
                for job in jobs_of(plans) {
                    let _ = job
                        .reply
                        .send(Err(CommandError::OutcomeUnknown(error.to_string())));
                }
                Ok(Vec::new())
            }
            Err(error) => {
                fail_all(jobs_of(plans), &error);
                Ok(Vec::new())
            }
        }
    }

    /// Decides the commands of one account as loaded: when all are refused they are
    /// answered at once, else their plan joins `plans`.
    async fn decide_or_settle(
        &mut self,
        id: AccountId,
        account: Result<Option<Account>, NotAnAccount>,
        group: Vec<Job>,
        plans: &mut Vec<Plan>,
    ) {
        let account = match account {
            Ok(account) => account,
            Err(NotAnAccount::OtherStream) => {
                // Another kind of stream (a transfer's) holds the id: it is taken, and
                // no account has it.
                for job in group {
                    let refusal = match job.command {
                        AccountCommand::Create { .. } => DomainError::AccountExists,
                        _ => DomainError::NotFound,
                    };
                    let _ = job.reply.send(Err(CommandError::Domain(refusal)));
                }
                return;
            }
            Err(NotAnAccount::Corrupt(message)) => {
                tracing::error!(account_id = %id, error = %message, "cannot rebuild account");
                for job in group {
                    let _ = job.reply.send(Err(CommandError::CorruptStream(
                        id.as_uuid(),
                        message.clone(),
                    )));
                }
                return;
            }
        };
        let plan = self.decide_group(id, account, group);
        if plan.append.events.is_empty() {
            if let Some(unchanged) = plan.after {
                self.recent.keep(id.as_uuid(), unchanged);
            }
            idempotency::settle_refusals(&self.store, plan.decided, &plan.append.responses).await;
        } else {
            plans.push(plan);
        }
    }

    /// Decides every command of one account in order, each on the state the previous
    /// ones left.
    fn decide_group(&self, id: AccountId, mut account: Option<Account>, jobs: Vec<Job>) -> Plan {
        let expected_version = account.as_ref().map_or(0, |a| a.version);
        let mut events = Vec::new();
        let mut records: Vec<StoredResponse> = Vec::new();
        let mut decided = Vec::with_capacity(jobs.len());
        for job in jobs {
            let idempotency = job.context.idempotency.as_ref();
            if let Some(idempotency) = idempotency
                && let Some(earlier) = records.iter().find(|r| r.key == idempotency.key)
            {
                let outcome = idempotency::replay(earlier.clone(), idempotency);
                decided.push((job, outcome));
                continue;
            }
            let result = match decide(account.as_ref(), &job.context.requester, &job.command) {
                Ok(new_events) => {
                    let after = new_events.iter().fold(account.take(), evolve);
                    let accepted = after
                        .as_ref()
                        .map(|after| accepted(id, &job.command, after));
                    events.extend(to_new_events(&new_events, &job.context));
                    account = after;
                    accepted.ok_or_else(|| {
                        CommandError::CorruptStream(id.as_uuid(), "no state after events".into())
                    })
                }
                Err(refusal) => Err(CommandError::Domain(refusal)),
            };
            if let Some(record) =
                idempotency.and_then(|key| idempotency::remembered(self.encode, key, &result))
            {
                records.push(record);
            }
            decided.push((job, result.map(Reply::Accepted)));
        }
        Plan {
            append: StreamAppend {
                stream_id: id.as_uuid(),
                expected_version: i64::try_from(expected_version).unwrap_or(i64::MAX),
                events,
                snapshot: rehydrate::snapshot(account.as_ref()),
                responses: records,
                requires: None,
            },
            decided,
            after: account,
        }
    }
}

/// The jobs whose caller still waits and whose deadline has not passed; the others
/// are dropped before any transaction starts, so they are never committed.
fn drop_abandoned(jobs: Vec<Job>) -> Vec<Job> {
    let now = Instant::now();
    let (waiting, abandoned): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|job| !job.reply.is_closed() && job.context.deadline > now);
    if !abandoned.is_empty() {
        metrics::counter!("commands_abandoned_total").increment(abandoned.len() as u64);
        tracing::warn!(
            count = abandoned.len(),
            "dropped commands whose caller stopped waiting"
        );
    }
    for job in abandoned {
        let _ = job.reply.send(Err(CommandError::Unavailable(
            "the command's deadline passed before it was written".into(),
        )));
    }
    waiting
}

fn fail_all(jobs: impl IntoIterator<Item = Job>, error: &StoreError) {
    tracing::error!(error = %error, "event store unavailable");
    for job in jobs {
        let _ = job
            .reply
            .send(Err(CommandError::Unavailable(error.to_string())));
    }
}

fn accepted(id: AccountId, command: &AccountCommand, after: &Account) -> Accepted {
    Accepted {
        id,
        version: after.version,
        balance: matches!(
            command,
            AccountCommand::Credit { .. }
                | AccountCommand::Debit { .. }
                | AccountCommand::Leg { .. }
        )
        .then_some(after.balance),
        opened: matches!(command, AccountCommand::Create { .. }),
        companion_appended: false,
    }
}

/// The companions of a plan's accepted commands, each requiring the plan's account.
fn companions(plan: &Plan) -> impl Iterator<Item = StreamAppend> + '_ {
    plan.decided
        .iter()
        .filter(|(_, outcome)| matches!(outcome, Ok(Reply::Accepted(_))))
        .filter_map(|(job, _)| job.companion.clone())
        .map(|companion| StreamAppend {
            requires: Some(plan.append.stream_id),
            ..companion
        })
}

fn to_new_events(events: &[AccountEvent], context: &CommandContext) -> Vec<NewEvent> {
    let occurred_at = Utc::now().trunc_subsecs(6);
    let metadata = context.metadata();
    events
        .iter()
        .map(|event| NewEvent {
            event_id: match event {
                AccountEvent::Credited { leg: Some(leg), .. }
                | AccountEvent::Debited { leg: Some(leg), .. } => leg.event_id(),
                _ => Uuid::now_v7(),
            },
            event_type: event.event_type().as_str().to_owned(),
            schema_version: event.schema_version(),
            data: event.data(),
            metadata: metadata.clone(),
            occurred_at,
        })
        .collect()
}
