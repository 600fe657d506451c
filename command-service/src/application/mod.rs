//! Executes commands: load the account, decide, append; retried on a concurrent
//! write, remembered under their idempotency keys.
//!
//! Commands are funnelled per account into a few writer tasks ([`writer`]). Each
//! writer takes whatever commands are waiting, loads their accounts in one query
//! ([`rehydrate`]), decides them in arrival order (several commands on one account see
//! each other's effects), and appends everything in one transaction: group commit,
//! with the same guarantees as one command per transaction. A request that repeats an
//! `Idempotency-Key` gets the first reply back ([`idempotency`]).
//!
//! The results are typed: an [`Accepted`] command, a [`CommandError`], or the stored
//! first reply to a repeated request. Statuses and bodies are the HTTP layer's, which
//! also supplies the [`ReplyEncoder`] that writes the reply stored under a key.

mod idempotency;
mod rehydrate;
mod transfers;
mod writer;

use std::sync::Arc;

use event_store::{EventStore, StreamAppend};
use shared_events::{AccountId, Actor, EventMetadata, Money};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub(crate) use idempotency::{IdempotencyKey, ReplyEncoder, StoredReply};
pub(crate) use transfers::{
    TransferRecord, TransferReply, TransferRequest, load_transfer, to_new_events as transfer_events,
};

use crate::domain::{Account, AccountCommand, Requester};
use crate::error::CommandError;
use writer::Job;

/// Writer tasks; an account always goes to the same one. Measured on 2 cores (hotload,
/// credits on 1,000 accounts): one writer is best at 4–16 clients but its single
/// transaction in flight halves throughput at 64; two keep most of both. Since appends
/// commit side by side, four were within the noise of two (`bench --quick`).
const WRITERS: usize = 2;
/// Most commands decided and committed together.
const MAX_BATCH: usize = 256;

/// Who asked, through which client, under which idempotency key, and until when
/// the answer is awaited.
#[derive(Debug, Clone)]
pub(crate) struct CommandContext {
    pub(crate) requester: Requester,
    /// The token's `azp` or `client_id`, recorded with the events.
    pub(crate) client_id: Option<String>,
    pub(crate) correlation_id: Option<String>,
    pub(crate) idempotency: Option<IdempotencyKey>,
    /// When the caller stops waiting. A command not yet committed by then is
    /// dropped before its transaction starts, never committed later; one whose
    /// transaction is under way is answered `outcome_unknown`.
    pub(crate) deadline: Instant,
}

impl CommandContext {
    /// The actor recorded in the metadata of the events the command causes.
    pub(crate) fn actor(&self) -> Actor {
        Actor {
            sub: self.requester.sub.clone(),
            client_id: self.client_id.clone(),
        }
    }

    /// The metadata of the events the command causes, as stored (a fresh causation id).
    pub(crate) fn metadata(&self) -> serde_json::Value {
        let metadata = EventMetadata {
            correlation_id: self.correlation_id.clone(),
            causation_id: Some(uuid::Uuid::now_v7().to_string()),
            idempotency_key: self.idempotency.as_ref().map(|i| i.client_key.clone()),
            actor: Some(self.actor()),
        };
        serde_json::to_value(&metadata).unwrap_or(serde_json::Value::Null)
    }
}

/// What an accepted command left its account at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub(crate) id: AccountId,
    /// The stream version after the command.
    pub(crate) version: u64,
    /// The balance after a credit or a debit; `None` for the other commands.
    pub(crate) balance: Option<Money>,
    /// Whether the command opened the account.
    pub(crate) opened: bool,
    /// Whether the append that came with the command ([`CommandHandler::execute_with`])
    /// committed in its transaction.
    pub(crate) companion_appended: bool,
}

/// The answer to a command that was not refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// Decided and committed now.
    Accepted(Accepted),
    /// The first reply to the same request under the same `Idempotency-Key`, as stored
    /// then (an acceptance or a refusal).
    Replayed(StoredReply),
}

/// What a command comes to: a reply, or why it was refused or failed.
pub(crate) type Outcome = Result<Reply, CommandError>;

/// Runs commands against the event store. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct CommandHandler {
    store: EventStore,
    writers: Arc<[mpsc::Sender<Job>]>,
}

impl CommandHandler {
    /// Starts the writer tasks; they stop when the last handle is dropped. `encode`
    /// writes the reply remembered under an idempotency key.
    pub(crate) fn new(store: EventStore, encode: ReplyEncoder) -> Self {
        let writers = (0..WRITERS)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(MAX_BATCH * 4);
                tokio::spawn(writer::write_loop(store.clone(), encode, receiver));
                sender
            })
            .collect();
        Self { store, writers }
    }

    /// Runs one command on account `id`. When `context.deadline` passes first, the
    /// answer is [`CommandError::OutcomeUnknown`]: the command may still commit (a
    /// retry with the same idempotency key tells), or it is dropped unwritten.
    pub(crate) async fn execute(
        &self,
        id: AccountId,
        command: AccountCommand,
        context: CommandContext,
    ) -> Outcome {
        self.execute_with(id, command, context, None).await
    }

    /// [`CommandHandler::execute`], with `companion` appended in the same transaction
    /// if the command is accepted and the companion's stream is still at its expected
    /// version ([`Accepted::companion_appended`] tells); never without the command.
    pub(crate) async fn execute_with(
        &self,
        id: AccountId,
        command: AccountCommand,
        context: CommandContext,
        companion: Option<StreamAppend>,
    ) -> Outcome {
        let name = command.name();
        let deadline = context.deadline;
        let outcome =
            tokio::time::timeout_at(deadline, self.submit(id, command, context, companion))
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(account_id = %id, command = name, "command deadline passed");
                    Err(CommandError::OutcomeUnknown(
                        "the command did not finish in time".into(),
                    ))
                });
        metrics::counter!(
            "commands_total",
            "command" => name,
            "outcome" => match &outcome {
                Ok(Reply::Replayed(_)) => "replayed",
                Ok(Reply::Accepted(_)) => "accepted",
                Err(error) if error.is_final() => "refused",
                Err(CommandError::OutcomeUnknown(_)) => "unknown",
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
        companion: Option<StreamAppend>,
    ) -> Outcome {
        if let Some(idempotency) = &context.idempotency
            && let Some(stored) = self.store.stored_response(&idempotency.key).await?
        {
            return idempotency::replay(stored, idempotency);
        }
        let bytes = id.as_uuid().into_bytes();
        let writer = usize::from(u16::from_be_bytes([bytes[14], bytes[15]])) % WRITERS;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            id,
            command,
            context,
            companion,
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

    /// The account `id` as the event store holds it now (`None`: no such account).
    pub(crate) async fn account(&self, id: AccountId) -> Result<Option<Account>, CommandError> {
        let mut loaded = rehydrate::load(&self.store, &[id.as_uuid()]).await?;
        match rehydrate::rebuild(id, loaded.remove(&id.as_uuid())) {
            Ok(account) => Ok(account),
            Err(rehydrate::NotAnAccount::OtherStream) => Ok(None),
            Err(rehydrate::NotAnAccount::Corrupt(message)) => {
                Err(CommandError::CorruptStream(id.as_uuid(), message))
            }
        }
    }
}
