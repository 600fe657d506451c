//! Requesting a transfer: the synchronous checks, then the transfer's first event in a
//! stream of its own. The transfer process ([`crate::transfers`]) takes it from there.

use chrono::{DateTime, SubsecRound, Utc};
use event_store::{Append, EventStore, NewEvent, StoreError, StoredResponse};
use rust_decimal::Decimal;
use shared_events::{AccountId, Currency, Money, TransferEvent, TransferId};
use uuid::Uuid;

use super::idempotency::{self, StoredReply};
use super::{CommandContext, CommandHandler};
use crate::domain::DomainError;
use crate::domain::transfer::{Transfer, TransferCommand, TransferError, decide, evolve};
use crate::error::CommandError;

/// A transfer as asked for, before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransferRequest {
    pub(crate) from: AccountId,
    pub(crate) to: AccountId,
    pub(crate) amount: Decimal,
    pub(crate) currency: Option<Currency>,
    pub(crate) reference: Option<String>,
}

/// A transfer as its stream holds it, with the instants of its first and latest events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransferRecord {
    pub(crate) transfer: Transfer,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// Shapes the reply remembered under an idempotency key for a transfer request (the
/// HTTP layer's, like [`super::ReplyEncoder`]).
pub(crate) type TransferReplyEncoder = fn(Result<&TransferRecord, &CommandError>) -> StoredReply;

/// The answer to a transfer request that was not refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TransferReply {
    Requested(TransferRecord),
    Replayed(StoredReply),
}

impl CommandHandler {
    /// Checks a transfer request and, unless refused, opens the transfer (`PENDING`).
    /// Refusals are remembered under the request's idempotency key, like the account
    /// commands' refusals.
    pub(crate) async fn request_transfer(
        &self,
        request: TransferRequest,
        context: CommandContext,
        encode: TransferReplyEncoder,
    ) -> Result<TransferReply, CommandError> {
        if let Some(first) = self.stored_reply(&context).await? {
            return Ok(first);
        }
        let id = TransferId::generate();
        let checked = self.check(&request, &context).await;
        let checked = match checked {
            Err(error) if !error.is_final() => return Err(error),
            checked => checked,
        };
        let occurred_at = Utc::now().trunc_subsecs(6);
        let opened = checked.and_then(|command| {
            let events = decide(None, &command)?;
            let transfer = events
                .iter()
                .fold(None, |transfer, event| evolve(id, transfer, event))
                .ok_or(TransferError::NotFound)?;
            Ok::<_, CommandError>((events, transfer))
        });
        let record = |transfer: &Transfer| TransferRecord {
            transfer: transfer.clone(),
            created_at: occurred_at,
            updated_at: occurred_at,
        };
        let remembered = context.idempotency.as_ref().map(|idempotency| {
            let first = opened.as_ref().map(|(_, transfer)| record(transfer));
            let reply = encode(first.as_ref().map_err(|refusal| *refusal));
            StoredResponse {
                key: idempotency.key.clone(),
                fingerprint: idempotency.fingerprint.clone(),
                status: reply.status,
                body: reply.body,
            }
        });
        let (events, transfer) = match opened {
            Ok(opened) => opened,
            Err(refusal) => {
                if let Some(remembered) = &remembered
                    && !self.store.store_response(remembered).await?
                {
                    return self.replay_taken(&context).await;
                }
                return Err(refusal);
            }
        };
        let events = to_new_events(&events, &context, occurred_at);
        let append = Append {
            stream_id: id.as_uuid(),
            expected_version: 0,
            events: &events,
            snapshot: None,
            response: remembered.as_ref(),
        };
        match self.store.append(append).await {
            Ok(_) => Ok(TransferReply::Requested(record(&transfer))),
            Err(StoreError::IdempotencyKeyTaken(_)) => self.replay_taken(&context).await,
            Err(error) if error.outcome_unknown() => {
                Err(CommandError::OutcomeUnknown(error.to_string()))
            }
            Err(error) => Err(CommandError::Unavailable(error.to_string())),
        }
    }

    /// The synchronous checks: two different accounts, a source the requester may act
    /// on, a destination that exists, the source's currency, an amount that fits it.
    async fn check(
        &self,
        request: &TransferRequest,
        context: &CommandContext,
    ) -> Result<TransferCommand, CommandError> {
        if request.from == request.to {
            return Err(TransferError::SameAccount.into());
        }
        let (source, destination) =
            tokio::join!(self.account(request.from), self.account(request.to));
        let source = source?
            .filter(|source| context.requester.may_act_on(source))
            .ok_or(DomainError::NotFound)?;
        if destination?.is_none() {
            return Err(DomainError::NotFound.into());
        }
        if let Some(requested) = request.currency
            && requested != source.currency()
        {
            return Err(DomainError::CurrencyMismatch {
                account: source.currency(),
                requested,
            }
            .into());
        }
        let amount =
            Money::command_amount(request.amount, source.currency()).map_err(DomainError::from)?;
        Ok(TransferCommand::Request {
            from: request.from,
            to: request.to,
            amount,
            reference: request.reference.clone(),
            requested_by: context.requester.sub.clone(),
        })
    }

    /// The reply a concurrent request with the same key stored first.
    async fn replay_taken(&self, context: &CommandContext) -> Result<TransferReply, CommandError> {
        self.stored_reply(context)
            .await?
            .ok_or(CommandError::Conflict)
    }

    /// The first reply stored under the request's idempotency key, if any.
    async fn stored_reply(
        &self,
        context: &CommandContext,
    ) -> Result<Option<TransferReply>, CommandError> {
        let Some(idempotency) = &context.idempotency else {
            return Ok(None);
        };
        let Some(stored) = self.store.stored_response(&idempotency.key).await? else {
            return Ok(None);
        };
        match idempotency::replay(stored, idempotency)? {
            super::Reply::Replayed(reply) => Ok(Some(TransferReply::Replayed(reply))),
            super::Reply::Accepted(_) => Err(CommandError::Conflict),
        }
    }
}

/// The events of a transfer as the store takes them, with the context's metadata.
pub(crate) fn to_new_events(
    events: &[TransferEvent],
    context: &CommandContext,
    occurred_at: DateTime<Utc>,
) -> Vec<NewEvent> {
    let metadata = context.metadata();
    events
        .iter()
        .map(|event| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().as_str().to_owned(),
            schema_version: event.schema_version(),
            data: event.data(),
            metadata: metadata.clone(),
            occurred_at,
        })
        .collect()
}

/// The transfer a stream holds (`None`: no such stream or not a transfer's).
pub(crate) async fn load_transfer(
    store: &EventStore,
    id: TransferId,
) -> Result<Option<TransferRecord>, CommandError> {
    let Some(events) = store.read_stream(id.as_uuid(), 1).await? else {
        return Ok(None);
    };
    let mut transfer = None;
    for recorded in &events {
        let event = match shared_events::DomainEvent::decode(
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        ) {
            Ok(shared_events::DomainEvent::Transfer(event)) => event,
            Ok(shared_events::DomainEvent::Account(_)) => return Ok(None),
            Err(error) => {
                return Err(CommandError::CorruptStream(
                    id.as_uuid(),
                    format!("event {}: {error}", recorded.version),
                ));
            }
        };
        transfer = evolve(id, transfer, &event);
    }
    let (Some(transfer), Some(first), Some(last)) = (transfer, events.first(), events.last())
    else {
        return Ok(None);
    };
    Ok(Some(TransferRecord {
        transfer,
        created_at: first.occurred_at,
        updated_at: last.occurred_at,
    }))
}
