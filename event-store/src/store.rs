use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use crate::StoreError;

/// An event to append; the store assigns its version and position.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    pub metadata: Value,
    pub occurred_at: DateTime<Utc>,
}

/// An event as committed.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: Uuid,
    pub version: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: Value,
    pub metadata: Value,
    pub occurred_at: DateTime<Utc>,
}

/// The state of an aggregate at a stream version, serialised by its owner.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub version: i64,
    pub schema_version: i32,
    pub state: Value,
}

/// A stream as needed to rebuild its aggregate: the latest snapshot, then the
/// events after it, and the stream's current version.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedStream {
    pub version: i64,
    pub snapshot: Option<Snapshot>,
    pub events: Vec<RecordedEvent>,
}

/// The response first given to a request that carried an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub key: String,
    pub fingerprint: Vec<u8>,
    pub status: u16,
    pub body: Value,
}

/// One append: events for a stream expected to be at `expected_version`
/// (0 for a new stream), optionally with the snapshot after them and the
/// response to remember under an idempotency key.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    pub stream_id: Uuid,
    pub expected_version: i64,
    pub events: &'a [NewEvent],
    pub snapshot: Option<(&'a Value, i32)>,
    pub response: Option<&'a StoredResponse>,
}

#[derive(sqlx::FromRow)]
struct StreamHead {
    version: i64,
    snapshot_version: Option<i64>,
    snapshot_schema: Option<i32>,
    snapshot: Option<Value>,
}

/// Handle on the Postgres event store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
}

macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT position, stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at FROM events ",
            $rest
        )
    };
}

impl EventStore {
    /// Connects, creating the database if it is missing, and applies the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        if !Postgres::database_exists(url).await?
            && let Err(error) = Postgres::create_database(url).await
            // A concurrent start-up may have created it in between.
            && !Postgres::database_exists(url).await?
        {
            return Err(error.into());
        }
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("./migrations");
        // A replica of the previous release must still start while a newer one has migrated.
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Appends atomically; returns the global positions of the new events in order.
    pub async fn append(&self, append: Append<'_>) -> Result<Vec<i64>, StoreError> {
        if append.events.is_empty() {
            return Err(StoreError::EmptyAppend);
        }
        let events = append.events;
        let response = append.response;
        let positions: Vec<i64> = sqlx::query_scalar(
            "SELECT append_events($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(append.stream_id)
        .bind(append.expected_version)
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.schema_version).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.data.clone()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.metadata.clone())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
        .bind(append.snapshot.map(|(state, _)| state))
        .bind(append.snapshot.map(|(_, schema)| schema))
        .bind(response.map(|r| r.key.as_str()))
        .bind(response.map(|r| r.fingerprint.as_slice()))
        .bind(response.map(|r| i16::try_from(r.status).unwrap_or(i16::MAX)))
        .bind(response.map(|r| &r.body))
        .fetch_all(&self.pool)
        .await
        .map_err(|error| {
            StoreError::from_append(
                error,
                append.stream_id,
                append.expected_version,
                response.map(|r| r.key.as_str()),
            )
        })?;
        Ok(positions)
    }

    /// The latest snapshot of a stream and the events after it; `None` for an unknown stream.
    pub async fn load(&self, stream_id: Uuid) -> Result<Option<LoadedStream>, StoreError> {
        let head: Option<StreamHead> = sqlx::query_as(
            "SELECT version, snapshot_version, snapshot_schema, snapshot FROM streams WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(head) = head else {
            return Ok(None);
        };
        let version = head.version;
        let snapshot = match (head.snapshot_version, head.snapshot_schema, head.snapshot) {
            (Some(version), Some(schema_version), Some(state)) => Some(Snapshot {
                version,
                schema_version,
                state,
            }),
            _ => None,
        };
        let after = snapshot.as_ref().map_or(0, |s| s.version);
        let events = if after < version {
            self.stream_events(stream_id, after + 1).await?
        } else {
            Vec::new()
        };
        Ok(Some(LoadedStream {
            version,
            snapshot,
            events,
        }))
    }

    /// The events of a stream from `from_version` on, in version order; `None` for an
    /// unknown stream.
    pub async fn read_stream(
        &self,
        stream_id: Uuid,
        from_version: i64,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let events = self.stream_events(stream_id, from_version).await?;
        if events.is_empty() && !self.stream_exists(stream_id).await? {
            return Ok(None);
        }
        Ok(Some(events))
    }

    async fn stream_events(
        &self,
        stream_id: Uuid,
        from_version: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(sqlx::query_as(select_events!(
            "WHERE stream_id = $1 AND version >= $2 ORDER BY version"
        ))
        .bind(stream_id)
        .bind(from_version)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn stream_exists(&self, stream_id: Uuid) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM streams WHERE stream_id = $1)")
                .bind(stream_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Up to `limit` events with a position above `after`, in position order.
    ///
    /// Positions are assigned under the append lock, which is held until commit, so
    /// they become visible in increasing order: a reader that has seen position P
    /// never later finds an unseen event below P.
    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(sqlx::query_as(select_events!(
            "WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The response stored under an idempotency key, if any.
    pub async fn stored_response(&self, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        let row: Option<(Vec<u8>, i16, Value)> =
            sqlx::query_as("SELECT fingerprint, status, body FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(fingerprint, status, body)| StoredResponse {
            key: key.to_owned(),
            fingerprint,
            status: u16::try_from(status).unwrap_or_default(),
            body,
        }))
    }

    /// Stores a response that did not come with an append (a refused command).
    /// Returns false when the key was already taken.
    pub async fn store_response(&self, response: &StoredResponse) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (key, fingerprint, status, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(&response.key)
        .bind(&response.fingerprint)
        .bind(i16::try_from(response.status).unwrap_or(i16::MAX))
        .bind(&response.body)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Forgets idempotency records older than `age`; returns how many.
    pub async fn purge_responses(&self, age: Duration) -> Result<u64, StoreError> {
        let seconds = age.as_secs_f64();
        Ok(sqlx::query(
            "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)",
        )
        .bind(seconds)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Number of events committed but not yet confirmed by the broker.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?)
    }
}
