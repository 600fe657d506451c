//! The MySQL/MariaDB read model: connection and migrations, the projection's guarded
//! writes, the feed checkpoint, and the queries behind the REST API.
//!
//! Every statement is plain SQL that both MySQL 8 and MariaDB 10.11 accept. The
//! projection's statements exist once per set of tables ([`LIVE`] and [`REBUILD`]), so
//! that a rebuild runs the very same writes against fresh tables.
//!
//! - [`projection`](self::projection): the projection's guarded writes (accounts,
//!   transfers, the balance sheet's counters) and the checkpoint.
//! - [`queries`]: the reads behind the REST API.
//! - this module: the connection, the sets of tables, error classification.

mod projection;
mod queries;
mod values;

use std::time::Duration;

use service_kit::settings::SecretUrl;
use sqlx::error::ErrorKind;
use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{Connection, MySql, MySqlPool};

pub(crate) use self::projection::{Applied, Batch};
pub(crate) use self::queries::{
    AccountFilter, AccountRecord, CurrencyTotalRecord, OperationRecord, Reach, TransferCursor,
    TransferRecord,
};
use crate::projection::plan::StreamKind;

/// The statements of the projection, for one set of tables.
#[derive(Debug)]
pub struct Tables {
    head: &'static str,
    insert_account: &'static str,
    update_account: &'static str,
    insert_operations: &'static str,
    insert_versions: &'static str,
    account_versions: Versions,
    lock_accounts: &'static str,
    insert_accounts: &'static str,
    transfer: &'static str,
    lock_transfers: &'static str,
    insert_transfers: &'static str,
    update_transfer: &'static str,
    insert_transfer_versions: &'static str,
    transfer_versions: Versions,
    add_to_sheet: &'static str,
    read_checkpoint: &'static str,
    advance_checkpoint: &'static str,
}

/// The statements reading the record of projected versions of one kind of stream.
#[derive(Debug)]
struct Versions {
    /// Completed with one stream's id and a list of versions.
    projected_ids: &'static str,
    /// Completed with conditions on `stream_column` and `version`: one range of the
    /// primary key per stream, read through it whatever the table's statistics say
    /// (statistics taken while the table was empty, as after a rebuild's swap, make
    /// MySQL scan the whole table for hundreds of such ranges: seconds a page).
    recorded: &'static str,
    stream_column: &'static str,
}

impl Tables {
    fn versions(&self, kind: StreamKind) -> &Versions {
        match kind {
            StreamKind::Account => &self.account_versions,
            StreamKind::Transfer => &self.transfer_versions,
        }
    }
}

/// The columns of a transfer row, in [`projection`]'s order.
macro_rules! transfer_columns {
    () => {
        "id, from_account, to_account, amount, currency, reference, status, reason, requested_by, version, created_at, updated_at"
    };
}

