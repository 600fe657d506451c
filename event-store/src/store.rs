use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgExecutor, PgPool, Postgres};
use uuid::Uuid;

use crate::StoreError;
use crate::outbox::Announcer;

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

impl NewEvent {
    /// The event as committed at `version` of `stream_id`, at `position`.
    pub(crate) fn recorded(&self, stream_id: Uuid, version: i64, position: i64) -> RecordedEvent {
        RecordedEvent {
            position,
            stream_id,
            version,
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            data: self.data.clone(),
            metadata: self.metadata.clone(),
            occurred_at: self.occurred_at,
        }
    }
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
    stream_id: Uuid,
    version: i64,
    snapshot_version: Option<i64>,
    snapshot_schema: Option<i32>,
    snapshot: Option<Value>,
}

impl StreamHead {
    fn into_loaded(self) -> LoadedStream {
        let snapshot = match (self.snapshot_version, self.snapshot_schema, self.snapshot) {
            (Some(version), Some(schema_version), Some(state)) => Some(Snapshot {
                version,
                schema_version,
                state,
            }),
            _ => None,
        };
        LoadedStream {
            version: self.version,
            snapshot,
            events: Vec::new(),
        }
    }
}

/// One stream's part of a batch append: its events, the snapshot after them (`None`
/// keeps the stream's previous one), the responses to remember under idempotency keys,
/// and the stream whose append it requires.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream_id: Uuid,
    pub expected_version: i64,
    pub events: Vec<NewEvent>,
    pub snapshot: Option<Value>,
    pub responses: Vec<StoredResponse>,
    /// Appended only if this other stream of the batch is accepted (a transfer's
    /// record of a leg requires the leg's account).
    pub requires: Option<Uuid>,
}

/// Handle on the Postgres event store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    pub(crate) announcer: Announcer,
}

/// One writer's own connection, outside the store's pool and held across its loads and
/// appends: sqlx pings a pooled connection as it goes back to the pool, a round trip
/// per use that a held one does not make, and a writer holding one of the pool's would
/// leave a small pool short. It is opened on first use (within the pool's acquire
/// timeout), closed after a load or an append that failed otherwise than by a taken
/// idempotency key, and pinged before use after an idle spell, as the pool's loans are.
#[derive(Debug)]
pub struct WriterConnection {
    store: EventStore,
    held: Option<(PgConnection, Instant)>,
}

impl WriterConnection {
    /// [`EventStore::append_batch`] on the held connection.
    pub async fn append_batch(
        &mut self,
        appends: &[StreamAppend],
        snapshot_schema: i32,
    ) -> Result<HashSet<Uuid>, StoreError> {
        let mut connection = self.connection().await?;
        let appended = self
            .store
            .append_batch_on(&mut connection, appends, snapshot_schema)
            .await;
        if matches!(appended, Ok(_) | Err(StoreError::IdempotencyKeyTaken(_))) {
            self.held = Some((connection, Instant::now()));
        }
        appended
    }

