//! The command service's event feeds: one account's stream (to fill gaps) and the
//! global feed (for the feed follower and the rebuild).

use std::time::Duration;

use serde::Deserialize;
use shared_events::EventEnvelope;
use uuid::Uuid;

/// Why the command service could not provide events.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the command service does not know account {0}")]
    UnknownAccount(Uuid),
    #[error("cannot reach the command service: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("the command service answered {status} to {what}")]
    Status { status: u16, what: &'static str },
    #[error("the command service sent an unreadable {what}: {source}")]
    Unreadable {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

/// A page of the global feed.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct FeedPage {
    pub(crate) events: Vec<EventEnvelope>,
    /// Position to read on from.
    pub(crate) next_after: u64,
}

#[derive(Deserialize)]
struct StreamPage {
    events: Vec<EventEnvelope>,
}

/// HTTP client of the command service's feeds.
#[derive(Debug, Clone)]
pub struct CommandClient {
    http: reqwest::Client,
    base: String,
}

impl CommandClient {
    /// A client of the command service at `base_url` (`http://host:port`).
    pub fn new(base_url: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .user_agent("query-service")
            .build()?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// The events of one account from `from_version` on, in version order.
    pub(crate) async fn account_events(
        &self,
        account: Uuid,
        from_version: u64,
    ) -> Result<Vec<EventEnvelope>, SourceError> {
        const WHAT: &str = "account stream";
        let url = format!(
            "{}/accounts/{account}/events?from_version={from_version}",
            self.base
        );
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(SourceError::Unreachable)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(SourceError::UnknownAccount(account));
        }
        let page: StreamPage = Self::read(response, WHAT).await?;
        Ok(page.events)
    }

    /// Up to `limit` events of the global feed after position `after`.
    pub(crate) async fn feed(&self, after: u64, limit: u32) -> Result<FeedPage, SourceError> {
        let url = format!("{}/events?after={after}&limit={limit}", self.base);
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(SourceError::Unreachable)?;
        Self::read(response, "feed page").await
    }

    async fn read<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
        what: &'static str,
    ) -> Result<T, SourceError> {
        let status = response.status();
        if !status.is_success() {
            return Err(SourceError::Status {
                status: status.as_u16(),
                what,
            });
        }
        response
            .json()
            .await
            .map_err(|source| SourceError::Unreadable { what, source })
    }
}
