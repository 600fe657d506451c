//! The command endpoints: authorise, parse, run through the [`CommandHandler`], answer.
//!
//! The order of the checks is the contract's: a token (401), then the scope the
//! operation needs (403), then the request (400, 413, 415), then the account, which
//! is `not_found` to a caller who neither owns it nor is an admin (the domain's rule).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use service_kit::Problem;
use service_kit::auth::{AuthRejection, Caller, Scope};
use service_kit::extract::{JsonBody, OptionalJsonBody, PathId};
use sha2::{Digest, Sha256};
use shared_events::AccountId;
use tokio::time::Instant;

use super::dto::{
    BalanceResponse, CreateAccountRequest, EmptyRequest, MovementRequest, SuspendRequest,
    VersionResponse,
};
use super::refusals::{CreateRefusals, LifecycleRefusals, MovementRefusals};
use super::{AppState, reply};
use crate::application::{CommandContext, IdempotencyKey};
use crate::domain::{AccountCommand, Requester};

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_REASON_CHARS: usize = 500;
const MAX_OWNER_CHARS: usize = 255;

/// Runs one command of `caller` for a request and turns the outcome into the response.
pub(super) async fn run(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    id: AccountId,
    route: &str,
    body: &impl Serialize,
    command: AccountCommand,
) -> Response {
    let context = match context(state, caller, headers, route, body) {
        Ok(context) => context,
        Err(problem) => return problem.into_response(),
    };
    reply::respond(state.handler.execute(id, command, context).await)
}

pub(super) fn context(
    state: &AppState,
    caller: &Caller,
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
            Some(IdempotencyKey::scoped(
                &caller.sub,
                key,
                Sha256::digest(&request).to_vec(),
            ))
        }
    };
    Ok(CommandContext {
        requester: Requester {
            sub: caller.sub.clone(),
            admin: caller.is_admin(),
        },
        client_id: caller.client_id.clone(),
        correlation_id: service_kit::http::request_id(headers),
        idempotency,
        deadline: Instant::now() + state.command_timeout,
    })
}

/// Why a request was refused before its command was built.
pub(super) enum Refused {
    /// The caller lacks the operation's scope (or an admin's right to name an owner).
    Scope(AuthRejection),
    /// The path or the body is not a valid request.
    Request(Box<Problem>),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::Scope(rejection) => rejection.into_response(),
            Self::Request(problem) => problem.into_response(),
        }
    }
}

/// The request's parts once the caller is known to hold `scope`: the scope is
/// checked before the path and the body are looked at.
pub(super) fn authorised<T>(
    caller: &Caller,
    scope: Scope,
    request: Result<T, Problem>,
) -> Result<T, Refused> {
    caller.require(scope).map_err(Refused::Scope)?;
    request.map_err(|problem| Refused::Request(Box::new(problem)))
}

/// Opens an account with an initial balance in one currency, owned by the caller
/// (or, for an admin, by the `owner` it names).
#[utoipa::path(
    post, path = "/accounts", tag = "accounts",
    request_body(content = CreateAccountRequest, description = "The new account.", content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: a repeat with the same key and body gets the first response. 1..=128 visible ASCII characters.", min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")),
    responses(
        (status = 201, description = "The account was opened (or, for a repeated Idempotency-Key, had been).", body = VersionResponse, headers(("Location" = String, description = "/accounts/{id}"), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same Idempotency-Key"))),
        CreateRefusals,
    )
)]
pub(super) async fn create_account(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Result<JsonBody<CreateAccountRequest>, Problem>,
) -> Response {
    let JsonBody(request) = match authorised(&caller, Scope::AccountsWrite, request) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    let owner = match request.owner.as_deref() {
        None => caller.sub.clone(),
        Some(owner) if owner != caller.sub && !caller.is_admin() => {
            return AuthRejection::InsufficientScope(Scope::AccountsAdmin).into_response();
        }
        Some(owner) if owner.is_empty() || owner.chars().count() > MAX_OWNER_CHARS => {
            return Problem::invalid(format!("owner must be 1 to {MAX_OWNER_CHARS} characters"))
                .into_response();
        }
        Some(owner) => owner.to_owned(),
    };
    let id = request.id.map_or_else(AccountId::generate, AccountId::from);
    let command = AccountCommand::Create {
        initial_balance: request.initial_balance.0,
        currency: request.currency,
        owner,
    };
    run(
        &state,
        &caller,
        &headers,
        id,
        "/accounts",
        &request,
        command,
    )
    .await
}

