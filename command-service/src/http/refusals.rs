//! What each command-service operation may be refused with, for its OpenAPI document.

use service_kit::ErrorCode;
use service_kit::refusals;
use service_kit::refusals::{
    INVALID_REQUEST, NOT_FOUND, PAYLOAD_TOO_LARGE, Refusal, SERVICE_UNAVAILABLE, UNAUTHORIZED,
    UNSUPPORTED_MEDIA_TYPE,
};

const FORBIDDEN_TO_OPEN: Refusal = Refusal::new(
    403,
    "forbidden: the token lacks accounts:write (or accounts:admin, to name another owner).",
    &[ErrorCode::Forbidden],
);
const FORBIDDEN_TO_MOVE: Refusal = Refusal::new(
    403,
    "forbidden: the token lacks accounts:write.",
    &[ErrorCode::Forbidden],
);
const FORBIDDEN_LIFECYCLE: Refusal = Refusal::new(
    403,
    "forbidden: the token lacks accounts:admin.",
    &[ErrorCode::Forbidden],
);
const FORBIDDEN_ACCOUNT_EVENTS: Refusal = Refusal::new(
    403,
    "forbidden: the token lacks accounts:read, events:read or accounts:admin.",
    &[ErrorCode::Forbidden],
);
const FORBIDDEN_FEED: Refusal = Refusal::new(
    403,
    "forbidden: the token lacks events:read.",
    &[ErrorCode::Forbidden],
);
const ACCOUNT_EXISTS: Refusal = Refusal::new(
    409,
    "account_exists: an account with this id exists.",
    &[ErrorCode::AccountExists],
);
const STATE_CONFLICTS: Refusal = Refusal::new(
    409,
    "invalid_state: the account's status forbids the command; concurrency_conflict: the write kept colliding with concurrent writes.",
    &[ErrorCode::InvalidState, ErrorCode::ConcurrencyConflict],
);
const KEY_REUSED: Refusal = Refusal::new(
    422,
    "idempotency_key_reused: the Idempotency-Key was first used with another request.",
    &[ErrorCode::IdempotencyKeyReused],
);
const MOVEMENT_REFUSED: Refusal = Refusal::new(
    422,
    "insufficient_funds, currency_mismatch, balance_limit_exceeded, or idempotency_key_reused.",
    &[
        ErrorCode::InsufficientFunds,
        ErrorCode::CurrencyMismatch,
        ErrorCode::BalanceLimitExceeded,
        ErrorCode::IdempotencyKeyReused,
    ],
);
const TRANSFER_REFUSED: Refusal = Refusal::new(
    422,
    "same_account: from and to are the same account; currency_mismatch: the currency is not the source's; idempotency_key_reused.",
    &[
        ErrorCode::SameAccount,
        ErrorCode::CurrencyMismatch,
        ErrorCode::IdempotencyKeyReused,
    ],
);
const TRANSFER_CONFLICT: Refusal = Refusal::new(
    409,
    "concurrency_conflict: a concurrent request with the same Idempotency-Key has not answered yet.",
    &[ErrorCode::ConcurrencyConflict],
);
const OUTCOME_UNKNOWN: Refusal = Refusal::new(
    503,
    "outcome_unknown: the command may or may not have been committed (retry with the same Idempotency-Key to learn which); service_unavailable: the event store is unreachable.",
    &[ErrorCode::OutcomeUnknown, ErrorCode::ServiceUnavailable],
);

refusals!(pub(super) CreateRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_TO_OPEN, ACCOUNT_EXISTS, PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE, KEY_REUSED, OUTCOME_UNKNOWN,
]);
refusals!(pub(super) LifecycleRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_LIFECYCLE, NOT_FOUND, STATE_CONFLICTS,
    PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, KEY_REUSED, OUTCOME_UNKNOWN,
]);
refusals!(pub(super) MovementRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_TO_MOVE, NOT_FOUND, STATE_CONFLICTS,
    PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, MOVEMENT_REFUSED, OUTCOME_UNKNOWN,
]);
refusals!(pub(super) AccountEventsRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_ACCOUNT_EVENTS, NOT_FOUND, SERVICE_UNAVAILABLE,
]);
refusals!(pub(super) FeedRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_FEED, SERVICE_UNAVAILABLE,
]);
refusals!(pub(super) TransferRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_TO_MOVE, NOT_FOUND, TRANSFER_CONFLICT,
    PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, TRANSFER_REFUSED, OUTCOME_UNKNOWN,
]);
