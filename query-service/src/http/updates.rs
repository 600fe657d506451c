//! Live updates of one account as Server-Sent Events, pushed by the projection's
//! commits through the same per-account wake-up as `min_version` reads.
//!
//! A stream sends the account as each projected version left it, in version order. A
//! client that falls more than [`MAX_CATCH_UP`] versions behind (it reads slowly, or
//! resumes from far back) gets the latest state instead: nothing is buffered per client
//! beyond one page of versions.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use service_kit::auth::{Caller, Scope};
use service_kit::extract::PathId;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::AppState;
use super::dto::Account;
use super::refusals::AccountRefusals;
use crate::error::ApiError;
use crate::store::{AccountRecord, Reach, ReadStore};
use crate::watch::Subscription;

/// Most versions sent one by one after a wake-up or on resumption; further behind,
/// the stream skips to the latest state.
const MAX_CATCH_UP: u32 = 100;
/// The longest silence on a stream: a comment line keeps proxies from closing it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The account (`accounts:read`, like reading it), then the account at every version
/// the projection commits, as `text/event-stream`: `id: <version>`, `event: account`,
/// `data: <Account>`. `Last-Event-ID: N` resumes after version N (one that is not a
/// number, or beyond the current version, starts from the current state). A comment
/// line is sent at least every 15 s. The stream ends when the service shuts down.
#[utoipa::path(
    get, path = "/accounts/{id}/updates", tag = "accounts",
    params(
        ("id" = String, Path, format = Uuid, description = "The account id."),
        ("Last-Event-ID" = Option<String>, Header, description = "The last version received: resume after it."),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: one `account` event per projected version (its `id` is the version, its `data` the Account as that version left it), comment lines as keep-alives.", content_type = "text/event-stream", body = String),
        AccountRefusals,
    )
)]
pub(super) async fn account_updates(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    caller.require(Scope::AccountsRead)?;
    let reach = if caller.is_admin() {
        Reach::All
    } else {
        Reach::OwnedBy(&caller.sub)
    };
    // Subscribed before the first read, so that no version committed in between is missed.
    let subscription = state.watch.subscribe(id);
    let current = state
        .store
        .account(id, reach)
        .await?
        .ok_or(ApiError::NotFound(id))?;
    let resume_after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<i64>().ok())
        .filter(|&version| (0..=current.version).contains(&version));
    let mut updates = Updates {
        id,
        store: state.store.clone(),
        subscription,
        shutdown: state.shutdown.clone(),
        sent: 0,
        pending: VecDeque::new(),
    };
    match resume_after {
        Some(after) if after < current.version => {
            updates.sent = after;
            updates.catch_up(current).await?;
        }
        Some(after) => updates.sent = after,
        None => updates.pending.push_back(current),
    }
    let stream = futures::stream::unfold(updates, |mut updates| async move {
        let event = updates.next_event().await?;
        Some((Ok(event), updates))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// One client's stream: the last version sent and the versions read but not yet sent.
struct Updates {
    id: Uuid,
    store: ReadStore,
    subscription: Subscription,
    shutdown: CancellationToken,
    sent: i64,
    pending: VecDeque<AccountRecord>,
}

impl Updates {
    /// The next message; `None` ends the stream (shutdown).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            while let Some(record) = self.pending.pop_front() {
                if record.version <= self.sent {
                    continue;
                }
                self.sent = record.version;
                match to_event(record) {
                    Ok(event) => return Some(event),
                    Err(error) => {
                        tracing::error!(account_id = %self.id, error = %error, "cannot render an account update");
                    }
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = self.subscription.changed() => {}
            }
            if let Err(error) = self.read_new_versions().await {
                tracing::warn!(account_id = %self.id, error = %error, "cannot read an account update; waiting for the next one");
            }
        }
    }

    /// Queues the versions projected since the last one sent: one query while the
    /// client is at most [`MAX_CATCH_UP`] versions behind, else the latest state only.
    async fn read_new_versions(&mut self) -> Result<(), ApiError> {
        let versions = self
            .store
            .account_versions_after(self.id, self.sent, MAX_CATCH_UP + 1)
            .await?;
        let contiguous = versions.first().map(|v| v.version) == Some(self.sent + 1);
        if contiguous && versions.len() <= MAX_CATCH_UP as usize {
            self.pending.extend(versions);
            return Ok(());
        }
        if let Some(current) = self.store.account(self.id, Reach::All).await? {
            self.pending.push_back(current);
        }
        Ok(())
    }

    /// Queues every version after the last one sent up to `current`, or only `current`
    /// when that is more than [`MAX_CATCH_UP`] versions or some are not recorded.
    async fn catch_up(&mut self, current: AccountRecord) -> Result<(), ApiError> {
        if current.version - self.sent > i64::from(MAX_CATCH_UP) {
            self.pending.push_back(current);
            return Ok(());
        }
        let versions = self
            .store
            .account_versions_after(self.id, self.sent, MAX_CATCH_UP)
            .await;
        match versions {
            Ok(versions)
                if versions.first().map(|v| v.version) == Some(self.sent + 1)
                    && versions.last().map(|v| v.version) >= Some(current.version) =>
            {
                self.pending.extend(versions);
                Ok(())
            }
            Ok(_) => {
                self.pending.push_back(current);
                Ok(())
            }
            Err(error) => {
                self.pending.push_back(current);
                Err(error.into())
            }
        }
    }
}

fn to_event(record: AccountRecord) -> Result<Event, ApiError> {
    let version = record.version;
    let account = Account::try_from(record)?;
    Event::default()
        .id(version.to_string())
        .event("account")
        .json_data(&account)
        .map_err(|error| ApiError::Corrupt(error.to_string()))
}
