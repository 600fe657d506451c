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
    /// The cause is in the message, so a log line shows why (and is not also given
    /// as the `source`, which would print it twice in a chain).
    #[error("event store database error: {0}")]
    Database(sqlx::Error),
    #[error("event store migration failed: {0}")]
    Migration(sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Migration(error)
    }
}

const VERSION_CLASH: &str = "BK409";
const UNIQUE_VIOLATION: &str = "23505";

impl StoreError {
    /// Whether a write that failed with this error may nevertheless have committed:
    /// the connection broke (I/O or protocol error) after the statement was sent, so
    /// the commit's fate is unknown. A pool timeout or a refusal by the database is
    /// not: nothing was committed.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::Database(sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
        )
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broken_connection_leaves_the_outcome_unknown() {
        let broken = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(StoreError::from(sqlx::Error::Io(broken)).outcome_unknown());
        assert!(StoreError::from(sqlx::Error::Protocol("garbled".into())).outcome_unknown());
        assert!(!StoreError::from(sqlx::Error::PoolTimedOut).outcome_unknown());
        assert!(
            !StoreError::Conflict {
                stream_id: Uuid::nil(),
                expected_version: 1
            }
            .outcome_unknown()
        );
    }

    #[test]
    fn a_database_error_names_its_cause() {
        let cause = sqlx::Error::PoolTimedOut;
        let message = StoreError::from(sqlx::Error::PoolTimedOut).to_string();
        assert!(message.contains(&cause.to_string()), "{message}");
        assert!(
            message.starts_with("event store database error: "),
            "{message}"
        );
    }
}
