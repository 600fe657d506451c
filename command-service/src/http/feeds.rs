//! The event feeds: one account's stream, and the global feed in position order.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use service_kit::Problem;
use service_kit::auth::{Caller, Scope};
use service_kit::extract::{PathId, QueryParams};
use shared_events::AccountId;

use super::AppState;
use super::dto::{AccountEventsQuery, AccountEventsResponse, FeedQuery, FeedResponse};
use super::refusals::{AccountEventsRefusals, FeedRefusals};
use crate::envelope::to_envelope;

const DEFAULT_FEED_LIMIT: u32 = 500;
const MAX_FEED_LIMIT: u32 = 1000;
/// Default and largest page of one account's stream.
const MAX_STREAM_PAGE: u32 = 1000;

/// The events of one account in version order: for `events:read` or
/// `accounts:admin` any account's, for `accounts:read` the caller's own.
#[utoipa::path(
    get, path = "/accounts/{id}/events", tag = "feeds",
    params(("id" = String, Path, format = Uuid, description = "The account id."), AccountEventsQuery),
    responses(
        (status = 200, description = "The account's events from `from_version` on, in version order, at most `limit`; `next_from_version` reads on.", body = AccountEventsResponse),
        AccountEventsRefusals,
    )
)]
pub(super) async fn account_events(
    caller: Caller,
    State(state): State<AppState>,
    id: Result<PathId, Problem>,
    query: Result<QueryParams<AccountEventsQuery>, Problem>,
) -> Response {
    let sees_every_account = caller.is_admin() || caller.has(Scope::EventsRead);
    if !sees_every_account && let Err(rejection) = caller.require(Scope::AccountsRead) {
        return rejection.into_response();
    }
    let result = async {
        let (PathId(id), QueryParams(query)) = (id?, query?);
        if !sees_every_account {
            owned_by(&state, id.into(), &caller.sub).await?;
        }
        read_account_events(&state, id, query).await
    };
    result.await.into_response()
}

/// `Ok` when `sub` owns account `id`; else `not_found`, exactly as for an account
/// that does not exist.
async fn owned_by(state: &AppState, id: AccountId, sub: &str) -> Result<(), Problem> {
    let account = state
        .handler
        .account(id)
        .await
        .map_err(|error| Problem::internal(&error))?;
    match account {
        Some(account) if account.owner.as_deref() == Some(sub) => Ok(()),
        _ => Err(Problem::not_found(format!("account {id} does not exist"))),
    }
}

async fn read_account_events(
    state: &AppState,
    id: uuid::Uuid,
    query: AccountEventsQuery,
) -> Result<Json<AccountEventsResponse>, Problem> {
    let from_version = i64::try_from(query.from_version.unwrap_or(1).max(1))
        .map_err(|_| Problem::invalid("from_version is too large"))?;
    let limit = query.limit.unwrap_or(MAX_STREAM_PAGE);
    if !(1..=MAX_STREAM_PAGE).contains(&limit) {
        return Err(Problem::invalid(format!(
            "limit must be between 1 and {MAX_STREAM_PAGE}"
        )));
    }
    let (events, more) = state
        .store
        .read_stream_page(id, from_version, i64::from(limit))
        .await
        .map_err(|error| Problem::internal(&error))?
        .ok_or_else(|| Problem::not_found(format!("account {id} does not exist")))?;
    let next_from_version = events
        .last()
        .filter(|_| more)
        .and_then(|last| u64::try_from(last.version + 1).ok());
    Ok(Json(AccountEventsResponse {
        events: events.iter().map(to_envelope).collect(),
        next_from_version,
    }))
}

/// Every event in global position order; no event committed later ever appears
/// below a position already returned.
#[utoipa::path(
    get, path = "/events", tag = "feeds",
    params(FeedQuery),
    responses(
        (status = 200, description = "Up to `limit` events after position `after`, in position order.", body = FeedResponse),
        FeedRefusals,
    )
)]
pub(super) async fn all_events(
    caller: Caller,
    State(state): State<AppState>,
    query: Result<QueryParams<FeedQuery>, Problem>,
) -> Response {
    if let Err(rejection) = caller.require(Scope::EventsRead) {
        return rejection.into_response();
    }
    match query {
        Ok(QueryParams(query)) => read_feed(&state, query).await.into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn read_feed(state: &AppState, query: FeedQuery) -> Result<Json<FeedResponse>, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_FEED_LIMIT);
    if !(1..=MAX_FEED_LIMIT).contains(&limit) {
        return Err(Problem::invalid(format!(
            "limit must be between 1 and {MAX_FEED_LIMIT}"
        )));
    }
    let after = query.after.unwrap_or(0);
    let after_position =
        i64::try_from(after).map_err(|_| Problem::invalid("after is too large"))?;
    let events = state
        .store
        .read_all(after_position, i64::from(limit))
        .await
        .map_err(|error| Problem::internal(&error))?;
    let next_after = events
        .last()
        .map_or(after, |e| u64::try_from(e.position).unwrap_or(after));
    Ok(Json(FeedResponse {
        events: events.iter().map(to_envelope).collect(),
        next_after,
    }))
}