macro_rules! lifecycle_command {
    ($name:ident, $route:literal, $doc:literal, $command:expr) => {
        #[doc = $doc]
        #[utoipa::path(
            post, path = $route, tag = "accounts",
            params(
                ("id" = String, Path, format = Uuid, description = "The account id."),
                ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: a repeat with the same key and body gets the first response. 1..=128 visible ASCII characters, scoped to the caller.", min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$"),
            ),
            request_body(content = Option<EmptyRequest>, description = "No body, or `{}`.", content_type = "application/json"),
            responses(
                (status = 200, description = "The command was applied; the account's new version.", body = VersionResponse, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same Idempotency-Key"))),
                LifecycleRefusals,
            )
        )]
        pub(crate) async fn $name(
            caller: Caller,
            State(state): State<AppState>,
            id: Result<PathId, Problem>,
            headers: HeaderMap,
            request: Result<OptionalJsonBody<EmptyRequest>, Problem>,
        ) -> Response {
            let (PathId(id), OptionalJsonBody(request)) = match authorised(
                &caller,
                Scope::AccountsAdmin,
                id.and_then(|id| Ok((id, request?))),
            ) {
                Ok(parts) => parts,
                Err(refused) => return refused.into_response(),
            };
            let route = format!(concat!(stringify!($name), " {}"), id);
            run(&state, &caller, &headers, id.into(), &route, &request, $command).await
        }
    };
}

lifecycle_command!(
    activate,
    "/accounts/{id}/activate",
    "Activates a created account (accounts:admin).",
    AccountCommand::Activate
);
lifecycle_command!(
    reactivate,
    "/accounts/{id}/reactivate",
    "Reactivates a suspended account (accounts:admin).",
    AccountCommand::Reactivate
);
lifecycle_command!(
    close,
    "/accounts/{id}/close",
    "Closes an active or suspended account whose balance is zero (accounts:admin).",
    AccountCommand::Close
);

/// Suspends an active account (accounts:admin).
#[utoipa::path(
    post, path = "/accounts/{id}/suspend", tag = "accounts",
    params(
        ("id" = String, Path, format = Uuid, description = "The account id."),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: a repeat with the same key and body gets the first response. 1..=128 visible ASCII characters, scoped to the caller.", min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$"),
    ),
    request_body(content = Option<SuspendRequest>, description = "No body, `{}`, or a reason.", content_type = "application/json"),
    responses(
        (status = 200, description = "The account is suspended; its new version.", body = VersionResponse, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same Idempotency-Key"))),
        LifecycleRefusals,
    )
)]
pub(super) async fn suspend(
    caller: Caller,
    State(state): State<AppState>,
    id: Result<PathId, Problem>,
    headers: HeaderMap,
    request: Result<OptionalJsonBody<SuspendRequest>, Problem>,
) -> Response {
    let (PathId(id), OptionalJsonBody(request)) = match authorised(
        &caller,
        Scope::AccountsAdmin,
        id.and_then(|id| Ok((id, request?))),
    ) {
        Ok(parts) => parts,
        Err(refused) => return refused.into_response(),
    };
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
    run(
        &state,
        &caller,
        &headers,
        id.into(),
        &route,
        &request,
        command,
    )
    .await
}

macro_rules! movement_command {
    ($name:ident, $route:literal, $doc:literal, $variant:ident) => {
        #[doc = $doc]
        #[utoipa::path(
            post, path = $route, tag = "accounts",
            params(
                ("id" = String, Path, format = Uuid, description = "The account id."),
                ("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: a repeat with the same key and body gets the first response. 1..=128 visible ASCII characters, scoped to the caller.", min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$"),
            ),
            request_body(content = MovementRequest, content_type = "application/json"),
            responses(
                (status = 200, description = "The movement was applied; the new version and balance.", body = BalanceResponse, headers(("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same Idempotency-Key"))),
                MovementRefusals,
            )
        )]
        pub(crate) async fn $name(
            caller: Caller,
            State(state): State<AppState>,
            id: Result<PathId, Problem>,
            headers: HeaderMap,
            request: Result<JsonBody<MovementRequest>, Problem>,
        ) -> Response {
            let (PathId(id), JsonBody(request)) = match authorised(
                &caller,
                Scope::AccountsWrite,
                id.and_then(|id| Ok((id, request?))),
            ) {
                Ok(parts) => parts,
                Err(refused) => return refused.into_response(),
            };
            let route = format!(concat!(stringify!($name), " {}"), id);
            let command = AccountCommand::$variant {
                amount: request.amount.0,
                currency: request.currency,
            };
            run(&state, &caller, &headers, id.into(), &route, &request, command).await
        }
    };
}

movement_command!(
    credit,
    "/accounts/{id}/credit",
    "Adds money to an active account of the caller's (any account for accounts:admin).",
    Credit
);
movement_command!(
    debit,
    "/accounts/{id}/debit",
    "Takes money from an active account of the caller's, never below zero.",
    Debit
);
