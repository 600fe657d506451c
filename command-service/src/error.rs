//! The command service's one error type, mapped once to problem documents.

use axum::response::{IntoResponse, Response};
use service_kit::{ErrorCode, Problem};

use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the Idempotency-Key was first used with a different request")]
    IdempotencyKeyReused,
    #[error("the account kept changing under concurrent writes; retry")]
    Conflict,
    #[error("stream {0} cannot be read back: {1}")]
    CorruptStream(uuid::Uuid, String),
    #[error(transparent)]
    Store(#[from] event_store::StoreError),
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
}

impl CommandError {
    /// Whether the response to this error is part of the request's outcome and so is
    /// remembered under its idempotency key (transient failures are not).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Domain(_))
    }

    pub fn problem(&self) -> Problem {
        let code = match self {
            Self::Domain(error) => match error {
                DomainError::AccountExists => ErrorCode::AccountExists,
                DomainError::NotFound => ErrorCode::NotFound,
                DomainError::InvalidState { .. } | DomainError::NonZeroBalance { .. } => {
                    ErrorCode::InvalidState
                }
                DomainError::InsufficientFunds { .. } => ErrorCode::InsufficientFunds,
                DomainError::CurrencyMismatch { .. } => ErrorCode::CurrencyMismatch,
                DomainError::BalanceLimitExceeded => ErrorCode::BalanceLimitExceeded,
                DomainError::InvalidAmount(_) => ErrorCode::InvalidRequest,
            },
            Self::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            Self::Conflict => ErrorCode::ConcurrencyConflict,
            Self::Unavailable(_) => ErrorCode::ServiceUnavailable,
            Self::CorruptStream(..) | Self::Store(_) => return Problem::internal(self),
        };
        let detail = match self {
            Self::Unavailable(_) => "the event store is unavailable; retry later".to_owned(),
            _ => self.to_string(),
        };
        Problem::new(code, detail)
    }
}

impl IntoResponse for CommandError {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}
