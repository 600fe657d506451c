//! RFC 9457 problem documents with the contract's stable error codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The contract's stable error codes; clients branch on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    UnsupportedMediaType,
    PayloadTooLarge,
    NotFound,
    MethodNotAllowed,
    AccountExists,
    InvalidState,
    ConcurrencyConflict,
    InsufficientFunds,
    CurrencyMismatch,
    BalanceLimitExceeded,
    IdempotencyKeyReused,
    NotYetProjected,
    ServiceUnavailable,
    Internal,
    Unauthorized,
    Forbidden,
    OutcomeUnknown,
    SameAccount,
}

impl ErrorCode {
    /// Every code, in the order of the contract's table.
    pub const ALL: [Self; 19] = [
        Self::InvalidRequest,
        Self::UnsupportedMediaType,
        Self::PayloadTooLarge,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::AccountExists,
        Self::InvalidState,
        Self::ConcurrencyConflict,
        Self::InsufficientFunds,
        Self::CurrencyMismatch,
        Self::BalanceLimitExceeded,
        Self::IdempotencyKeyReused,
        Self::NotYetProjected,
        Self::ServiceUnavailable,
        Self::Internal,
        Self::Unauthorized,
        Self::Forbidden,
        Self::OutcomeUnknown,
        Self::SameAccount,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge => "payload_too_large",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::AccountExists => "account_exists",
            Self::InvalidState => "invalid_state",
            Self::ConcurrencyConflict => "concurrency_conflict",
            Self::InsufficientFunds => "insufficient_funds",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::BalanceLimitExceeded => "balance_limit_exceeded",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::NotYetProjected => "not_yet_projected",
            Self::ServiceUnavailable => "service_unavailable",
            Self::Internal => "internal_error",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::SameAccount => "same_account",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::AccountExists | Self::InvalidState | Self::ConcurrencyConflict => {
                StatusCode::CONFLICT
            }
            Self::InsufficientFunds
            | Self::CurrencyMismatch
            | Self::BalanceLimitExceeded
            | Self::IdempotencyKeyReused
            | Self::SameAccount => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotYetProjected => StatusCode::GATEWAY_TIMEOUT,
            Self::ServiceUnavailable | Self::OutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::InvalidRequest => "The request is invalid",
            Self::UnsupportedMediaType => "The body must be application/json",
            Self::PayloadTooLarge => "The body is larger than 64 KiB",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::AccountExists => "The account already exists",
            Self::InvalidState => "The account's status forbids this command",
            Self::ConcurrencyConflict => "Too many concurrent writes to this account",
            Self::InsufficientFunds => "Insufficient funds",
            Self::CurrencyMismatch => "Currency does not match the account's",
            Self::BalanceLimitExceeded => "The balance would exceed its limit",
            Self::IdempotencyKeyReused => "Idempotency key reused with a different request",
            Self::NotYetProjected => "Not yet projected",
            Self::ServiceUnavailable => "Service unavailable",
            Self::Internal => "Internal error",
            Self::Unauthorized => "Authentication required",
            Self::Forbidden => "The token lacks the scope this operation needs",
            Self::OutcomeUnknown => "The outcome of the command is unknown",
            Self::SameAccount => "A transfer needs two different accounts",
        }
    }
}

/// An RFC 9457 problem document, served as `application/problem+json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:problem-type:bank:` followed by the code.
    #[serde(rename = "type")]
    #[schema(
        pattern = "^urn:problem-type:bank:[a-z_]+$",
        example = "urn:problem-type:bank:not_found"
    )]
    pub problem_type: String,
    #[schema(example = "Not found")]
    pub title: String,
    /// The HTTP status of the response.
    #[schema(minimum = 400, maximum = 599, example = 404)]
    pub status: u16,
    #[schema(example = "account 0193a3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b does not exist")]
    pub detail: String,
    /// Stable machine-readable code: clients branch on it, never on text.
    #[schema(schema_with = code_schema)]
    pub code: String,
}

/// The `code` property: one of the stable codes.
fn code_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(
            "Stable machine-readable code: clients branch on it, never on text.",
        ))
        .enum_values(Some(ErrorCode::ALL.iter().map(ErrorCode::as_str)))
        .examples([serde_json::json!("not_found")])
        .build()
}

impl Problem {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("urn:problem-type:bank:{}", code.as_str()),
            title: code.title().to_owned(),
            status: code.status().as_u16(),
            detail: detail.into(),
            code: code.as_str().to_owned(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, detail)
    }

    /// A 500 whose cause is logged here, once, and never sent to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            ErrorCode::Internal,
            "the service failed; the error was logged",
        )
    }

    /// A typical problem document of `code`, for the examples of API documents.
    pub fn example(code: ErrorCode) -> serde_json::Value {
        let detail = match code {
            ErrorCode::InvalidRequest => {
                "amount: must not have more than 2 fraction digits for MAD"
            }
            ErrorCode::UnsupportedMediaType => "send the body as Content-Type: application/json",
            ErrorCode::PayloadTooLarge => "request bodies are limited to 64 KiB",
            ErrorCode::NotFound => "account 0193a3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b does not exist",
            ErrorCode::MethodNotAllowed => "this method is not allowed on this resource",
            ErrorCode::AccountExists => "the account already exists",
            ErrorCode::InvalidState => "the account is CREATED; this command needs ACTIVE",
            ErrorCode::ConcurrencyConflict => {
                "the account kept changing under concurrent writes; retry"
            }
            ErrorCode::InsufficientFunds => "the balance 20.00 MAD cannot cover 30.00 MAD",
            ErrorCode::CurrencyMismatch => "the account holds MAD, not EUR",
            ErrorCode::BalanceLimitExceeded => "the balance would exceed 10^15",
            ErrorCode::IdempotencyKeyReused => {
                "the Idempotency-Key was first used with a different request"
            }
            ErrorCode::NotYetProjected => "account projected up to version 2, not yet 3",
            ErrorCode::ServiceUnavailable => "the request took too long; retry later",
            ErrorCode::Internal => "the service failed; the error was logged",
            ErrorCode::Unauthorized => "a bearer token is required",
            ErrorCode::Forbidden => "this operation needs the scope accounts:admin",
            ErrorCode::OutcomeUnknown => {
                "the command may or may not have been committed; retry with the same Idempotency-Key"
            }
            ErrorCode::SameAccount => "a transfer cannot move money from an account to itself",
        };
        serde_json::to_value(Self::new(code, detail)).unwrap_or_default()
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut response = (status, axum::Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}
