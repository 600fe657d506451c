//! What the transfer process needs of the store: one leader across replicas, its
//! checkpoint, and the transfer requests after a position.

use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::store::settled_position;
use crate::{EventStore, StoreError};

/// Session advisory lock held by the one active transfer process.
const TRANSFER_PROCESS_LOCK: i64 = 7_305_954_634_617_839_619;

/// Channel notified by the commit of a transfer request.
const REQUEST_CHANNEL: &str = "bank_transfer_requests";

/// The only active transfer process, across every replica. Leadership is a session
/// advisory lock on a dedicated connection; the checkpoint is read and moved on that
/// connection only, so a process that lost the lock can no longer move it.
#[derive(Debug)]
pub struct TransferProcessLeader {
    connection: PgConnection,
}

/// A transfer request in the feed: where it is, and the transfer it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct TransferRequest {
    pub position: i64,
    pub transfer_id: Uuid,
}

impl EventStore {
    /// Becomes the transfer process leader if no other process is; `None` otherwise.
    pub async fn try_lead_transfers(&self) -> Result<Option<TransferProcessLeader>, StoreError> {
        let options = self.pool().connect_options();
        let mut connection = PgConnection::connect_with(&options).await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(TRANSFER_PROCESS_LOCK)
            .fetch_one(&mut connection)
            .await?;
        if locked {
            // Losing a checkpoint move in a crash only makes the next leader look at
            // transfers that have ended: no need to wait for the WAL flush.
            sqlx::query("SET synchronous_commit TO off")
                .execute(&mut connection)
                .await?;
            Ok(Some(TransferProcessLeader { connection }))
        } else {
            connection.close().await?;
            Ok(None)
        }
    }

    /// A listener woken by every commit that requests a transfer (not by other
    /// appends): a trigger on the events notifies it.
    pub async fn listen_transfer_requests(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(self.pool()).await?;
        listener.listen(REQUEST_CHANNEL).await?;
        Ok(listener)
    }

    /// Whether an event with this id was committed.
    pub async fn event_exists(&self, event_id: Uuid) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE event_id = $1)")
                .bind(event_id)
                .fetch_one(self.pool())
                .await?,
        )
    }
}

impl TransferProcessLeader {
    /// The position up to which every requested transfer has ended.
    pub async fn checkpoint(&mut self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT position FROM transfer_process_checkpoint")
                .fetch_one(&mut self.connection)
                .await?,
        )
    }

    /// Moves the checkpoint to `position` (never back).
    pub async fn save_checkpoint(&mut self, position: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE transfer_process_checkpoint SET position = $1, updated_at = now() WHERE position < $1",
        )
        .bind(position)
        .execute(&mut self.connection)
        .await?;
        Ok(())
    }

    /// Up to `limit` transfer requests after `after`, in position order, settled (as
    /// [`EventStore::read_all`]).
    pub async fn requests_after(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<TransferRequest>, StoreError> {
        let settled = settled_position(&mut self.connection).await?;
        if settled <= after {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(
            "SELECT position, stream_id AS transfer_id FROM events
              WHERE event_type = 'TransferRequested' AND position > $1 AND position <= $3
              ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .bind(settled)
        .fetch_all(&mut self.connection)
        .await?)
    }
}
