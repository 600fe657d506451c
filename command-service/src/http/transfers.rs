//! `POST /transfers`: the synchronous checks, then the transfer is `PENDING` and the
//! transfer process takes it to its end.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use service_kit::Problem;
use service_kit::auth::{Caller, Scope};
use service_kit::extract::JsonBody;
use shared_events::{AccountId, MAX_REFERENCE_CHARS};

use super::AppState;
use super::commands::{authorised, context};
use super::dto::{TransferRequestBody, TransferResponse};
use super::refusals::TransferRefusals;
use super::reply::{encode_transfer_reply, respond_transfer};
use crate::application::TransferRequest;
use crate::error::CommandError;

/// Moves money from an account of the caller's (any account, for accounts:admin) to
/// another account of the same currency, exactly once. Refused at once: bad input,
/// an unknown account, the same account twice, a currency that is not the source's.
/// Anything else is decided by the transfer's steps: see `GET /transfers/{id}` on the
/// query service for how it ends (`COMPLETED`, `FAILED` or `REFUNDED`).
#[utoipa::path(
    post, path = "/transfers", tag = "transfers",
    request_body(content = TransferRequestBody, description = "The transfer.", content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the request safe to retry: a repeat with the same key and body gets the first response. 1..=128 visible ASCII characters, scoped to the caller.", min_length = 1, max_length = 128, pattern = "^[!-~]{1,128}$")),
    responses(
        (status = 202, description = "The transfer is requested (`PENDING`); its steps follow at once.", body = TransferResponse, headers(("Location" = String, description = "/transfers/{id}"), ("Idempotent-Replayed" = String, description = "`true` when this is the stored response of an earlier request with the same Idempotency-Key"))),
        TransferRefusals,
    )
)]
pub(super) async fn request_transfer(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Result<JsonBody<TransferRequestBody>, Problem>,
) -> Response {
    let JsonBody(request) = match authorised(&caller, Scope::AccountsWrite, request) {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    if request
        .reference
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REFERENCE_CHARS)
    {
        return Problem::invalid(format!(
            "reference is limited to {MAX_REFERENCE_CHARS} characters"
        ))
        .into_response();
    }
    let context = match context(&state, &caller, &headers, "/transfers", &request) {
        Ok(context) => context,
        Err(problem) => return problem.into_response(),
    };
    let deadline = context.deadline;
    let transfer = TransferRequest {
        from: AccountId::from(request.from),
        to: AccountId::from(request.to),
        amount: request.amount.0,
        currency: request.currency,
        reference: request.reference,
    };
    let requested = state
        .handler
        .request_transfer(transfer, context, encode_transfer_reply);
    let outcome = tokio::time::timeout_at(deadline, requested)
        .await
        .unwrap_or_else(|_| {
            Err(CommandError::OutcomeUnknown(
                "the transfer request did not finish in time".into(),
            ))
        });
    respond_transfer(outcome)
}