    /// [`EventStore::load_many`] on the held connection.
    pub async fn load_many(
        &mut self,
        stream_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, LoadedStream>, StoreError> {
        let mut connection = self.connection().await?;
        let loaded = load_many_on(&mut connection, stream_ids).await;
        if loaded.is_ok() {
            self.held = Some((connection, Instant::now()));
        }
        loaded
    }

    /// The held connection if it was used lately or still answers, else a new one.
    async fn connection(&mut self) -> Result<PgConnection, StoreError> {
        tokio::time::timeout(CONNECT_TIMEOUT, async {
            if let Some((mut connection, last_used)) = self.held.take()
                && (last_used.elapsed() < TRUSTED_IDLE || connection.ping().await.is_ok())
            {
                return Ok(connection);
            }
            Ok(PgConnection::connect_with(&self.store.pool.connect_options()).await?)
        })
        .await
        .unwrap_or(Err(StoreError::Database(sqlx::Error::PoolTimedOut)))
    }
}

/// The heads of `stream_ids` and, for those whose snapshot is behind, the events after it.
async fn load_many_on(
    connection: &mut PgConnection,
    stream_ids: &[Uuid],
) -> Result<HashMap<Uuid, LoadedStream>, StoreError> {
    let heads: Vec<StreamHead> = sqlx::query_as(
        "SELECT stream_id, version, snapshot_version, snapshot_schema, snapshot FROM streams WHERE stream_id = ANY($1)",
    )
    .bind(stream_ids)
    .fetch_all(&mut *connection)
    .await?;
    let mut streams: HashMap<Uuid, LoadedStream> = heads
        .into_iter()
        .map(|head| (head.stream_id, head.into_loaded()))
        .collect();
    let behind: Vec<(Uuid, i64)> = streams
        .iter()
        .filter_map(|(id, s)| {
            let snapshot_version = s.snapshot.as_ref().map_or(0, |snapshot| snapshot.version);
            (snapshot_version < s.version).then_some((*id, snapshot_version))
        })
        .collect();
    if !behind.is_empty() {
        let tails: Vec<RecordedEvent> = sqlx::query_as(
            "SELECT e.position, e.stream_id, e.version, e.event_id, e.event_type, e.schema_version, e.data, e.metadata, e.occurred_at
               FROM events e JOIN unnest($1::uuid[], $2::bigint[]) AS f (stream_id, after)
                 ON e.stream_id = f.stream_id AND e.version > f.after
              ORDER BY e.stream_id, e.version",
        )
        .bind(behind.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(behind.iter().map(|(_, after)| *after).collect::<Vec<_>>())
        .fetch_all(&mut *connection)
        .await?;
        for event in tails {
            if let Some(stream) = streams.get_mut(&event.stream_id) {
                stream.events.push(event);
            }
        }
    }
    Ok(streams)
}

/// Up to `$2` events after the position `$after` (an SQL expression) that are settled:
/// no event at or below the last of them can still commit (`settled_events()` in the
/// migrations).
macro_rules! settled_events {
    ($after:literal) => {
        concat!(
            "SELECT position, stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at ",
            "FROM settled_events(",
            $after,
            ", $2)"
        )
    };
}
pub(crate) use settled_events;

/// The position up to which the log is settled: no event at or below it can still
/// commit (`settled_position()` in the migrations). Read the events in a later statement.
pub(crate) async fn settled_position<'e>(executor: impl PgExecutor<'e>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar("SELECT settled_position()")
        .fetch_one(executor)
        .await?)
}

macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT position, stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at FROM events ",
            $rest
        )
    };
}

/// How long a pooled connection may have sat idle and still be lent without a ping.
const TRUSTED_IDLE: Duration = Duration::from_millis(500);

