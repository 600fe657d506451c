use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, PgConnection};

use crate::{EventStore, RecordedEvent, StoreError};

/// Session advisory lock held by the one active outbox relay.
const RELAY_LOCK: i64 = 7_305_954_634_617_839_618;

/// Channel notified by every append.
pub(crate) const APPEND_CHANNEL: &str = "bank_outbox";

/// The only active reader of the outbox, across every replica. Leadership is a
/// session advisory lock on a dedicated connection: it ends when that connection
/// does, and every outbox query runs on it, so a leader that lost its lock can no
/// longer read or acknowledge.
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
            // Acknowledging publishes need not wait for the WAL flush: losing one in a
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
    /// The oldest unpublished events, in position order (which is version order per stream).
    pub async fn pending(&mut self, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT e.position, e.stream_id, e.version, e.event_id, e.event_type, e.schema_version,
                    e.data, e.metadata, e.occurred_at
               FROM outbox o JOIN events e USING (position)
              ORDER BY o.position
              LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut self.connection)
        .await?)
    }

    /// Marks events as confirmed by the broker.
    pub async fn acknowledge(&mut self, positions: &[i64]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
            .bind(positions)
            .execute(&mut self.connection)
            .await?;
        Ok(())
    }

    /// Gives up leadership.
    pub async fn resign(self) -> Result<(), StoreError> {
        self.connection.close().await?;
        Ok(())
    }
}
