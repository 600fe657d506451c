//! Idempotency keys: the first final reply to a request is stored under its key (in
//! the transaction of its events, or alone for a refusal), and a repeat of the
//! request gets that reply back instead of running again.

use event_store::{EventStore, StoredResponse};
use serde_json::Value;

use super::writer::Job;
use super::{Accepted, CommandContext, Outcome, Reply};
use crate::error::CommandError;

/// A client's `Idempotency-Key` and the fingerprint of the request it came with.
///
/// Keys are scoped to the caller: the record is stored under `key`, which names the
/// caller's `sub` as well as the client's key, so that another caller reusing a key
/// makes a different request and never sees the first caller's reply.
#[derive(Debug, Clone)]
pub(crate) struct IdempotencyKey {
    /// The key the record is stored under ([`IdempotencyKey::scoped`]).
    pub(crate) key: String,
    /// The key as the client sent it, recorded in the events' metadata.
    pub(crate) client_key: String,
    pub(crate) fingerprint: Vec<u8>,
}

impl IdempotencyKey {
    /// The key of `sub`'s request `client_key`: the length of `sub` first, so that no
    /// two (sub, key) pairs share a stored key.
    pub(crate) fn scoped(sub: &str, client_key: &str, fingerprint: Vec<u8>) -> Self {
        Self {
            key: format!("{}:{sub}:{client_key}", sub.len()),
            client_key: client_key.to_owned(),
            fingerprint,
        }
    }
}

/// A reply as the HTTP layer shapes it, kept under an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredReply {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

/// Shapes the reply remembered for a final result: an acceptance, or a refusal for
/// which [`CommandError::is_final`] holds. The HTTP layer supplies it, so that a
/// replay is written with the same response types as a fresh answer.
pub(crate) type ReplyEncoder = fn(&Result<Accepted, CommandError>) -> StoredReply;

/// The record to keep under `idempotency` for a decided command, when its result is
/// final (transient failures are not remembered).
pub(super) fn remembered(
    encode: ReplyEncoder,
    idempotency: &IdempotencyKey,
    result: &Result<Accepted, CommandError>,
) -> Option<StoredResponse> {
    if result.as_ref().is_err_and(|error| !error.is_final()) {
        return None;
    }
    let reply = encode(result);
    Some(StoredResponse {
        key: idempotency.key.clone(),
        fingerprint: idempotency.fingerprint.clone(),
        status: reply.status,
        body: reply.body,
    })
}

/// Answers the jobs of an account on which every command was refused, first storing
/// the refusals under their idempotency keys (`records`, as [`remembered`] made them).
pub(super) async fn settle_refusals(
    store: &EventStore,
    decided: Vec<(Job, Outcome)>,
    records: &[StoredResponse],
) {
    for (job, outcome) in decided {
        let record = match (&outcome, &job.context.idempotency) {
            (Ok(Reply::Replayed(_)), _) | (_, None) => None,
            (_, Some(idempotency)) => records.iter().find(|r| r.key == idempotency.key),
        };
        let outcome = match record {
            Some(record) => match store.store_response(record).await {
                Ok(true) => outcome,
                Ok(false) => replay_taken(store, &job.context).await,
                Err(error) => Err(error.into()),
            },
            None => outcome,
        };
        let _ = job.reply.send(outcome);
    }
}

/// The reply stored by the concurrent request that took this job's key first.
pub(super) async fn replay_taken(store: &EventStore, context: &CommandContext) -> Outcome {
    let Some(idempotency) = &context.idempotency else {
        return Err(CommandError::Conflict);
    };
    match store.stored_response(&idempotency.key).await? {
        Some(stored) => replay(stored, idempotency),
        None => Err(CommandError::Conflict),
    }
}

/// The stored reply, if it was stored for the same request.
pub(super) fn replay(stored: StoredResponse, idempotency: &IdempotencyKey) -> Outcome {
    if stored.fingerprint != idempotency.fingerprint {
        return Err(CommandError::IdempotencyKeyReused);
    }
    Ok(Reply::Replayed(StoredReply {
        status: stored.status,
        body: stored.body,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_key_of_two_callers_is_stored_apart() {
        let alice = IdempotencyKey::scoped("alice", "k1", vec![1]);
        let bob = IdempotencyKey::scoped("bob", "k1", vec![1]);
        assert_ne!(alice.key, bob.key);
        assert_eq!(alice.client_key, "k1");
        assert_ne!(
            IdempotencyKey::scoped("a:1", "b", vec![]).key,
            IdempotencyKey::scoped("a", "1:b", vec![]).key
        );
    }
}
