//! The command endpoints: parse, run through the [`CommandHandler`], answer.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use service_kit::extract::{JsonBody, OptionalJsonBody, PathId};
use service_kit::{ErrorCode, Problem};
use sha2::{Digest, Sha256};
use shared_events::AccountId;

use super::dto::{
    BalanceResponse, CreateAccountRequest, EmptyRequest, MovementRequest, SuspendRequest,
    VersionResponse,
};
use super::{AppState, reply};
use crate::application::{CommandContext, IdempotencyKey};
use crate::domain::AccountCommand;

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_REASON_CHARS: usize = 500;

/// Runs one command for a request and turns the outcome into the response.
async fn run(
    state: &AppState,
    headers: &HeaderMap,
    id: AccountId,
    route: &str,
    body: &impl Serialize,
    command: AccountCommand,
) -> Response {
    let context = match context(headers, route, body) {
        Ok(context) => context,
        Err(problem) => return problem.into_response(),
    };
    reply::respond(state.handler.execute(id, command, context).await)
}

fn context(
    headers: &HeaderMap,
    route: &str,
    body: &impl Serialize,
) -> Result<CommandContext, Problem> {
    let idempotency = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|key| {
                    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    Problem::invalid("Idempotency-Key must be 1 to 128 visible ASCII characters")
                })?;
            let request = serde_json::to_vec(&(route, body)).map_err(|e| Problem::internal(&e))?;
            Some(IdempotencyKey {
                key: key.to_owned(),
                fingerprint: Sha256::digest(&request).to_vec(),
            })
        }
    };
    Ok(CommandContext {
        correlation_id: service_kit::http::request_id(headers),
        idempotency,
    })
}

