//! The command endpoints: parse, run through the [`CommandHandler`], answer.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use service_kit::Problem;
use service_kit::extract::{JsonBody, OptionalJsonBody, PathId};
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
    request_body = CreateAccountRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "1..=128 visible ASCII characters")),
    responses(
        (status = 201, body = VersionResponse, headers(("Location" = String))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "account_exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
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
                ("id" = String, Path, format = Uuid),
                ("Idempotency-Key" = Option<String>, Header, description = "1..=128 visible ASCII characters"),
            ),
            request_body(content = Option<EmptyRequest>, description = "none or {}"),
            responses(
                (status = 200, body = VersionResponse),
                (status = 400, body = Problem, content_type = "application/problem+json"),
                (status = 404, body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "invalid_state or concurrency_conflict", body = Problem, content_type = "application/problem+json"),
                (status = 415, body = Problem, content_type = "application/problem+json"),
                (status = 422, description = "idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
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
        ("id" = String, Path, format = Uuid),
        ("Idempotency-Key" = Option<String>, Header, description = "1..=128 visible ASCII characters"),
    ),
    request_body(content = Option<SuspendRequest>),
    responses(
        (status = 200, body = VersionResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
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
                ("id" = String, Path, format = Uuid),
                ("Idempotency-Key" = Option<String>, Header, description = "1..=128 visible ASCII characters"),
            ),
            request_body = MovementRequest,
            responses(
                (status = 200, body = BalanceResponse),
                (status = 400, body = Problem, content_type = "application/problem+json"),
                (status = 404, body = Problem, content_type = "application/problem+json"),
                (status = 409, description = "invalid_state or concurrency_conflict", body = Problem, content_type = "application/problem+json"),
                (status = 413, body = Problem, content_type = "application/problem+json"),
                (status = 415, body = Problem, content_type = "application/problem+json"),
                (status = 422, description = "insufficient_funds, currency_mismatch, balance_limit_exceeded or idempotency_key_reused", body = Problem, content_type = "application/problem+json"),
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
