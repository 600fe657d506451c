use uuid::Uuid;

/// Failures of the event store. A clash on a stream's version is the typed
/// [`StoreError::Conflict`], never a raw database error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream_id} is not at version {expected_version}")]
    Conflict {
        stream_id: Uuid,
        expected_version: i64,
    },
    #[error("idempotency key {0:?} was stored by a concurrent request")]
    IdempotencyKeyTaken(String),
    #[error("an append needs at least one event")]
    EmptyAppend,
    #[error("event store database error")]
    Database(#[from] sqlx::Error),
    #[error("event store migration failed")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

const VERSION_CLASH: &str = "BK409";
const UNIQUE_VIOLATION: &str = "23505";

impl StoreError {
    pub(crate) fn from_append(
        error: sqlx::Error,
        stream_id: Uuid,
        expected_version: i64,
        key: Option<&str>,
    ) -> Self {
        if let sqlx::Error::Database(db) = &error {
            let code = db.code();
            if code.as_deref() == Some(VERSION_CLASH)
                || db.constraint() == Some("events_stream_version_key")
            {
                return Self::Conflict {
                    stream_id,
                    expected_version,
                };
            }
            if code.as_deref() == Some(UNIQUE_VIOLATION)
                && db.constraint() == Some("idempotency_keys_pkey")
            {
                return Self::IdempotencyKeyTaken(key.unwrap_or_default().to_owned());
            }
        }
        Self::Database(error)
    }
}
