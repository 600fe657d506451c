//! The query endpoints.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use service_kit::auth::{Caller, Scope};
use service_kit::extract::{PathId, QueryParams};
use shared_events::{AccountStatus, Currency};
use tokio::time::Instant;
use uuid::Uuid;

use super::AppState;
use super::cursor;
use super::dto::{
    Account, AccountPage, AccountQuery, BalanceSheet, CurrencyTotal, ListQuery, Operation,
    OperationPage, PageQuery,
};
use super::refusals::{AccountRefusals, BalanceSheetRefusals, ListRefusals, OperationsRefusals};
use crate::error::ApiError;
use crate::store::{AccountFilter, AccountRecord, Reach};
use crate::watch::Recheck;

const DEFAULT_WAIT_MS: u64 = 2000;
/// The longest wait of any read.
pub(super) const MAX_WAIT_MS: u64 = 10_000;
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// The accounts `caller` may see: all for an admin, else its own.
pub(super) fn reach(caller: &Caller) -> Reach<'_> {
    if caller.is_admin() {
        Reach::All
    } else {
        Reach::OwnedBy(&caller.sub)
    }
}

/// The `limit` of a listing: 1 to 500, 50 when not given.
pub(super) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::Invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )))
    }
}

/// One account (`accounts:read`; the caller's own, any for `accounts:admin`; another's
/// is a 404 like an unknown one). With `min_version`, waits (at most `wait_ms`) until
/// the projection holds that version; the projection wakes the wait, nothing polls.
/// With `as_of`, the account as it stood at that instant.
#[utoipa::path(
    get, path = "/accounts/{id}", tag = "accounts",
    params(("id" = String, Path, format = Uuid, description = "The account id."), AccountQuery),
    responses(
        (status = 200, description = "The account as projected (at least at `min_version`), or as it stood at `as_of`.", body = Account),
        AccountRefusals,
    )
)]
pub(super) async fn get_account(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    QueryParams(query): QueryParams<AccountQuery>,
) -> Result<Json<Account>, ApiError> {
    caller.require(Scope::AccountsRead)?;
    let reach = reach(&caller);
    let as_of = query.as_of.as_deref().map(past_instant).transpose()?;
    // `min_version=0` waits for nothing: an unknown account is a 404 at once.
    if let Some(min_version) = query.min_version.filter(|&version| version > 0) {
        let wait = Duration::from_millis(query.wait_ms.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS));
        let current = wait_for_version(&state, id, reach, min_version, wait).await?;
        if as_of.is_none() {
            return current.try_into().map(Json);
        }
    }
    let account = match as_of {
        Some(AsOf::Past(instant)) => state.store.account_as_of(id, reach, instant).await?,
        Some(AsOf::BeforeAnyAccount) => None,
        Some(AsOf::NotPast) | None => state.store.account(id, reach).await?,
    };
    account.ok_or(ApiError::NotFound(id))?.try_into().map(Json)
}

/// Where an `as_of` instant falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AsOf {
    /// Before 1970: no account existed.
    BeforeAnyAccount,
    Past(DateTime<Utc>),
    /// Now or later: the current state answers.
    NotPast,
}

/// Parses `as_of`: an RFC 3339 instant with a zone. A `+` offset sent unencoded
/// arrives as a space, which is read back as the `+` it was.
fn past_instant(raw: &str) -> Result<AsOf, ApiError> {
    let instant = DateTime::parse_from_rfc3339(raw)
        .or_else(|error| match raw.rsplit_once(' ') {
            Some((date_time, offset)) => {
                DateTime::parse_from_rfc3339(&format!("{date_time}+{offset}"))
            }
            None => Err(error),
        })
        .map_err(|_| {
            ApiError::Invalid(format!(
                "as_of must be an RFC 3339 instant with a zone, e.g. 2026-11-30T12:00:00Z (got {raw:?})"
            ))
        })?
        .with_timezone(&Utc);
    Ok(if instant < DateTime::UNIX_EPOCH {
        AsOf::BeforeAnyAccount
    } else if instant < Utc::now() {
        AsOf::Past(instant)
    } else {
        AsOf::NotPast
    })
}