macro_rules! tables {
    (
        $accounts:literal,
        $operations:literal,
        $versions:literal,
        $transfers:literal,
        $transfer_versions:literal,
        $sheet:literal,
        $checkpoint:literal
    ) => {
        Tables {
            head: concat!(
                "SELECT version, currency, status, balance FROM ",
                $accounts,
                " WHERE id = ?"
            ),
            insert_account: concat!(
                "INSERT INTO ",
                $accounts,
                " (id, owner, status, currency, balance, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            update_account: concat!(
                "UPDATE ",
                $accounts,
                " SET status = COALESCE(?, status), balance = COALESCE(?, balance), version = ?, updated_at = ?",
                " WHERE id = ? AND version = ?"
            ),
            insert_operations: concat!(
                "INSERT INTO ",
                $operations,
                " (event_id, account_id, version, type, amount, currency, balance_after, occurred_at, transfer_id) "
            ),
            insert_versions: concat!(
                "INSERT INTO ",
                $versions,
                " (account_id, version, event_id, type, status, balance, occurred_at) "
            ),
            account_versions: Versions {
                projected_ids: concat!(
                    "SELECT version, event_id FROM ",
                    $versions,
                    " WHERE account_id = "
                ),
                recorded: concat!(
                    "SELECT account_id AS stream_id, version, event_id FROM ",
                    $versions,
                    " FORCE INDEX (PRIMARY) WHERE "
                ),
                stream_column: "account_id",
            },
            lock_accounts: concat!(
                "SELECT id, owner, status, currency, balance, version, created_at, updated_at FROM ",
                $accounts,
                " WHERE id IN "
            ),
            insert_accounts: concat!(
                "INSERT INTO ",
                $accounts,
                " (id, owner, status, currency, balance, version, created_at, updated_at) "
            ),
            transfer: concat!(
                "SELECT ",
                transfer_columns!(),
                " FROM ",
                $transfers,
                " WHERE id = ?"
            ),
            lock_transfers: concat!(
                "SELECT ",
                transfer_columns!(),
                " FROM ",
                $transfers,
                " WHERE id IN "
            ),
            insert_transfers: concat!(
                "INSERT INTO ",
                $transfers,
                " (",
                transfer_columns!(),
                ") "
            ),
            update_transfer: concat!(
                "UPDATE ",
                $transfers,
                " SET status = ?, reason = ?, version = ?, updated_at = ? WHERE id = ? AND version = ?"
            ),
            insert_transfer_versions: concat!(
                "INSERT INTO ",
                $transfer_versions,
                " (transfer_id, version, event_id, type, occurred_at) "
            ),
            transfer_versions: Versions {
                projected_ids: concat!(
                    "SELECT version, event_id FROM ",
                    $transfer_versions,
                    " WHERE transfer_id = "
                ),
                recorded: concat!(
                    "SELECT transfer_id AS stream_id, version, event_id FROM ",
                    $transfer_versions,
                    " FORCE INDEX (PRIMARY) WHERE "
                ),
                stream_column: "transfer_id",
            },
            add_to_sheet: concat!(
                "INSERT INTO ",
                $sheet,
                " (currency, slot, balance, accounts, in_transit) "
            ),
            read_checkpoint: concat!(
                "SELECT generation, position FROM ",
                $checkpoint,
                " WHERE name = 'feed'"
            ),
            advance_checkpoint: concat!(
                "UPDATE ",
                $checkpoint,
                " SET position = ?, updated_at = UTC_TIMESTAMP(6) WHERE name = 'feed' AND generation = ? AND position = ?"
            ),
        }
    };
}

/// Turns a multi-row insert of accounts into an upsert of rows the batch holds
/// locked. `VALUES(col)` is the form both MySQL 8 and MariaDB 10.11 accept.
const UPDATE_LOCKED_ACCOUNTS: &str = " ON DUPLICATE KEY UPDATE status = VALUES(status), \
     balance = VALUES(balance), version = VALUES(version), updated_at = VALUES(updated_at)";

/// The same for transfers: only what a transfer's later events change.
const UPDATE_LOCKED_TRANSFERS: &str = " ON DUPLICATE KEY UPDATE status = VALUES(status), \
     reason = VALUES(reason), version = VALUES(version), updated_at = VALUES(updated_at)";

/// Turns a multi-row insert of balance-sheet deltas into additions to the counters.
const ADD_TO_COUNTERS: &str = " ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance), \
     accounts = accounts + VALUES(accounts), in_transit = in_transit + VALUES(in_transit)";

/// Rows per multi-row statement (well under the 65535 placeholders of a statement).
const ROWS_PER_STATEMENT: usize = 500;

/// The tables the service reads and the live projection writes.
pub const LIVE: Tables = tables!(
    "accounts",
    "operations",
    "account_versions",
    "transfers",
    "transfer_versions",
    "balance_sheet",
    "projection_checkpoint"
);
/// The tables a rebuild fills before swapping them in.
pub const REBUILD: Tables = tables!(
    "accounts_rebuild",
    "operations_rebuild",
    "account_versions_rebuild",
    "transfers_rebuild",
    "transfer_versions_rebuild",
    "balance_sheet_rebuild",
    "projection_checkpoint_rebuild"
);

