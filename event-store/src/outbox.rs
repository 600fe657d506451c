use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio::sync::{Notify, mpsc};

use crate::store::{pinged_when_idle, settled_events};
use crate::{EventStore, RecordedEvent, StoreError};

/// Session advisory lock held by the one active outbox relay.
const RELAY_LOCK: i64 = 7_305_954_634_617_839_618;

/// Channel notified after appends commit.
pub(crate) const APPEND_CHANNEL: &str = "bank_outbox";

/// Most events of this process's appends held for the relay at once (about two
/// windows; about a kibibyte each): those committed while it is full are read back
/// from the store, as a relay that fell behind reads anyway.
const ANNOUNCED_CAPACITY: usize = 1_024;

/// The only active relay, across every replica: it reads the events after the relay
/// checkpoint and moves the checkpoint as the broker confirms them (the events table
/// is the outbox). Leadership is a session advisory lock on a dedicated connection: it
/// ends when that connection does, and every relay query runs on it, so a leader that
/// lost its lock can no longer read or move the checkpoint.
#[derive(Debug)]
pub struct OutboxLeader {
    connection: PgConnection,
    leading_here: LeadingHere,
}

/// While it lives, appends of this process wake the relay directly, without a
/// `NOTIFY`, and hand it the events they committed.
#[derive(Debug)]
struct LeadingHere(Announcer);

impl LeadingHere {
    fn new(announcer: &Announcer) -> Self {
        announcer.0.forget_announced();
        announcer.0.leading_here.store(true, Ordering::Relaxed);
        Self(announcer.clone())
    }
}

impl Drop for LeadingHere {
    fn drop(&mut self) {
        self.0.0.leading_here.store(false, Ordering::Relaxed);
        self.0.0.forget_announced();
    }
}

/// Wakes the relay once appends have committed, from outside their transactions: a
/// `NOTIFY` inside an append would hold Postgres' notification lock until its commit,
/// and appends would commit one at a time again. A relay leading in this process is
/// woken directly; otherwise a `NOTIFY` on [`APPEND_CHANNEL`] wakes the leader of
/// another replica, one for every append committed while the previous one was under
/// way, on a connection that does not wait for the WAL flush (a `NOTIFY` commits a
/// transaction of its own; a lost one costs the relay a second at most).
#[derive(Debug, Clone)]
pub(crate) struct Announcer(Arc<Announcements>);

#[derive(Debug)]
struct Announcements {
    local: Notify,
    leading_here: AtomicBool,
    /// The events this process committed while its relay leads, by position, until
    /// the relay takes them ([`OutboxLeader::read_after`]).
    announced: Mutex<BTreeMap<i64, RecordedEvent>>,
    /// Whether another replica announced an append since the relay last read the log:
    /// its events are read back, not waited for among the announced ones.
    heard_remote: AtomicBool,
    remote: mpsc::Sender<()>,
}

impl Announcements {
    fn announced(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, RecordedEvent>> {
        self.announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn forget_announced(&self) {
        self.announced().clear();
    }

    /// Up to `limit` announced events that directly follow position `after`: none when
    /// the next one was not announced (another replica's append, one still committing,
    /// or one that did not fit). Those at or below `after` are forgotten.
    fn take_after(&self, after: i64, limit: usize) -> Vec<RecordedEvent> {
        let mut announced = self.announced();
        *announced = announced.split_off(&(after + 1));
        let mut next = after + 1;
        let mut taken = Vec::new();
        while taken.len() < limit
            && let Some(event) = announced.remove(&next)
        {
            taken.push(event);
            next += 1;
        }
        taken
    }
}

impl Announcer {
    /// Starts the task that sends the `NOTIFY`s; it ends with the last handle.
    pub(crate) fn spawn(options: PgConnectOptions) -> Self {
        let (remote, mut pending) = mpsc::channel(1);
        let connection = pinged_when_idle(PgPoolOptions::new())
            .max_connections(1)
            .connect_lazy_with(options.options([("synchronous_commit", "off")]));
        tokio::spawn(async move {
            while pending.recv().await.is_some() {
                if let Err(error) = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(APPEND_CHANNEL)
                    .execute(&connection)
                    .await
                {
                    tracing::debug!(error = %error, "appends not announced; the relay looks anyway within a second");
                }
            }
            connection.close().await;
        });
        Self(Arc::new(Announcements {
            local: Notify::new(),
            leading_here: AtomicBool::new(false),
            announced: Mutex::new(BTreeMap::new()),
            heard_remote: AtomicBool::new(false),
            remote,
        }))
    }

    /// Says that appends have committed `committed()` (called only when the relay leads
    /// in this process, which then takes the events without reading them back).
    pub(crate) fn announce(&self, committed: impl FnOnce() -> Vec<RecordedEvent>) {
        if self.0.leading_here.load(Ordering::Relaxed) {
            let events = committed();
            let mut announced = self.0.announced();
            let room = ANNOUNCED_CAPACITY.saturating_sub(announced.len());
            announced.extend(
                events
                    .into_iter()
                    .take(room)
                    .map(|event| (event.position, event)),
            );
        } else {
            // Full: a `NOTIFY` is already due, and it serves these appends too.
            let _ = self.0.remote.try_send(());
        }
        self.0.local.notify_one();
    }
}

/// Woken by every committed append, of this replica or another.
#[derive(Debug)]
pub struct AppendListener {
    remote: PgListener,
    announcer: Announcer,
}

impl AppendListener {
    /// Waits for the next wake-up.
    pub async fn recv(&mut self) -> Result<(), StoreError> {
        tokio::select! {
            received = self.remote.recv() => {
                received?;
                self.heard_remote();
            }
            () = self.announcer.0.local.notified() => {}
        }
        Ok(())
    }

    /// Forgets the wake-ups already received: one read serves them all.
    pub fn drain(&mut self) {
        while self.remote.next_buffered().is_some() {
            self.heard_remote();
        }
    }

    fn heard_remote(&self) {
        self.announcer.0.heard_remote.store(true, Ordering::Relaxed);
    }
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
            Ok(Some(OutboxLeader {
                connection,
                leading_here: LeadingHere::new(&self.announcer),
            }))
        } else {
            connection.close().await?;
            Ok(None)
        }
    }

    /// A listener woken by every committed append.
    pub async fn listen_appends(&self) -> Result<AppendListener, StoreError> {
        Ok(AppendListener {
            remote: listen(self.pool()).await?,
            announcer: self.announcer.clone(),
        })
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
    ///
    /// Events that this process committed and that directly follow `after` are taken
    /// as they were handed over, without a read (no position between `after` and them
    /// is left to commit), unless another replica announced appends since the last
    /// read: those may follow `after` too.
    pub async fn read_after(
        &mut self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let announcements = &self.leading_here.0.0;
        if !announcements.heard_remote.swap(false, Ordering::Relaxed) {
            let announced = announcements.take_after(after, usize::try_from(limit).unwrap_or(0));
            if !announced.is_empty() {
                return Ok(announced);
            }
        }
        Ok(sqlx::query_as(settled_events!(
            "greatest($1, (SELECT position FROM relay_checkpoint))"
        ))
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