/// How long a borrower waits for a connection: the pool's, or a writer's own.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Pool options that ping a connection before lending it only when it sat idle for
/// [`TRUSTED_IDLE`] or longer. sqlx pings every connection it lends by default: one
/// more round trip per loan, as costly as a small statement. A connection that broke
/// in the window fails its statement, as one that breaks mid-statement does.
pub(crate) fn pinged_when_idle(options: PgPoolOptions) -> PgPoolOptions {
    options
        .test_before_acquire(false)
        .before_acquire(|connection, lent| {
            Box::pin(async move {
                if lent.idle_for >= TRUSTED_IDLE {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
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
        let pool = pinged_when_idle(PgPoolOptions::new())
            .max_connections(max_connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("./migrations");
        // A replica of the previous release must still start while a newer one has migrated.
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        let announcer = Announcer::spawn(pool.connect_options().as_ref().clone());
        Ok(Self { pool, announcer })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A connection to load and append on, held until dropped ([`WriterConnection`]).
    pub fn writer_connection(&self) -> WriterConnection {
        WriterConnection {
            store: self.clone(),
            held: None,
        }
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
        self.announcer.announce(|| {
            events
                .iter()
                .zip(&positions)
                .zip(append.expected_version + 1..)
                .map(|((event, &position), version)| {
                    event.recorded(append.stream_id, version, position)
                })
                .collect()
        });
        Ok(positions)
    }

    /// Appends to many streams in one transaction. A stream whose version moved is
    /// skipped, not an error, and so is a stream whose required stream was skipped:
    /// the accepted streams are returned. A taken idempotency key fails the whole
    /// batch with [`StoreError::IdempotencyKeyTaken`].
    pub async fn append_batch(
        &self,
        appends: &[StreamAppend],
        snapshot_schema: i32,
    ) -> Result<HashSet<Uuid>, StoreError> {
        self.append_batch_on(&self.pool, appends, snapshot_schema)
            .await
    }

    /// [`EventStore::append_batch`] on `executor`.
    async fn append_batch_on<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        appends: &[StreamAppend],
        snapshot_schema: i32,
    ) -> Result<HashSet<Uuid>, StoreError> {
        // Same lock order in every batch: no deadlock between concurrent batches. The
        // streams that require another come last, after the one they require.
        let mut ordered: Vec<&StreamAppend> =
            appends.iter().filter(|a| !a.events.is_empty()).collect();
        ordered.sort_by_key(|a| (a.requires.is_some(), a.stream_id));
        let events = || {
            ordered
                .iter()
                .flat_map(|a| a.events.iter().map(move |e| (a, e)))
        };
        let responses = || {
            ordered
                .iter()
                .flat_map(|a| a.responses.iter().map(move |r| (a, r)))
        };
        let version_of = |a: &StreamAppend, index: usize| {
            a.expected_version + 1 + i64::try_from(index).unwrap_or(i64::MAX)
        };
        if let [single] = ordered.as_slice()
            && let [event] = single.events.as_slice()
            && single.responses.is_empty()
            && single.requires.is_none()
        {
            return self
                .append_event_on(executor, single, event, snapshot_schema)
                .await;
        }
        let appended: Vec<(Uuid, i64, i64)> = sqlx::query_as(
            "SELECT appended_stream, appended_version, appended_position FROM append_batch_positioned($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(ordered.iter().map(|a| a.stream_id).collect::<Vec<_>>())
        .bind(ordered.iter().map(|a| a.expected_version).collect::<Vec<_>>())
        .bind(ordered.iter().map(|a| version_of(a, a.events.len() - 1)).collect::<Vec<_>>())
        .bind(ordered.iter().map(|a| a.snapshot.as_ref()).collect::<Vec<_>>())
        .bind(snapshot_schema)
        .bind(events().map(|(a, _)| a.stream_id).collect::<Vec<_>>())
        .bind(
            ordered
                .iter()
                .flat_map(|a| (0..a.events.len()).map(move |index| version_of(a, index)))
                .collect::<Vec<_>>(),
        )
        .bind(events().map(|(_, e)| e.event_id).collect::<Vec<_>>())
        .bind(events().map(|(_, e)| e.event_type.as_str()).collect::<Vec<_>>())
        .bind(events().map(|(_, e)| e.schema_version).collect::<Vec<_>>())
        .bind(events().map(|(_, e)| &e.data).collect::<Vec<_>>())
        .bind(events().map(|(_, e)| &e.metadata).collect::<Vec<_>>())
        .bind(events().map(|(_, e)| e.occurred_at).collect::<Vec<_>>())
        .bind(responses().map(|(a, _)| a.stream_id).collect::<Vec<_>>())
        .bind(responses().map(|(_, r)| r.key.as_str()).collect::<Vec<_>>())
        .bind(responses().map(|(_, r)| r.fingerprint.as_slice()).collect::<Vec<_>>())
        .bind(responses().map(|(_, r)| i16::try_from(r.status).unwrap_or(i16::MAX)).collect::<Vec<_>>())
        .bind(responses().map(|(_, r)| &r.body).collect::<Vec<_>>())
        .bind(ordered.iter().map(|a| a.requires).collect::<Vec<_>>())
        .fetch_all(executor)
        .await
        .map_err(|error| StoreError::from_append(error, Uuid::nil(), 0, Some("(batch)")))?;
        if !appended.is_empty() {
            self.announcer.announce(|| {
                let written: HashMap<(Uuid, i64), &NewEvent> = ordered
                    .iter()
                    .flat_map(|a| {
                        a.events
                            .iter()
                            .enumerate()
                            .map(move |(index, e)| ((a.stream_id, version_of(a, index)), e))
                    })
                    .collect();
                appended
                    .iter()
                    .filter_map(|&(stream_id, version, position)| {
                        let event = written.get(&(stream_id, version))?;
                        Some(event.recorded(stream_id, version, position))
                    })
                    .collect()
            });
        }
        Ok(appended.into_iter().map(|(stream, _, _)| stream).collect())
    }

    /// [`EventStore::append_batch`] of one event to one stream, with no response to
    /// remember and no stream it requires: `append_event()`, which spends less than
    /// the batch function on unpacking arrays (see its migration).
    async fn append_event_on<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        append: &StreamAppend,
        event: &NewEvent,
        snapshot_schema: i32,
    ) -> Result<HashSet<Uuid>, StoreError> {
        let appended: Option<(i64, i64)> = sqlx::query_as(
            "SELECT appended_version, appended_position FROM append_event($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(append.stream_id)
        .bind(append.expected_version)
        .bind(append.snapshot.as_ref())
        .bind(snapshot_schema)
        .bind(event.event_id)
        .bind(event.event_type.as_str())
        .bind(event.schema_version)
        .bind(&event.data)
        .bind(&event.metadata)
        .bind(event.occurred_at)
        .fetch_optional(executor)
        .await
        .map_err(|error| {
            StoreError::from_append(error, append.stream_id, append.expected_version, None)
        })?;
        let Some((version, position)) = appended else {
            return Ok(HashSet::new());
        };
        self.announcer
            .announce(|| vec![event.recorded(append.stream_id, version, position)]);
        Ok(HashSet::from([append.stream_id]))
    }

    /// [`EventStore::load`] for many streams at once; unknown streams are absent from the map.
    pub async fn load_many(
        &self,
        stream_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, LoadedStream>, StoreError> {
        load_many_on(&mut *self.pool.acquire().await?, stream_ids).await
    }

    /// The latest snapshot of a stream and the events after it; `None` for an unknown stream.
    pub async fn load(&self, stream_id: Uuid) -> Result<Option<LoadedStream>, StoreError> {
        let head: Option<StreamHead> = sqlx::query_as(
            "SELECT stream_id, version, snapshot_version, snapshot_schema, snapshot FROM streams WHERE stream_id = $1",
        )
        .bind(stream_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(head) = head else {
            return Ok(None);
        };
        let mut loaded = head.into_loaded();
        let after = loaded.snapshot.as_ref().map_or(0, |s| s.version);
        if after < loaded.version {
            loaded.events = self.stream_events(stream_id, after + 1).await?;
        }
        Ok(Some(loaded))
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

    /// Up to `limit` events of a stream from `from_version` on, in version order, and
    /// whether more follow; `None` for an unknown stream.
    pub async fn read_stream_page(
        &self,
        stream_id: Uuid,
        from_version: i64,
        limit: i64,
    ) -> Result<Option<(Vec<RecordedEvent>, bool)>, StoreError> {
        let mut events: Vec<RecordedEvent> = sqlx::query_as(select_events!(
            "WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
        ))
        .bind(stream_id)
        .bind(from_version)
        .bind(limit.saturating_add(1))
        .fetch_all(&self.pool)
        .await?;
        if events.is_empty() && !self.stream_exists(stream_id).await? {
            return Ok(None);
        }
        let more = i64::try_from(events.len()).unwrap_or(i64::MAX) > limit;
        events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(Some((events, more)))
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
    /// Appends commit concurrently, so a position may commit after a higher one; only
    /// settled positions are read (`settled_events()` in the migrations), so a reader
    /// that has seen position P never later finds an unseen event below P.
    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(sqlx::query_as(settled_events!("$1"))
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

    /// Number of events committed but not yet confirmed by the broker: the head
    /// position less the relay checkpoint.
    pub async fn relay_backlog(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT coalesce((SELECT max(position) FROM events), 0) - (SELECT position FROM relay_checkpoint)",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
