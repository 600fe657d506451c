//! The MySQL/MariaDB read model: connection and migrations, the projection's guarded
//! writes, the feed checkpoint, and the queries behind the REST API.
//!
//! Every statement is plain SQL that both MySQL 8 and MariaDB 10.11 accept. The
//! projection's statements exist once per set of tables ([`LIVE`] and [`REBUILD`]), so
//! that a rebuild runs the very same writes against fresh tables.
//!
//! - [`projection`](self::projection): the projection's guarded writes and the checkpoint.
//! - [`queries`]: the reads behind the REST API.
//! - this module: the connection, the sets of tables, error classification.

mod projection;
mod queries;

use std::time::Duration;

use service_kit::settings::SecretUrl;
use sqlx::error::ErrorKind;
use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{MySql, MySqlPool};

pub(crate) use self::projection::Applied;
pub(crate) use self::queries::{
    AccountFilter, AccountRecord, CurrencyTotalRecord, OperationRecord, Reach,
};

/// The statements of the projection, for one set of tables.
#[derive(Debug)]
pub struct Tables {
    head: &'static str,
    insert_account: &'static str,
    update_account: &'static str,
    insert_operations: &'static str,
    insert_versions: &'static str,
    projected_ids: &'static str,
    recorded_versions: &'static str,
    lock_accounts: &'static str,
    insert_accounts: &'static str,
    read_checkpoint: &'static str,
    advance_checkpoint: &'static str,
}

macro_rules! tables {
    ($accounts:literal, $operations:literal, $versions:literal, $checkpoint:literal) => {
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
                " (event_id, account_id, version, type, amount, currency, balance_after, occurred_at) "
            ),
            insert_versions: concat!(
                "INSERT INTO ",
                $versions,
                " (account_id, version, event_id, type, status, balance, occurred_at) "
            ),
            projected_ids: concat!(
                "SELECT version, event_id FROM ",
                $versions,
                " WHERE account_id = "
            ),
            recorded_versions: concat!(
                "SELECT account_id, version, event_id FROM ",
                $versions,
                " WHERE "
            ),
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

/// Rows per multi-row statement (well under the 65535 placeholders of a statement).
const ROWS_PER_STATEMENT: usize = 500;

/// The tables the service reads and the live projection writes.
pub const LIVE: Tables = tables!(
    "accounts",
    "operations",
    "account_versions",
    "projection_checkpoint"
);
/// The tables a rebuild fills before swapping them in.
pub const REBUILD: Tables = tables!(
    "accounts_rebuild",
    "operations_rebuild",
    "account_versions_rebuild",
    "projection_checkpoint_rebuild"
);

/// Why the read model cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create or reach the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot migrate the read model: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The read model's connection pool.
#[derive(Debug, Clone)]
pub struct ReadStore {
    pool: MySqlPool,
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
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The connection pool.
    pub(crate) fn pool(&self) -> &MySqlPool {
        &self.pool
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