/// Opens an account with an initial balance in one currency.
#[utoipa::path(
    post, path = "/accounts", tag = "accounts",
    request_body(content = CreateAccountRequest, description = "The new account.", content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: a repeat with the same key and body gets the first response. 1..=128 visible ASCII characters.", min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")),
    responses(
        (status = 201, description = "The account was opened (or, for a repeated Idempotency-Key, had been).", body = VersionResponse, headers(("Location" = String, description = "/accounts/{id}"), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "invalid_request: malformed JSON, an unknown or missing field, a bad UUID, amount, currency or Idempotency-Key.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::InvalidRequest))),
        (status = 409, description = "account_exists: an account with this id exists.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::AccountExists))),
        (status = 413, description = "payload_too_large: the body is over 64 KiB.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::PayloadTooLarge))),
        (status = 415, description = "unsupported_media_type: a body that is not application/json.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::UnsupportedMediaType))),
        (status = 422, description = "idempotency_key_reused: the Idempotency-Key was first used with another request.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::IdempotencyKeyReused))),
        (status = 503, description = "service_unavailable: the event store is unreachable or the request took too long; retry with the same Idempotency-Key.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::ServiceUnavailable))),
    )
)]
pub(super) async fn create_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreateAccountRequest>,
) -> Response {
    let id = request.id.map_or_else(AccountId::generate, AccountId::from);
    let command = AccountCommand::Create {
        initial_balance: request.initial_balance.0,
        currency: request.currency,
    };
    run(&state, &headers, id, "/accounts", &request, command).await
}

macro_rules! lifecycle_command {
    ($name:ident, $route:literal, $doc:literal, $command:expr) => {
        #[doc = $doc]
        #[utoipa::path(
            post, path = $route, tag = "accounts",
            params(
                ("id" = String, Path, format = Uuid, description = "The account id."),
                ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: a repeat with the same key and body gets the first response. 1..=128 visible ASCII characters.", min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$"),
            ),
            request_body(content = Option<EmptyRequest>, description = "No body, or `{}`.", content_type = "application/json"),
            responses(
                (status = 200, description = "The command was applied; the account's new version.", body = VersionResponse, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same Idempotency-Key"))),
                (status = 400, description = "invalid_request: malformed JSON, an unknown or missing field, a bad UUID, amount, currency or Idempotency-Key.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::InvalidRequest))),
                (status = 404, description = "not_found: no account has this id.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::NotFound))),
                (status = 409, description = "invalid_state: the account's status forbids the command; concurrency_conflict: the write kept colliding with concurrent writes.", body = Problem, content_type = "application/problem+json", examples(("invalid_state" = (value = json!(Problem::example(ErrorCode::InvalidState)))), ("concurrency_conflict" = (value = json!(Problem::example(ErrorCode::ConcurrencyConflict)))))),
                (status = 413, description = "payload_too_large: the body is over 64 KiB.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::PayloadTooLarge))),
                (status = 415, description = "unsupported_media_type: a body that is not application/json.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::UnsupportedMediaType))),
                (status = 422, description = "idempotency_key_reused: the Idempotency-Key was first used with another request.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::IdempotencyKeyReused))),
                (status = 503, description = "service_unavailable: the event store is unreachable or the request took too long; retry with the same Idempotency-Key.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::ServiceUnavailable))),
            )
        )]
        pub(crate) async fn $name(
            State(state): State<AppState>,
            PathId(id): PathId,
            headers: HeaderMap,
            OptionalJsonBody(request): OptionalJsonBody<EmptyRequest>,
        ) -> Response {
            let route = format!(concat!(stringify!($name), " {}"), id);
            run(&state, &headers, id.into(), &route, &request, $command).await
        }
    };
}

lifecycle_command!(
    activate,
    "/accounts/{id}/activate",
    "Activates a created account.",
    AccountCommand::Activate
);
lifecycle_command!(
    reactivate,
    "/accounts/{id}/reactivate",
    "Reactivates a suspended account.",
    AccountCommand::Reactivate
);
lifecycle_command!(
    close,
    "/accounts/{id}/close",
    "Closes an active or suspended account whose balance is zero.",
    AccountCommand::Close
);

/// Suspends an active account.
#[utoipa::path(
    post, path = "/accounts/{id}/suspend", tag = "accounts",
    params(
        ("id" = String, Path, format = Uuid, description = "The account id."),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: a repeat with the same key and body gets the first response. 1..=128 visible ASCII characters.", min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$"),
    ),
    request_body(content = Option<SuspendRequest>, description = "No body, `{}`, or a reason.", content_type = "application/json"),
    responses(
        (status = 200, description = "The account is suspended; its new version.", body = VersionResponse, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "invalid_request: malformed JSON, an unknown or missing field, a bad UUID, amount, currency or Idempotency-Key.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::InvalidRequest))),
        (status = 404, description = "not_found: no account has this id.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::NotFound))),
        (status = 409, description = "invalid_state: the account's status forbids the command; concurrency_conflict: the write kept colliding with concurrent writes.", body = Problem, content_type = "application/problem+json", examples(("invalid_state" = (value = json!(Problem::example(ErrorCode::InvalidState)))), ("concurrency_conflict" = (value = json!(Problem::example(ErrorCode::ConcurrencyConflict)))))),
        (status = 413, description = "payload_too_large: the body is over 64 KiB.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::PayloadTooLarge))),
        (status = 415, description = "unsupported_media_type: a body that is not application/json.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::UnsupportedMediaType))),
        (status = 422, description = "idempotency_key_reused: the Idempotency-Key was first used with another request.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::IdempotencyKeyReused))),
        (status = 503, description = "service_unavailable: the event store is unreachable or the request took too long; retry with the same Idempotency-Key.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::ServiceUnavailable))),
    )
)]
pub(super) async fn suspend(
    State(state): State<AppState>,
    PathId(id): PathId,
    headers: HeaderMap,
    OptionalJsonBody(request): OptionalJsonBody<SuspendRequest>,
) -> Response {
    if request
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Problem::invalid(format!(
            "reason is limited to {MAX_REASON_CHARS} characters"
        ))
        .into_response();
    }
    let route = format!("suspend {id}");
    let command = AccountCommand::Suspend {
        reason: request.reason.clone(),
    };
    run(&state, &headers, id.into(), &route, &request, command).await
}

macro_rules! movement_command {
    ($name:ident, $route:literal, $doc:literal, $variant:ident) => {
        #[doc = $doc]
        #[utoipa::path(
            post, path = $route, tag = "accounts",
            params(
                ("id" = String, Path, format = Uuid, description = "The account id."),
                ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: a repeat with the same key and body gets the first response. 1..=128 visible ASCII characters.", min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$"),
            ),
            request_body(content = MovementRequest, content_type = "application/json"),
            responses(
                (status = 200, description = "The movement was applied; the new version and balance.", body = BalanceResponse, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same Idempotency-Key"))),
                (status = 400, description = "invalid_request: malformed JSON, an unknown or missing field, a bad UUID, amount, currency or Idempotency-Key.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::InvalidRequest))),
                (status = 404, description = "not_found: no account has this id.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::NotFound))),
                (status = 409, description = "invalid_state: the account's status forbids the command; concurrency_conflict: the write kept colliding with concurrent writes.", body = Problem, content_type = "application/problem+json", examples(("invalid_state" = (value = json!(Problem::example(ErrorCode::InvalidState)))), ("concurrency_conflict" = (value = json!(Problem::example(ErrorCode::ConcurrencyConflict)))))),
                (status = 413, description = "payload_too_large: the body is over 64 KiB.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::PayloadTooLarge))),
                (status = 415, description = "unsupported_media_type: a body that is not application/json.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::UnsupportedMediaType))),
                (status = 422, description = "insufficient_funds, currency_mismatch, balance_limit_exceeded, or idempotency_key_reused.", body = Problem, content_type = "application/problem+json", examples(("insufficient_funds" = (value = json!(Problem::example(ErrorCode::InsufficientFunds)))), ("currency_mismatch" = (value = json!(Problem::example(ErrorCode::CurrencyMismatch)))), ("balance_limit_exceeded" = (value = json!(Problem::example(ErrorCode::BalanceLimitExceeded)))), ("idempotency_key_reused" = (value = json!(Problem::example(ErrorCode::IdempotencyKeyReused)))))),
                (status = 503, description = "service_unavailable: the event store is unreachable or the request took too long; retry with the same Idempotency-Key.", body = Problem, content_type = "application/problem+json", example = json!(Problem::example(ErrorCode::ServiceUnavailable))),
            )
        )]
        pub(crate) async fn $name(
            State(state): State<AppState>,
            PathId(id): PathId,
            headers: HeaderMap,
            JsonBody(request): JsonBody<MovementRequest>,
        ) -> Response {
            let route = format!(concat!(stringify!($name), " {}"), id);
            let command = AccountCommand::$variant {
                amount: request.amount.0,
                currency: request.currency,
            };
            run(&state, &headers, id.into(), &route, &request, command).await
        }
    };
}

movement_command!(
    credit,
    "/accounts/{id}/credit",
    "Adds money to an active account.",
    Credit
);
movement_command!(
    debit,
    "/accounts/{id}/debit",
    "Takes money from an active account, never below zero.",
    Debit
);