/// The account once the projection holds `min_version`, waiting at most `wait`;
/// 504 `not_yet_projected` when it does not in time.
async fn wait_for_version(
    state: &AppState,
    id: Uuid,
    reach: Reach<'_>,
    min_version: u64,
    wait: Duration,
) -> Result<AccountRecord, ApiError> {
    let wanted = i64::try_from(min_version)
        .map_err(|_| ApiError::Invalid("min_version is too large".to_owned()))?;
    let deadline = Instant::now() + wait;
    let mut subscription = state.watch.subscribe(id);
    let mut recheck = Recheck::new();
    loop {
        let account = state.store.account(id, reach).await?;
        let projected = account.as_ref().map_or(0, |a| a.version);
        if projected >= wanted
            && let Some(account) = account
        {
            return Ok(account);
        }
        let gave_up = tokio::select! {
            () = subscription.changed() => false,
            () = tokio::time::sleep(recheck.next_pause()) => false,
            () = tokio::time::sleep_until(deadline) => true,
            () = state.shutdown.cancelled() => true,
        };
        if gave_up {
            let account = state.store.account(id, reach).await?;
            return match account {
                Some(account) if account.version >= wanted => Ok(account),
                other => Err(ApiError::NotYetProjected {
                    id,
                    min_version,
                    projected: other.map_or(0, |a| a.version),
                }),
            };
        }
    }
}

/// Accounts in id order, optionally of one status and currency (`accounts:read`: the
/// caller's own accounts; every account for `accounts:admin`).
#[utoipa::path(
    get, path = "/accounts", tag = "accounts",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of accounts in id order.", body = AccountPage),
        ListRefusals,
    )
)]
pub(super) async fn list_accounts(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<AccountPage>, ApiError> {
    caller.require(Scope::AccountsRead)?;
    let limit = page_limit(query.limit)?;
    let status = query
        .status
        .as_deref()
        .map(|status| status.parse::<AccountStatus>().map(|s| s.as_str()))
        .transpose()
        .map_err(ApiError::Invalid)?;
    let currency = query
        .currency
        .as_deref()
        .map(|code| Currency::parse(code).map(|c| c.code()))
        .transpose()
        .map_err(ApiError::Invalid)?;
    let after = query
        .after
        .as_deref()
        .map(cursor::decode_account)
        .transpose()?;
    let filter = AccountFilter {
        reach: reach(&caller),
        status,
        currency,
    };
    let mut records = state.store.accounts(&filter, after, limit + 1).await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let accounts = records
        .into_iter()
        .map(Account::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    let next = more
        .then(|| accounts.last().map(|a| cursor::encode_account(a.id)))
        .flatten();
    Ok(Json(AccountPage { accounts, next }))
}

/// The credits, debits and transfer legs of an account, oldest first
/// (`accounts:read`, as for the account itself).
#[utoipa::path(
    get, path = "/accounts/{id}/operations", tag = "accounts",
    params(("id" = String, Path, format = Uuid, description = "The account id."), PageQuery),
    responses(
        (status = 200, description = "A page of the account's operations, oldest first.", body = OperationPage),
        OperationsRefusals,
    )
)]
pub(super) async fn list_operations(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    QueryParams(query): QueryParams<PageQuery>,
) -> Result<Json<OperationPage>, ApiError> {
    caller.require(Scope::AccountsRead)?;
    let limit = page_limit(query.limit)?;
    let after = query
        .after
        .as_deref()
        .map(cursor::decode_operation)
        .transpose()?
        .unwrap_or(0);
    ensure_visible(&state, id, reach(&caller)).await?;
    let mut records = state.store.operations(id, after, limit + 1).await?;
    let more = records.len() > limit as usize;
    records.truncate(limit as usize);
    let next = more
        .then(|| {
            records
                .last()
                .map(|op| cursor::encode_operation(op.version))
        })
        .flatten();
    let operations = records
        .into_iter()
        .map(Operation::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(OperationPage { operations, next }))
}

/// A 404 unless the account exists and `reach` covers it.
pub(super) async fn ensure_visible(
    state: &AppState,
    id: Uuid,
    reach: Reach<'_>,
) -> Result<(), ApiError> {
    match state.store.account(id, reach).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(id)),
    }
}

/// Totals per currency (`accounts:admin`): the balances of every account, the number
/// of accounts that are not closed, the money in transit between accounts. Read from
/// the balance sheet's own counters: the same cost at 10 accounts and at 10 million.
#[utoipa::path(
    get, path = "/balance-sheet", tag = "accounts",
    responses(
        (status = 200, description = "Totals per currency.", body = BalanceSheet),
        BalanceSheetRefusals,
    )
)]
pub(super) async fn balance_sheet(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<BalanceSheet>, ApiError> {
    caller.require(Scope::AccountsAdmin)?;
    let totals = state
        .store
        .balance_sheet()
        .await?
        .into_iter()
        .map(CurrencyTotal::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(BalanceSheet { totals }))
}
