//! The command service's account requests, answered by the cqrs-es framework: the same
//! paths and bodies (`POST /accounts`, `/accounts/{id}/activate`, `/credit`, `/debit`)
//! so that the benchmark's load generator drives both. The bearer token is not checked.
//! A command that lost an optimistic-concurrency race is retried, as a user of the
//! library would; success is an empty 200 (201 for a new account), since
//! `CqrsFramework::execute` returns nothing.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cqrs_es::AggregateError;
use postgres_es::PostgresCqrs;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::account::{Account, AccountCommand, AccountError};

/// Attempts of a command that keeps losing optimistic-concurrency races.
const ATTEMPTS: usize = 5;

type Cqrs = Arc<PostgresCqrs<Account>>;

/// The routes, over `cqrs`.
pub(crate) fn router(cqrs: PostgresCqrs<Account>) -> Router {
    Router::new()
        .route("/health/ready", get(|| async { StatusCode::OK }))
        .route("/accounts", post(open))
        .route("/accounts/{id}/activate", post(activate))
        .route("/accounts/{id}/credit", post(credit))
        .route("/accounts/{id}/debit", post(debit))
        .with_state(Arc::new(cqrs))
}

#[derive(Deserialize)]
struct OpenRequest {
    id: Option<Uuid>,
    initial_balance: Decimal,
    currency: String,
}

#[derive(Deserialize)]
struct MovementRequest {
    amount: Decimal,
    currency: Option<String>,
}

async fn open(State(cqrs): State<Cqrs>, Json(request): Json<OpenRequest>) -> Response {
    let id = request.id.unwrap_or_else(Uuid::new_v4);
    let command = AccountCommand::Open {
        initial_balance: request.initial_balance,
        currency: request.currency,
    };
    match execute(&cqrs, id, command).await {
        Ok(()) => (StatusCode::CREATED, Json(json!({ "id": id }))).into_response(),
        Err(refused) => refused,
    }
}

async fn activate(State(cqrs): State<Cqrs>, Path(id): Path<Uuid>) -> Response {
    answer(execute(&cqrs, id, AccountCommand::Activate).await)
}

async fn credit(
    State(cqrs): State<Cqrs>,
    Path(id): Path<Uuid>,
    Json(request): Json<MovementRequest>,
) -> Response {
    let command = AccountCommand::Credit {
        amount: request.amount,
        currency: request.currency,
    };
    answer(execute(&cqrs, id, command).await)
}

async fn debit(
    State(cqrs): State<Cqrs>,
    Path(id): Path<Uuid>,
    Json(request): Json<MovementRequest>,
) -> Response {
    let command = AccountCommand::Debit {
        amount: request.amount,
        currency: request.currency,
    };
    answer(execute(&cqrs, id, command).await)
}

fn answer(outcome: Result<(), Response>) -> Response {
    outcome.map_or_else(|refused| refused, |()| StatusCode::OK.into_response())
}

/// Runs `command` on account `id`, again while it loses races; a refusal as its response.
async fn execute(cqrs: &Cqrs, id: Uuid, command: AccountCommand) -> Result<(), Response> {
    let id = id.to_string();
    let mut attempt = 1;
    loop {
        match cqrs.execute(&id, command.clone()).await {
            Ok(()) => return Ok(()),
            Err(AggregateError::AggregateConflict) if attempt < ATTEMPTS => attempt += 1,
            Err(error) => return Err(refusal(&error)),
        }
    }
}

fn refusal(error: &AggregateError<AccountError>) -> Response {
    let status = match error {
        AggregateError::UserError(refused) => match refused {
            AccountError::NotFound => StatusCode::NOT_FOUND,
            AccountError::Exists | AccountError::InvalidState => StatusCode::CONFLICT,
            AccountError::InvalidAmount | AccountError::CurrencyMismatch => StatusCode::BAD_REQUEST,
            AccountError::InsufficientFunds => StatusCode::UNPROCESSABLE_ENTITY,
        },
        AggregateError::AggregateConflict => StatusCode::CONFLICT,
        AggregateError::DatabaseConnectionError(_)
        | AggregateError::DeserializationError(_)
        | AggregateError::UnexpectedError(_) => {
            tracing::error!(%error, "command failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    (status, Json(json!({ "detail": error.to_string() }))).into_response()
}
