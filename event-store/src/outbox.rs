use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, PgConnection};

use crate::{EventStore, RecordedEvent, StoreError};

/// Session advisory lock held by the one active outbox relay.
const RELAY_LOCK: i64 = 7_305_954_634_617_839_618;

/// Channel notified by every append.
pub(crate) const APPEND_CHANNEL: &str = "bank_outbox";

/// The only active relay, across every replica: it reads the events after the relay
/// checkpoint and moves the checkpoint as the broker confirms them (the events table
/// is the outbox). Leadership is a session advisory lock on a dedicated connection: it
/// ends when that connection does, and every relay query runs on it, so a leader that
/// lost its lock can no longer read or move the checkpoint.
#[derive(Debug)]
pub struct OutboxLeader {
    connection: PgConnection,
}

impl EventStore {
    /// Becomes the outbox leader if no other relay is; `None` otherwise.
    pub async fn try_lead_outbox(&self) -> Result<Option<OutboxLeader>, StoreError> {
        let options = self.pool().connect_options();
        let mut connection = PgConnection::connect_with(&options).await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if locked {
            // Moving the checkpoint need not wait for the WAL flush: losing a move in a
            // crash only republishes events, which delivery at least once allows.
            sqlx::query("SET synchronous_commit TO off")
                .execute(&mut connection)
                .await?;
            Ok(Some(OutboxLeader { connection }))
        } else {
            connection.close().await?;
            Ok(None)
        }
    }

    /// A listener woken by every committed append.
    pub async fn listen_appends(&self) -> Result<PgListener, StoreError> {
        listen(self.pool()).await
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, StoreError> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(APPEND_CHANNEL).await?;
    Ok(listener)
}

impl OutboxLeader {
    /// The position of the last event the broker confirmed: every event after it is
    /// still to be published.
    pub async fn checkpoint(&mut self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT position FROM relay_checkpoint")
            .fetch_one(&mut self.connection)
            .await?)
    }

    /// Up to `limit` events after position `after`, or after the checkpoint when that
    /// is further (moved past events that are not to be published, e.g. bulk-loaded
    /// ones), in position order (which is version order per stream); see
    /// [`EventStore::read_all`] for why no event can appear later below one already read.
    pub async fn read_after(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT position, stream_id, version, event_id, event_type, schema_version, data, metadata, occurred_at
               FROM events
              WHERE position > greatest($1, (SELECT position FROM relay_checkpoint))
              ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&mut self.connection)
        .await?)
    }

    /// Records that the broker confirmed every event up to `position`. The checkpoint
    /// never moves back.
    pub async fn confirm(&mut self, position: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE relay_checkpoint SET position = $1, updated_at = now() WHERE position < $1",
        )
        .bind(position)
        .execute(&mut self.connection)
        .await?;
        Ok(())
    }

    /// The position of the last committed event (0 when there is none).
    pub async fn head(&mut self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
                .fetch_one(&mut self.connection)
                .await?,
        )
    }

    /// Gives up leadership.
    pub async fn resign(self) -> Result<(), StoreError> {
        self.connection.close().await?;
        Ok(())
    }
}
