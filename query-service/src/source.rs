//! The command service's event feeds: one account's stream (to fill gaps) and the
//! global feed (for the feed follower and the rebuild), read with the query service's
//! own bearer token (`COMMAND_SERVICE_TOKEN` or `COMMAND_SERVICE_TOKEN_FILE`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use shared_events::EventEnvelope;
use uuid::Uuid;

use crate::settings::Settings;

/// A bearer token that never reaches a log.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct ServiceToken(String);

impl ServiceToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(***)")
    }
}

/// Why the command service's token cannot be had; the service refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "no token for the command service: set COMMAND_SERVICE_TOKEN (a bearer token with the \
         scope events:read, e.g. from `command-service token --sub query-service --scope \
         events:read`) or COMMAND_SERVICE_TOKEN_FILE (a file holding it)"
    )]
    Missing,
    #[error("set COMMAND_SERVICE_TOKEN or COMMAND_SERVICE_TOKEN_FILE, not both")]
    Both,
    #[error("COMMAND_SERVICE_TOKEN_FILE {path} cannot be read: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("COMMAND_SERVICE_TOKEN_FILE {0} is empty")]
    Empty(String),
}

/// Where the token comes from: the settings, or a file re-read whenever its
/// modification time or length changes.
#[derive(Debug, Clone)]
pub struct TokenSource(Arc<TokenOrigin>);

#[derive(Debug)]
enum TokenOrigin {
    Fixed(ServiceToken),
    File {
        path: PathBuf,
        last: Mutex<(FileStamp, ServiceToken)>,
    },
}

/// What tells a changed file: its modification time and length.
type FileStamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.modified().ok(), metadata.len()))
}

fn read_token(path: &Path) -> Result<(FileStamp, ServiceToken), TokenError> {
    let unreadable = |error: std::io::Error| TokenError::Unreadable {
        path: path.display().to_string(),
        reason: error.to_string(),
    };
    let stamp = stamp(path).map_err(unreadable)?;
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty(path.display().to_string()));
    }
    Ok((stamp, ServiceToken::new(token)))
}

impl TokenSource {
    /// The token the settings name; an error when none or both are set, or the file
    /// cannot be read.
    pub fn from_settings(settings: &Settings) -> Result<Self, TokenError> {
        let inline = settings
            .command_service_token
            .as_ref()
            .map(|token| token.0.trim())
            .filter(|token| !token.is_empty());
        let file = settings
            .command_service_token_file
            .as_ref()
            .filter(|path| !path.as_os_str().is_empty());
        let origin = match (inline, file) {
            (Some(_), Some(_)) => return Err(TokenError::Both),
            (None, None) => return Err(TokenError::Missing),
            (Some(token), None) => TokenOrigin::Fixed(ServiceToken::new(token)),
            (None, Some(path)) => TokenOrigin::File {
                path: path.clone(),
                last: Mutex::new(read_token(path)?),
            },
        };
        Ok(Self(Arc::new(origin)))
    }

    /// The token to send now: the file's content when it changed since last read
    /// (the last good token while the file is unreadable or empty, e.g. mid-rotation).
    pub(crate) fn current(&self) -> String {
        match &*self.0 {
            TokenOrigin::Fixed(token) => token.0.clone(),
            TokenOrigin::File { path, last } => {
                let mut last = last
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if stamp(path).ok().is_some_and(|now| now != last.0) {
                    match read_token(path) {
                        Ok(fresh) => {
                            tracing::info!(path = %path.display(), "re-read COMMAND_SERVICE_TOKEN_FILE");
                            *last = fresh;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "keeping the previous command service token");
                        }
                    }
                }
                last.1.0.clone()
            }
        }
    }
}

/// Why the command service could not provide events.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the command service does not know account {0}")]
    UnknownAccount(Uuid),
    #[error("cannot reach the command service: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error(
        "the command service refused the query service's token with {status} for its {what}: \
         check that COMMAND_SERVICE_TOKEN (or COMMAND_SERVICE_TOKEN_FILE) holds a valid, \
         unexpired token with the scope events:read"
    )]
    Refused { status: u16, what: &'static str },
    #[error("the command service answered {status} to {what}")]
    Status { status: u16, what: &'static str },
    #[error("the command service sent an unreadable {what}: {source}")]
    Unreadable {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
}

impl SourceError {
    /// Whether the command service as a whole is out of reach or overloaded (so any
    /// stream would fail alike), rather than this stream's request failing.
    pub(crate) fn is_outage(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Refused { .. } => true,
            Self::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            Self::UnknownAccount(_) | Self::Unreadable { .. } => false,
        }
    }
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
    /// Where the next page starts; absent or `null` at the end of the stream (and
    /// from a command service older than paged stream reads, which sends it whole).
    #[serde(default)]
    next_from_version: Option<u64>,
}

/// HTTP client of the command service's feeds.
#[derive(Debug, Clone)]
pub struct CommandClient {
    http: reqwest::Client,
    base: String,
    token: TokenSource,
}

impl CommandClient {
    /// A client of the command service at `base_url` (`http://host:port`), sending
    /// the token of `token`.
    pub fn new(base_url: &str, token: TokenSource) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .user_agent("query-service")
            .build()?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// The events of one stream from `from_version` on, in version order, read page
    /// after page.
    pub(crate) async fn account_events(
        &self,
        account: Uuid,
        from_version: u64,
    ) -> Result<Vec<EventEnvelope>, SourceError> {
        const WHAT: &str = "account stream";
        let mut events = Vec::new();
        let mut from = from_version;
        loop {
            let url = format!(
                "{}/accounts/{account}/events?from_version={from}",
                self.base
            );
            let response = self
                .http
                .get(url)
                .bearer_auth(self.token.current())
                .send()
                .await
                .map_err(SourceError::Unreachable)?;
            if response.status() == reqwest::StatusCode::NOT_FOUND {
                return Err(SourceError::UnknownAccount(account));
            }
            let page: StreamPage = Self::read(response, WHAT).await?;
            events.extend(page.events);
            match page.next_from_version {
                Some(next) if next > from => from = next,
                _ => return Ok(events),
            }
        }
    }

    /// Up to `limit` events of the global feed after position `after`.
    pub(crate) async fn feed(&self, after: u64, limit: u32) -> Result<FeedPage, SourceError> {
        let url = format!("{}/events?after={after}&limit={limit}", self.base);
        let response = self
            .http
            .get(url)
            .bearer_auth(self.token.current())
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
        if matches!(
            status,
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
        ) {
            metrics::counter!("command_service_refusals_total", "status" => status.as_str().to_owned())
                .increment(1);
            return Err(SourceError::Refused {
                status: status.as_u16(),
                what,
            });
        }
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
