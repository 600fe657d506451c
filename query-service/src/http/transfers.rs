//! The transfer endpoints: one transfer, and the transfers of an account.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use service_kit::auth::{Caller, Scope};
use service_kit::extract::{PathId, QueryParams};
use shared_events::TransferStatus;
use tokio::time::Instant;
use uuid::Uuid;

use super::AppState;
use super::accounts::{MAX_WAIT_MS, ensure_visible, page_limit, reach};
use super::cursor;
use super::dto::{Transfer, TransferPage, TransferPageQuery, TransferQuery, uuid};
use super::refusals::{OperationsRefusals, TransferRefusals};
use crate::error::ApiError;
use crate::store::{Reach, TransferCursor, TransferRecord};
use crate::watch::Recheck;

/// One transfer (`accounts:read`: one whose source or destination the caller owns;
/// any for `accounts:admin`; another's is a 404 like an unknown one). With `wait_ms`,
/// waits until it has ended (or, not projected yet, appeared and ended) or the wait is
/// over, woken by the projection's commits, then answers with what it has.
#[utoipa::path(
    get, path = "/transfers/{id}", tag = "transfers",
    params(("id" = String, Path, format = Uuid, description = "The transfer id."), TransferQuery),
    responses(
        (status = 200, description = "The transfer as projected: ended, or as it stood when `wait_ms` ran out.", body = Transfer),
        TransferRefusals,
    )
)]
pub(super) async fn get_transfer(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    QueryParams(query): QueryParams<TransferQuery>,
) -> Result<Json<Transfer>, ApiError> {
    caller.require(Scope::AccountsRead)?;
    let wait = query.wait_ms.unwrap_or(0);
    if wait > MAX_WAIT_MS {
        return Err(ApiError::Invalid(format!(
            "wait_ms must be between 0 and {MAX_WAIT_MS}"
        )));
    }
    let reach = reach(&caller);
    let transfer = if wait == 0 {
        state.store.transfer(id, reach).await?
    } else {
        wait_for_end(&state, id, reach, Duration::from_millis(wait)).await?
    };
    transfer
        .ok_or(ApiError::TransferNotFound(id))?
        .try_into()
        .map(Json)
}

/// The transfer once it has ended, or as it stands when `wait` is over (`None`: still
/// unknown, or not the reader's).
async fn wait_for_end(
    state: &AppState,
    id: Uuid,
    reach: Reach<'_>,
    wait: Duration,
) -> Result<Option<TransferRecord>, ApiError> {
    let deadline = Instant::now() + wait;
    // Subscribed before the first read, so that no commit in between is missed.
    let mut subscription = state.watch.subscribe(id);
    let mut recheck = Recheck::new();
    loop {
        let transfer = state.store.transfer(id, reach).await?;
        if transfer.as_ref().is_some_and(has_ended) {
            return Ok(transfer);
        }
        let gave_up = tokio::select! {
            () = subscription.changed() => false,
            () = tokio::time::sleep(recheck.next_pause()) => false,
            () = tokio::time::sleep_until(deadline) => true,
            () = state.shutdown.cancelled() => true,
        };
        if gave_up {
            return Ok(state.store.transfer(id, reach).await?);
        }
    }
}

fn has_ended(transfer: &TransferRecord) -> bool {
    transfer
        .status
        .parse::<TransferStatus>()
        .is_ok_and(|status| status.is_terminal())
}

/// The transfers from or to an account, oldest first (`accounts:read`, as for the
/// account itself).
#[utoipa::path(
    get, path = "/accounts/{id}/transfers", tag = "transfers",
    params(("id" = String, Path, format = Uuid, description = "The account id."), TransferPageQuery),
    responses(
        (status = 200, description = "A page of the transfers whose source or destination is the account, oldest first.", body = TransferPage),
        OperationsRefusals,
    )
)]
pub(super) async fn list_account_transfers(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    QueryParams(query): QueryParams<TransferPageQuery>,
) -> Result<Json<TransferPage>, ApiError> {
    caller.require(Scope::AccountsRead)?;
    let limit = page_limit(query.limit)?;
    let after = query
        .after
        .as_deref()
        .map(cursor::decode_transfer)
        .transpose()?;
    ensure_visible(&state, id, reach(&caller)).await?;
    let mut records = state.store.account_transfers(id, after, limit + 1).await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next = match records.last() {
        Some(last) if more => Some(cursor::encode_transfer(TransferCursor {
            created_at: last.created_at,
            id: uuid(&last.id)?,
        })),
        _ => None,
    };
    let transfers = records
        .into_iter()
        .map(Transfer::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(TransferPage { transfers, next }))
}
