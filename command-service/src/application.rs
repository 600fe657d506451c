//! Executes commands: load the account, decide, append; retried on a concurrent
//! write, remembered under their idempotency keys.
//!
//! Commands are funnelled per account into a few writer tasks. Each writer takes
//! whatever commands are waiting, loads their accounts in one query, decides them in
//! arrival order (several commands on one account see each other's effects), and
//! appends everything in one transaction: group commit, with the same guarantees as
//! one command per transaction.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use event_store::{EventStore, LoadedStream, NewEvent, StoreError, StoredResponse, StreamAppend};
use rand::Rng;
use serde_json::{Value, json};
use shared_events::{AccountEvent, AccountId, EventMetadata, SCHEMA_VERSION};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::{Account, AccountCommand, decide, evolve};
use crate::error::CommandError;

/// Version of the serialised [`Account`] kept as the stream snapshot.
const SNAPSHOT_SCHEMA: i32 = 1;
/// Rounds a command is tried before it gives up with `concurrency_conflict`.
const MAX_ATTEMPTS: u32 = 12;
/// Writer tasks; an account always goes to the same one.
const WRITERS: usize = 4;
/// Most commands decided and committed together.
const MAX_BATCH: usize = 256;

/// Who asked, and under which idempotency key.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    pub correlation_id: Option<String>,
    pub idempotency: Option<IdempotencyKey>,
}

/// A client's `Idempotency-Key` and the fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

/// The response to a command: fresh, or the first response to the same idempotent request.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReply {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
}

type Outcome = Result<CommandReply, CommandError>;

#[derive(Debug)]
struct Job {
    id: AccountId,
    command: AccountCommand,
    context: CommandContext,
    reply: oneshot::Sender<Outcome>,
}

/// Runs commands against the event store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    store: EventStore,
    writers: Arc<[mpsc::Sender<Job>]>,
}

impl CommandHandler {
    /// Starts the writer tasks; they stop when the last handle is dropped.
    pub fn new(store: EventStore) -> Self {
        let writers = (0..WRITERS)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
                tokio::spawn(write_loop(store.clone(), receiver));
                sender
            })
            .collect();
        Self { store, writers }
    }

    pub async fn execute(
        &self,
        id: AccountId,
        command: AccountCommand,
        context: CommandContext,
    ) -> Outcome {
        let name = command.name();
        let outcome = self.submit(id, command, context).await;
        metrics::counter!(
            "commands_total",
            "command" => name,
            "outcome" => match &outcome {
                Ok(reply) if reply.replayed => "replayed",
                Ok(_) => "accepted",
                Err(error) if error.is_final() => "refused",
                Err(_) => "failed",
            }
        )
        .increment(1);
        outcome
    }

    async fn submit(
        &self,
        id: AccountId,
        command: AccountCommand,
        context: CommandContext,
    ) -> Outcome {
        if let Some(idempotency) = &context.idempotency
            && let Some(stored) = self.store.stored_response(&idempotency.key).await?
        {
            return replay(stored, idempotency);
        }
        let bytes = id.as_uuid().into_bytes();
        let writer = usize::from(u16::from_be_bytes([bytes[14], bytes[15]])) % WRITERS;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            id,
            command,
            context,
            reply,
        };
        self.writers[writer]
            .send(job)
            .await
            .map_err(|_| CommandError::Unavailable("the service is shutting down".into()))?;
        answer
            .await
            .map_err(|_| CommandError::Unavailable("the command was dropped".into()))?
    }
}

async fn write_loop(store: EventStore, mut receiver: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics::histogram!("command_batch_size").record(batch.len() as f64);
        process(&store, std::mem::take(&mut batch)).await;
    }
}

