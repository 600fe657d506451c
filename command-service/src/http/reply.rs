//! The answers to commands: the one place that picks their statuses, bodies and
//! headers, for fresh outcomes and for replays of stored ones alike.
//!
//! A reply stored under an `Idempotency-Key` is written by [`encode_reply`] from the
//! response types of the OpenAPI document, and read back into them to be replayed, so
//! a replay is the first answer byte for byte and neither can drift from the document.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use service_kit::{ErrorCode, Problem};

use super::dto::{BalanceResponse, TransferResponse, VersionResponse};
use crate::application::{Accepted, Reply, StoredReply, TransferRecord, TransferReply};
use crate::domain::transfer::TransferError;
use crate::error::CommandError;

/// The body of a command's answer. Untagged: a stored body is read back as the first
/// variant it fits, tried in this order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum ReplyBody {
    Balance(BalanceResponse),
    Version(VersionResponse),
    Problem(Problem),
}

/// A command's answer as the contract shapes it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CommandResponse {
    status: StatusCode,
    body: ReplyBody,
    replayed: bool,
}

impl CommandResponse {
    fn accepted(accepted: &Accepted) -> Self {
        let (id, version) = (accepted.id.as_uuid(), accepted.version);
        let body = match accepted.balance {
            Some(balance) => ReplyBody::Balance(BalanceResponse {
                balance: balance.render(),
                id,
                version,
            }),
            None => ReplyBody::Version(VersionResponse { id, version }),
        };
        let status = if accepted.opened {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Self {
            status,
            body,
            replayed: false,
        }
    }

    fn refused(error: &CommandError) -> Self {
        let problem = problem(error);
        Self {
            status: problem.status_code(),
            body: ReplyBody::Problem(problem),
            replayed: false,
        }
    }

    /// The first answer to a repeated request, read back from its stored form.
    fn replayed(stored: StoredReply) -> Result<Self, Problem> {
        let status = StatusCode::from_u16(stored.status).map_err(|error| {
            Problem::internal(&format!(
                "stored reply has status {}: {error}",
                stored.status
            ))
        })?;
        let body = serde_json::from_value(stored.body).map_err(|error| {
            Problem::internal(&format!("stored reply cannot be read back: {error}"))
        })?;
        Ok(Self {
            status,
            body,
            replayed: true,
        })
    }

    fn stored(&self) -> StoredReply {
        StoredReply {
            status: self.status.as_u16(),
            body: serde_json::to_value(&self.body).unwrap_or(Value::Null),
        }
    }
}

/// Writes the reply remembered under an idempotency key (the application's
/// [`ReplyEncoder`](crate::application::ReplyEncoder)).
pub(crate) fn encode_reply(result: &Result<Accepted, CommandError>) -> StoredReply {
    match result {
        Ok(accepted) => CommandResponse::accepted(accepted),
        Err(error) => CommandResponse::refused(error),
    }
    .stored()
}

/// The answer to a command's outcome.
pub(super) fn respond(outcome: Result<Reply, CommandError>) -> Response {
    match outcome {
        Ok(Reply::Accepted(accepted)) => CommandResponse::accepted(&accepted).into_response(),
        Ok(Reply::Replayed(stored)) => match CommandResponse::replayed(stored) {
            Ok(response) => response.into_response(),
            Err(problem) => problem.into_response(),
        },
        Err(error) => error.into_response(),
    }
}

impl IntoResponse for CommandResponse {
    fn into_response(self) -> Response {
        let location = match (&self.body, self.status) {
            (ReplyBody::Version(created), StatusCode::CREATED) => {
                HeaderValue::from_str(&format!("/accounts/{}", created.id)).ok()
            }
            _ => None,
        };
        let is_problem = matches!(self.body, ReplyBody::Problem(_));
        let mut response = (self.status, Json(self.body)).into_response();
        let headers = response.headers_mut();
        if let Some(location) = location {
            headers.insert(header::LOCATION, location);
        }
        if is_problem {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
        }
        if self.replayed {
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// The body of a transfer request's answer: the transfer, or why it was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum TransferReplyBody {
    Transfer(TransferResponse),
    Problem(Problem),
}

fn transfer_response(record: &TransferRecord) -> TransferResponse {
    let transfer = &record.transfer;
    let at = |instant: &chrono::DateTime<chrono::Utc>| {
        instant.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    TransferResponse {
        id: transfer.id.as_uuid(),
        from: transfer.from.as_uuid(),
        to: transfer.to.as_uuid(),
        amount: transfer.amount.render(),
        currency: transfer.amount.currency(),
        reference: transfer.reference.clone(),
        status: transfer.status,
        reason: transfer.reason.clone(),
        created_at: at(&record.created_at),
        updated_at: at(&record.updated_at),
    }
}

/// Writes the reply remembered under an idempotency key for a transfer request (the
/// application's [`TransferReplyEncoder`](crate::application::TransferReplyEncoder)).
pub(crate) fn encode_transfer_reply(result: Result<&TransferRecord, &CommandError>) -> StoredReply {
    let (status, body) = match result {
        Ok(record) => (
            StatusCode::ACCEPTED,
            TransferReplyBody::Transfer(transfer_response(record)),
        ),
        Err(error) => {
            let problem = problem(error);
            (problem.status_code(), TransferReplyBody::Problem(problem))
        }
    };
    StoredReply {
        status: status.as_u16(),
        body: serde_json::to_value(&body).unwrap_or(Value::Null),
    }
}

/// The answer to a transfer request: 202 with the transfer and its `Location`, the
/// stored first answer to a repeat, or the refusal.
pub(super) fn respond_transfer(outcome: Result<TransferReply, CommandError>) -> Response {
    let (stored, replayed) = match outcome {
        Ok(TransferReply::Requested(record)) => (encode_transfer_reply(Ok(&record)), false),
        Ok(TransferReply::Replayed(stored)) => (stored, true),
        Err(error) => return error.into_response(),
    };
    let Ok(status) = StatusCode::from_u16(stored.status) else {
        return Problem::internal(&format!("stored reply has status {}", stored.status))
            .into_response();
    };
    let body: TransferReplyBody = match serde_json::from_value(stored.body) {
        Ok(body) => body,
        Err(error) => {
            return Problem::internal(&format!("stored reply cannot be read back: {error}"))
                .into_response();
        }
    };
    let mut response = match body {
        TransferReplyBody::Transfer(transfer) => {
            let location = HeaderValue::from_str(&format!("/transfers/{}", transfer.id)).ok();
            let mut response = (status, Json(transfer)).into_response();
            if let Some(location) = location {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        TransferReplyBody::Problem(problem) => problem.into_response(),
    };
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

impl IntoResponse for CommandError {
    fn into_response(self) -> Response {
        problem(&self).into_response()
    }
}

/// The problem document for an error: the command service's one mapping.
fn problem(error: &CommandError) -> Problem {
    let code = match error {
        CommandError::Domain(refusal) => refusal.code(),
        CommandError::Transfer(refusal) => match refusal {
            TransferError::SameAccount => ErrorCode::SameAccount,
            TransferError::NotFound => ErrorCode::NotFound,
            TransferError::Exists | TransferError::OutOfOrder { .. } => {
                ErrorCode::ConcurrencyConflict
            }
        },
        CommandError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
        CommandError::Conflict => ErrorCode::ConcurrencyConflict,
        CommandError::Unavailable(_) => ErrorCode::ServiceUnavailable,
        CommandError::OutcomeUnknown(_) => ErrorCode::OutcomeUnknown,
        CommandError::CorruptStream(..) | CommandError::Store(_) => {
            return Problem::internal(error);
        }
    };
    let detail = match error {
        CommandError::Unavailable(_) => "the event store is unavailable; retry later".to_owned(),
        CommandError::OutcomeUnknown(_) => "the command may or may not have been committed; \
             retry with the same Idempotency-Key to learn its outcome"
            .to_owned(),
        _ => error.to_string(),
    };
    Problem::new(code, detail)
}

#[cfg(test)]
mod tests {
    use shared_events::{AccountId, Currency, Money};

    use super::*;
    use crate::domain::DomainError;

    fn money(text: &str) -> Money {
        let currency = Currency::parse("MAD").unwrap();
        Money::new(shared_events::parse_decimal(text).unwrap(), currency).unwrap()
    }

    fn round_trip(result: &Result<Accepted, CommandError>) -> (CommandResponse, CommandResponse) {
        let fresh = match result {
            Ok(accepted) => CommandResponse::accepted(accepted),
            Err(error) => CommandResponse::refused(error),
        };
        let replayed = CommandResponse::replayed(encode_reply(result)).unwrap();
        (fresh, replayed)
    }

    #[test]
    fn every_stored_reply_reads_back_as_the_first_answer() {
        let id = AccountId::generate();
        let results = [
            Ok(Accepted {
                id,
                version: 1,
                balance: None,
                opened: true,
                companion_appended: false,
            }),
            Ok(Accepted {
                id,
                version: 3,
                balance: None,
                opened: false,
                companion_appended: false,
            }),
            Ok(Accepted {
                id,
                version: 4,
                balance: Some(money("12.50")),
                opened: false,
                companion_appended: false,
            }),
            Err(CommandError::Domain(DomainError::InsufficientFunds {
                balance: "1.00".into(),
                requested: "2.00".into(),
            })),
            Err(CommandError::Domain(DomainError::NotFound)),
        ];
        for result in &results {
            let (fresh, replayed) = round_trip(result);
            assert_eq!(replayed.status, fresh.status, "{result:?}");
            assert_eq!(replayed.body, fresh.body, "{result:?}");
            assert_eq!(
                serde_json::to_vec(&replayed.body).unwrap(),
                serde_json::to_vec(&fresh.body).unwrap()
            );
        }
    }

    #[test]
    fn a_reply_stored_by_the_previous_version_replays_as_it_was_first_sent() {
        // The previous version answered credits with a `serde_json::Value`, whose keys
        // are sorted, and stored that same value.
        let id = AccountId::generate();
        let first = serde_json::json!({"id": id, "version": 4, "balance": "12.50"});
        let stored = StoredReply {
            status: 200,
            body: first.clone(),
        };
        let replayed = CommandResponse::replayed(stored).unwrap();
        assert_eq!(
            serde_json::to_vec(&replayed.body).unwrap(),
            serde_json::to_vec(&first).unwrap()
        );
        assert!(matches!(replayed.body, ReplyBody::Balance(_)));
    }
}
