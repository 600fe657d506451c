//! Executes a command: load the account, decide, append; retried on a concurrent
//! write, remembered under its idempotency key.

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use event_store::{Append, EventStore, NewEvent, RecordedEvent, StoreError, StoredResponse};
use rand::Rng;
use serde_json::{Value, json};
use shared_events::{AccountEvent, AccountId, EventMetadata, SCHEMA_VERSION};
use tokio::sync::Mutex;

use crate::domain::{Account, AccountCommand, decide, evolve};
use crate::error::CommandError;

/// Version of the serialised [`Account`] kept as the stream snapshot.
const SNAPSHOT_SCHEMA: i32 = 1;
/// Appends attempted before a command gives up with `concurrency_conflict`.
const MAX_ATTEMPTS: u32 = 12;
/// In-process lock stripes: commands on one account wait for each other here rather
/// than collide in the database.
const LOCK_STRIPES: usize = 1024;

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

/// Runs commands against the event store.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    store: EventStore,
    stripes: Arc<[Mutex<()>]>,
}

impl CommandHandler {
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub async fn execute(
        &self,
        id: AccountId,
        command: &AccountCommand,
        context: &CommandContext,
    ) -> Result<CommandReply, CommandError> {
        let outcome = self.execute_fresh(id, command, context).await;
        metrics::counter!(
            "commands_total",
            "command" => command.name(),
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

    async fn execute_fresh(
        &self,
        id: AccountId,
        command: &AccountCommand,
        context: &CommandContext,
    ) -> Result<CommandReply, CommandError> {
        if let Some(idempotency) = &context.idempotency
            && let Some(stored) = self.store.stored_response(&idempotency.key).await?
        {
            return replay(stored, idempotency);
        }
        let bytes = id.as_uuid().into_bytes();
        let stripe = usize::from(u16::from_be_bytes([bytes[14], bytes[15]])) % LOCK_STRIPES;
        let _serialised = self.stripes[stripe].lock().await;
        for attempt in 1..=MAX_ATTEMPTS {
            let account = self.load(id).await?;
            let events = match decide(account.as_ref(), command) {
                Ok(events) => events,
                Err(refusal) => return self.refuse(refusal.into(), context).await,
            };
            let after = events.iter().fold(account.clone(), evolve);
            let Some(after) = after else {
                return Err(CommandError::CorruptStream(
                    id.as_uuid(),
                    "no state after events".into(),
                ));
            };
            let reply = accepted(id, command, &after);
            let response = context
                .idempotency
                .as_ref()
                .map(|idempotency| StoredResponse {
                    key: idempotency.key.clone(),
                    fingerprint: idempotency.fingerprint.clone(),
                    status: reply.status,
                    body: reply.body.clone(),
                });
            let snapshot = serde_json::to_value(&after)
                .map_err(|e| CommandError::CorruptStream(id.as_uuid(), e.to_string()))?;
            let new_events = to_new_events(&events, context);
            let expected_version = account.as_ref().map_or(0, |a| a.version);
            let appended = self
                .store
                .append(Append {
                    stream_id: id.as_uuid(),
                    expected_version: i64::try_from(expected_version).unwrap_or(i64::MAX),
                    events: &new_events,
                    snapshot: Some((&snapshot, SNAPSHOT_SCHEMA)),
                    response: response.as_ref(),
                })
                .await;
            match appended {
                Ok(_) => return Ok(reply),
                Err(StoreError::Conflict { .. }) => {
                    tracing::debug!(attempt, account_id = %id, "concurrent write, retrying");
                    metrics::counter!("command_conflicts_total").increment(1);
                    let pause = rand::rng().random_range(1..=5 * u64::from(attempt));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Err(StoreError::IdempotencyKeyTaken(key)) => {
                    return self.replay_taken(&key, context).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(CommandError::Conflict)
    }

    /// Rebuilds an account from its snapshot and the events after it.
    async fn load(&self, id: AccountId) -> Result<Option<Account>, CommandError> {
        let Some(stream) = self.store.load(id.as_uuid()).await? else {
            return Ok(None);
        };
        let usable = stream
            .snapshot
            .filter(|snapshot| snapshot.schema_version == SNAPSHOT_SCHEMA)
            .and_then(|snapshot| serde_json::from_value::<Account>(snapshot.state).ok());
        let (mut account, events) = match usable {
            Some(account) => (Some(account), stream.events),
            None => (
                None,
                self.store
                    .read_stream(id.as_uuid(), 1)
                    .await?
                    .unwrap_or_default(),
            ),
        };
        for recorded in &events {
            account = evolve(account, &decode(recorded)?);
        }
        match &account {
            Some(a) if i64::try_from(a.version).ok() == Some(stream.version) => Ok(account),
            _ => Err(CommandError::CorruptStream(
                id.as_uuid(),
                format!("rebuilt state does not reach version {}", stream.version),
            )),
        }
    }

    /// A refused command: remembered under its idempotency key, then returned.
    async fn refuse(
        &self,
        error: CommandError,
        context: &CommandContext,
    ) -> Result<CommandReply, CommandError> {
        if let Some(idempotency) = &context.idempotency {
            let problem = error.problem();
            let stored = StoredResponse {
                key: idempotency.key.clone(),
                fingerprint: idempotency.fingerprint.clone(),
                status: problem.status,
                body: serde_json::to_value(&problem).unwrap_or(Value::Null),
            };
            if !self.store.store_response(&stored).await? {
                return self.replay_taken(&idempotency.key, context).await;
            }
        }
        Err(error)
    }

    async fn replay_taken(
        &self,
        key: &str,
        context: &CommandContext,
    ) -> Result<CommandReply, CommandError> {
        match (self.store.stored_response(key).await?, &context.idempotency) {
            (Some(stored), Some(idempotency)) => replay(stored, idempotency),
            _ => Err(CommandError::Conflict),
        }
    }
}

fn replay(
    stored: StoredResponse,
    idempotency: &IdempotencyKey,
) -> Result<CommandReply, CommandError> {
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
    match command {
        AccountCommand::Create { .. } => CommandReply {
            status: 201,
            body: json!({"id": id, "version": after.version}),
            replayed: false,
        },
        AccountCommand::Credit { .. } | AccountCommand::Debit { .. } => CommandReply {
            status: 200,
            body: json!({"id": id, "version": after.version, "balance": after.balance.render()}),
            replayed: false,
        },
        _ => CommandReply {
            status: 200,
            body: json!({"id": id, "version": after.version}),
            replayed: false,
        },
    }
}

fn to_new_events(events: &[AccountEvent], context: &CommandContext) -> Vec<NewEvent> {
    let occurred_at = Utc::now().trunc_subsecs(6);
    let causation_id = uuid::Uuid::now_v7().to_string();
    let metadata = EventMetadata {
        correlation_id: context.correlation_id.clone(),
        causation_id: Some(causation_id),
        idempotency_key: context.idempotency.as_ref().map(|i| i.key.clone()),
    };
    let metadata = serde_json::to_value(&metadata).unwrap_or(Value::Null);
    events
        .iter()
        .map(|event| NewEvent {
            event_id: uuid::Uuid::now_v7(),
            event_type: event.event_type().as_str().to_owned(),
            schema_version: SCHEMA_VERSION,
            data: event.data(),
            metadata: metadata.clone(),
            occurred_at,
        })
        .collect()
}

fn decode(recorded: &RecordedEvent) -> Result<AccountEvent, CommandError> {
    AccountEvent::decode(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.data,
    )
    .map_err(|error| CommandError::CorruptStream(recorded.stream_id, error.to_string()))
}