/// Why the read model cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create or reach the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot migrate the read model: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("another replica kept migrating the read model for over {0} s")]
    MigrationLock(i32),
}

/// Longest wait for another replica's migration of the same database, in seconds.
const MIGRATION_LOCK_TIMEOUT_SECS: i32 = 120;

/// Applies the migrations (accepting those of newer releases, which are additive) under
/// a server-wide named lock of this database, on one connection: replicas started
/// together on a fresh database migrate it one after the other, and each after the
/// first finds nothing left to do. MySQL's DDL does not roll back, so without the lock a
/// second replica would meet the first's migration half done.
async fn migrate(pool: &MySqlPool) -> Result<(), OpenError> {
    let mut connection = pool.acquire().await?;
    let lock: String =
        sqlx::query_scalar("SELECT CONCAT('bank-read-model-migration:', DATABASE())")
            .fetch_one(&mut *connection)
            .await?;
    let locked: Option<i32> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
        .bind(&lock)
        .bind(MIGRATION_LOCK_TIMEOUT_SECS)
        .fetch_one(&mut *connection)
        .await?;
    if locked != Some(1) {
        return Err(OpenError::MigrationLock(MIGRATION_LOCK_TIMEOUT_SECS));
    }
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    let migrated = migrator.run(&mut *connection).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(&lock)
        .execute(&mut *connection)
        .await;
    migrated?;
    released?;
    Ok(())
}

/// The read model's connection pool.
#[derive(Debug, Clone)]
pub struct ReadStore {
    pool: MySqlPool,
}

/// How long a pooled connection may have sat idle and still be lent without a ping.
const TRUSTED_IDLE: Duration = Duration::from_millis(500);

/// Pool options that ping a connection before lending it only when it sat idle for
/// [`TRUSTED_IDLE`] or longer, instead of sqlx's ping before every loan (one more round
/// trip per batch and per read). A connection that broke in the window fails its
/// statement, as one that breaks mid-statement does: the projection retries, a read
/// answers 503.
fn pinged_when_idle(options: MySqlPoolOptions) -> MySqlPoolOptions {
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

impl ReadStore {
    /// Connects, creating the database if it is missing, and applies the migrations
    /// (accepting migrations of newer releases, which are additive).
    pub async fn open(url: &SecretUrl, max_connections: u32) -> Result<Self, OpenError> {
        let url = url.expose();
        if !MySql::database_exists(url).await?
            && let Err(error) = MySql::create_database(url).await
            && !MySql::database_exists(url).await?
        {
            return Err(error.into());
        }
        let options: MySqlConnectOptions = url.parse()?;
        let pool = pinged_when_idle(MySqlPoolOptions::new())
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        migrate(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool.
    pub(crate) fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Whether the server flushes its redo log to disk at every commit
    /// (`innodb_flush_log_at_trx_commit` 1); `None` when it cannot tell.
    pub(crate) async fn flushes_each_commit(&self) -> Option<bool> {
        sqlx::query_scalar::<_, u64>("SELECT @@GLOBAL.innodb_flush_log_at_trx_commit")
            .fetch_one(&self.pool)
            .await
            .ok()
            .map(|value| value == 1)
    }

    /// Whether the database answers (within two seconds).
    pub(crate) async fn ping(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ping).await,
            Ok(Ok(_))
        )
    }
}

fn mysql_error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// A deadlock or lock wait timeout: the transaction is worth running again.
fn is_retryable(error: &sqlx::Error) -> bool {
    matches!(mysql_error_number(error), Some(1205 | 1213))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation)
}

/// Whether an error means the database is unreachable or overloaded rather than
/// that a statement is wrong.
pub(crate) fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || is_retryable(error)
}