/// Decides and commits a batch, retrying the accounts whose stream moved meanwhile.
async fn process(store: &EventStore, jobs: Vec<Job>) {
    let mut pending = jobs;
    for attempt in 1..=MAX_ATTEMPTS {
        pending = match attempt_batch(store, pending).await {
            Ok(conflicted) => conflicted,
            Err(TakenKey(jobs)) => {
                return one_by_one(store, jobs).await;
            }
        };
        if pending.is_empty() {
            return;
        }
        metrics::counter!("command_conflicts_total").increment(pending.len() as u64);
        let pause = rand::rng().random_range(1..=5 * u64::from(attempt));
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    for job in pending {
        let _ = job.reply.send(Err(CommandError::Conflict));
    }
}

/// A batch failed because an idempotency key was taken by a concurrent request.
struct TakenKey(Vec<Job>);

/// Commits each job on its own; a job whose key was taken gets the stored response.
async fn one_by_one(store: &EventStore, jobs: Vec<Job>) {
    for job in jobs {
        let mut pending = vec![job];
        for attempt in 1..=MAX_ATTEMPTS {
            pending = match attempt_batch(store, pending).await {
                Ok(conflicted) => conflicted,
                Err(TakenKey(jobs)) => {
                    for job in jobs {
                        let outcome = replay_taken(store, &job.context).await;
                        let _ = job.reply.send(outcome);
                    }
                    Vec::new()
                }
            };
            if pending.is_empty() {
                break;
            }
            let pause = rand::rng().random_range(1..=5 * u64::from(attempt));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        for job in pending {
            let _ = job.reply.send(Err(CommandError::Conflict));
        }
    }
}

/// The commands of one account within a batch, decided in arrival order.
struct Plan {
    append: StreamAppend,
    outcomes: Vec<(Job, Outcome)>,
}

/// One round: load, decide, append. Answers every job it settles and returns the
/// jobs of the accounts that were written concurrently.
async fn attempt_batch(store: &EventStore, jobs: Vec<Job>) -> Result<Vec<Job>, TakenKey> {
    let mut groups: Vec<(AccountId, Vec<Job>)> = Vec::new();
    for job in jobs {
        match groups.iter_mut().find(|(id, _)| *id == job.id) {
            Some((_, group)) => group.push(job),
            None => groups.push((job.id, vec![job])),
        }
    }
    let ids: Vec<Uuid> = groups.iter().map(|(id, _)| id.as_uuid()).collect();
    let mut loaded = match store.load_many(&ids).await {
        Ok(loaded) => loaded,
        Err(error) => {
            fail_all(groups.into_iter().flat_map(|(_, jobs)| jobs), &error);
            return Ok(Vec::new());
        }
    };

    let mut plans = Vec::new();
    for (id, group) in groups {
        let account = match rebuild(id, loaded.remove(&id.as_uuid())) {
            Ok(account) => account,
            Err(error) => {
                let message = error.to_string();
                tracing::error!(account_id = %id, error = %message, "cannot rebuild account");
                for job in group {
                    let _ = job.reply.send(Err(CommandError::CorruptStream(
                        id.as_uuid(),
                        message.clone(),
                    )));
                }
                continue;
            }
        };
        let plan = decide_group(id, account, group);
        if plan.append.events.is_empty() {
            settle_refusals(store, plan.outcomes).await;
        } else {
            plans.push(plan);
        }
    }
    if plans.is_empty() {
        return Ok(Vec::new());
    }

    let appends: Vec<StreamAppend> = plans.iter().map(|plan| plan.append.clone()).collect();
    match store.append_batch(&appends, SNAPSHOT_SCHEMA).await {
        Ok(accepted) => {
            let mut conflicted = Vec::new();
            for plan in plans {
                if accepted.contains(&plan.append.stream_id) {
                    for (job, outcome) in plan.outcomes {
                        let _ = job.reply.send(outcome);
                    }
                } else {
                    conflicted.extend(plan.outcomes.into_iter().map(|(job, _)| job));
                }
            }
            Ok(conflicted)
        }
        Err(StoreError::IdempotencyKeyTaken(_)) => Err(TakenKey(
            plans
                .into_iter()
                .flat_map(|plan| plan.outcomes.into_iter().map(|(job, _)| job))
                .collect(),
        )),
        Err(error) => {
            fail_all(
                plans
                    .into_iter()
                    .flat_map(|plan| plan.outcomes.into_iter().map(|(job, _)| job)),
                &error,
            );
            Ok(Vec::new())
        }
    }
}

fn fail_all(jobs: impl IntoIterator<Item = Job>, error: &StoreError) {
    tracing::error!(error = ?error, "event store unavailable");
    for job in jobs {
        let _ = job
            .reply
            .send(Err(CommandError::Unavailable(error.to_string())));
    }
}

/// Rebuilds an account from its snapshot and the events after it.
fn rebuild(id: AccountId, stream: Option<LoadedStream>) -> Result<Option<Account>, String> {
    let Some(stream) = stream else {
        return Ok(None);
    };
    let mut account = match stream.snapshot {
        Some(snapshot) if snapshot.schema_version == SNAPSHOT_SCHEMA => {
            serde_json::from_value::<Account>(snapshot.state)
                .map_err(|e| format!("snapshot of {id}: {e}"))?
        }
        _ => return Err(format!("stream {id} has no usable snapshot")),
    };
    for recorded in &stream.events {
        let event = AccountEvent::decode(
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        )
        .map_err(|e| format!("event {} of {id}: {e}", recorded.version))?;
        account =
            evolve(Some(account), &event).ok_or_else(|| format!("stream {id} lost its account"))?;
    }
    if i64::try_from(account.version).ok() != Some(stream.version) {
        return Err(format!(
            "stream {id} rebuilds to version {} not {}",
            account.version, stream.version
        ));
    }
    Ok(Some(account))
}

/// Decides every command of one account in order, each on the state the previous
/// ones left.
fn decide_group(id: AccountId, mut account: Option<Account>, jobs: Vec<Job>) -> Plan {
    let expected_version = account.as_ref().map_or(0, |a| a.version);
    let mut events = Vec::new();
    let mut responses: Vec<StoredResponse> = Vec::new();
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let idempotency = job.context.idempotency.as_ref();
        if let Some(earlier) = idempotency.and_then(|i| responses.iter().find(|r| r.key == i.key))
            && let Some(idempotency) = idempotency
        {
            let outcome = replay(earlier.clone(), idempotency);
            outcomes.push((job, outcome));
            continue;
        }
        let outcome = match decide(account.as_ref(), &job.command) {
            Ok(decided) => {
                let after = decided.iter().fold(account.take(), evolve);
                let reply = after
                    .as_ref()
                    .map(|after| accepted(id, &job.command, after));
                events.extend(to_new_events(&decided, &job.context));
                account = after;
                reply.ok_or_else(|| {
                    CommandError::CorruptStream(id.as_uuid(), "no state after events".into())
                })
            }
            Err(refusal) => Err(CommandError::Domain(refusal)),
        };
        if let Some(idempotency) = idempotency
            && let Some((status, body)) = remembered(&outcome)
        {
            responses.push(StoredResponse {
                key: idempotency.key.clone(),
                fingerprint: idempotency.fingerprint.clone(),
                status,
                body,
            });
        }
        outcomes.push((job, outcome));
    }
    let snapshot = account
        .as_ref()
        .and_then(|a| serde_json::to_value(a).ok())
        .unwrap_or(Value::Null);
    Plan {
        append: StreamAppend {
            stream_id: id.as_uuid(),
            expected_version: i64::try_from(expected_version).unwrap_or(i64::MAX),
            events,
            snapshot,
            responses,
        },
        outcomes,
    }
}

/// The response an outcome leaves under its idempotency key, if it is final.
fn remembered(outcome: &Outcome) -> Option<(u16, Value)> {
    match outcome {
        Ok(reply) => Some((reply.status, reply.body.clone())),
        Err(error) if error.is_final() => {
            let problem = error.problem();
            Some((problem.status, serde_json::to_value(&problem).ok()?))
        }
        Err(_) => None,
    }
}

/// Answers a group in which every command was refused, remembering the refusals
/// under their idempotency keys.
async fn settle_refusals(store: &EventStore, outcomes: Vec<(Job, Outcome)>) {
    for (job, outcome) in outcomes {
        let outcome = match (&job.context.idempotency, remembered(&outcome)) {
            (Some(idempotency), Some((status, body))) if !matches!(outcome, Ok(ref reply) if reply.replayed) =>
            {
                let stored = StoredResponse {
                    key: idempotency.key.clone(),
                    fingerprint: idempotency.fingerprint.clone(),
                    status,
                    body,
                };
                match store.store_response(&stored).await {
                    Ok(true) => outcome,
                    Ok(false) => replay_taken(store, &job.context).await,
                    Err(error) => Err(error.into()),
                }
            }
            _ => outcome,
        };
        let _ = job.reply.send(outcome);
    }
}

async fn replay_taken(store: &EventStore, context: &CommandContext) -> Outcome {
    let Some(idempotency) = &context.idempotency else {
        return Err(CommandError::Conflict);
    };
    match store.stored_response(&idempotency.key).await? {
        Some(stored) => replay(stored, idempotency),
        None => Err(CommandError::Conflict),
    }
}

fn replay(stored: StoredResponse, idempotency: &IdempotencyKey) -> Outcome {
    if stored.fingerprint != idempotency.fingerprint {
        return Err(CommandError::IdempotencyKeyReused);
    }
    Ok(CommandReply {
        status: stored.status,
        body: stored.body,
        replayed: true,
    })
}

fn accepted(id: AccountId, command: &AccountCommand, after: &Account) -> CommandReply {
    let (status, body) = match command {
        AccountCommand::Create { .. } => (201, json!({"id": id, "version": after.version})),
        AccountCommand::Credit { .. } | AccountCommand::Debit { .. } => (
            200,
            json!({"id": id, "version": after.version, "balance": after.balance.render()}),
        ),
        _ => (200, json!({"id": id, "version": after.version})),
    };
    CommandReply {
        status,
        body,
        replayed: false,
    }
}

fn to_new_events(events: &[AccountEvent], context: &CommandContext) -> Vec<NewEvent> {
    let occurred_at = Utc::now().trunc_subsecs(6);
    let metadata = EventMetadata {
        correlation_id: context.correlation_id.clone(),
        causation_id: Some(Uuid::now_v7().to_string()),
        idempotency_key: context.idempotency.as_ref().map(|i| i.key.clone()),
    };
    let metadata = serde_json::to_value(&metadata).unwrap_or(Value::Null);
    events
        .iter()
        .map(|event| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().as_str().to_owned(),
            schema_version: SCHEMA_VERSION,
            data: event.data(),
            metadata: metadata.clone(),
            occurred_at,
        })
        .collect()
}
