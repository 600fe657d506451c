//! The command service's one error type; `http::reply` maps it, once, to problem
//! documents.

use service_kit::ErrorCode;

use crate::domain::DomainError;
use crate::domain::transfer::TransferError;

/// Why a command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("the Idempotency-Key was first used with a different request")]
    IdempotencyKeyReused,
    #[error("the account kept changing under concurrent writes; retry")]
    Conflict,
    #[error("stream {0} cannot be read back: {1}")]
    CorruptStream(uuid::Uuid, String),
    #[error(transparent)]
    Store(#[from] event_store::StoreError),
    /// Not committed, for sure: retrying is safe.
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    /// Committed or not, nobody can tell here (the connection broke during the
    /// append, or the caller's deadline passed while it ran): a retry with the same
    /// idempotency key tells.
    #[error("the outcome of the command is unknown: {0}")]
    OutcomeUnknown(String),
}

impl CommandError {
    /// Whether the response to this error is part of the request's outcome and so is
    /// remembered under its idempotency key (transient failures are not).
    pub(crate) fn is_final(&self) -> bool {
        matches!(self, Self::Domain(_) | Self::Transfer(_))
    }
}

impl DomainError {
    /// The contract's code for the refusal (also a failed or refunded transfer's
    /// `reason`).
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            Self::AccountExists => ErrorCode::AccountExists,
            Self::NotFound => ErrorCode::NotFound,
            Self::InvalidState { .. } | Self::NonZeroBalance { .. } => ErrorCode::InvalidState,
            Self::InsufficientFunds { .. } => ErrorCode::InsufficientFunds,
            Self::CurrencyMismatch { .. } => ErrorCode::CurrencyMismatch,
            Self::BalanceLimitExceeded => ErrorCode::BalanceLimitExceeded,
            Self::InvalidAmount(_) => ErrorCode::InvalidRequest,
        }
    }
}
