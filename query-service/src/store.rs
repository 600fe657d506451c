//! The MySQL/MariaDB read model: connection and migrations, the projection's guarded
//! writes, the feed checkpoint, and the queries behind the REST API.
//!
//! Every statement is plain SQL that both MySQL 8 and MariaDB 10.11 accept. The
//! projection's statements exist once per set of tables ([`LIVE`] and [`REBUILD`]), so
//! that a rebuild runs the very same writes against fresh tables.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use service_kit::settings::SecretUrl;
use sqlx::error::ErrorKind;
use sqlx::migrate::MigrateDatabase;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use uuid::Uuid;

/// The statements of the projection, for one set of tables.
#[derive(Debug)]
pub struct Tables {
    /// `live` or `rebuild`, for logs.
    pub label: &'static str,
    head: &'static str,
    insert_account: &'static str,
    update_account: &'static str,
    insert_operations: &'static str,
    lock_accounts: &'static str,
    insert_accounts: &'static str,
    read_checkpoint: &'static str,
    advance_checkpoint: &'static str,
}

macro_rules! tables {
    ($label:literal, $accounts:literal, $operations:literal, $checkpoint:literal) => {
        Tables {
            label: $label,
            head: concat!("SELECT version, currency FROM ", $accounts, " WHERE id = ?"),
            insert_account: concat!(
                "INSERT INTO ",
                $accounts,
                " (id, status, currency, balance, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
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
            lock_accounts: concat!(
                "SELECT id, status, currency, balance, version, created_at, updated_at FROM ",
                $accounts,
                " WHERE id IN "
            ),
            insert_accounts: concat!(
                "INSERT INTO ",
                $accounts,
                " (id, status, currency, balance, version, created_at, updated_at) "
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
pub const LIVE: Tables = tables!("live", "accounts", "operations", "projection_checkpoint");
/// The tables a rebuild fills before swapping them in.
pub const REBUILD: Tables = tables!(
    "rebuild",
    "accounts_rebuild",
    "operations_rebuild",
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

/// Where an account's projection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub version: i64,
    pub currency: String,
}

/// The changes one run of consecutive events makes to an account.
#[derive(Debug, Clone)]
pub struct Mutation {
    pub account: Uuid,
    /// The projected version the run starts from (0 for a new account).
    pub from_version: i64,
    pub to_version: i64,
    /// Set when the run opens the account.
    pub opening: Option<Opening>,
    pub status: Option<&'static str>,
    pub balance: Option<Decimal>,
    pub updated_at: DateTime<Utc>,
    pub operations: Vec<OperationRow>,
}

/// The columns only an account's first event sets.
#[derive(Debug, Clone)]
pub struct Opening {
    pub currency: &'static str,
    pub created_at: DateTime<Utc>,
}

/// One credit or debit.
#[derive(Debug, Clone)]
pub struct OperationRow {
    pub event_id: Uuid,
    pub version: i64,
    pub kind: &'static str,
    pub amount: Decimal,
    pub currency: &'static str,
    pub balance_after: Decimal,
    pub occurred_at: DateTime<Utc>,
}

/// What became of a guarded write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Committed: the account is now at `to_version`.
    Committed,
    /// Someone else moved the account first (or the write deadlocked); read again.
    Conflict,
    /// An event id is already recorded for another operation: impossible data.
    DuplicateEventId,
}

/// An account's whole projected row, as a batch reads, folds and writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub id: Uuid,
    pub status: String,
    pub currency: String,
    pub balance: Decimal,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl AccountRow {
    /// Where the projection of this account stands.
    pub fn head(&self) -> Head {
        Head {
            version: self.version,
            currency: self.currency.clone(),
        }
    }

    /// The row after `mutation`, which starts at this row (or opens the account when
    /// there is none); `None` when a mutation without an opening has no row to start from.
    pub fn after(current: Option<&Self>, mutation: &Mutation) -> Option<Self> {
        let (currency, created_at) = match (&mutation.opening, current) {
            (Some(opening), _) => (opening.currency.to_owned(), opening.created_at),
            (None, Some(row)) => (row.currency.clone(), row.created_at),
            (None, None) => return None,
        };
        Some(Self {
            id: mutation.account,
            status: mutation
                .status
                .map(str::to_owned)
                .or_else(|| current.map(|row| row.status.clone()))
                .unwrap_or_else(|| "CREATED".to_owned()),
            currency,
            balance: mutation
                .balance
                .or_else(|| current.map(|row| row.balance))
                .unwrap_or_default(),
            version: mutation.to_version,
            created_at,
            updated_at: mutation.updated_at,
        })
    }
}

/// One transaction applying the runs of many accounts at once: [`Batch::lock`] the
/// accounts, fold their events in memory, [`Batch::write`] the results, commit.
#[derive(Debug)]
pub struct Batch {
    tx: sqlx::Transaction<'static, MySql>,
    tables: &'static Tables,
}

impl Batch {
    /// Locks the rows of `accounts` (in id order, the one lock order of every batch)
    /// and reads them. Accounts without a row are absent from the answer.
    pub async fn lock(
        &mut self,
        accounts: &[Uuid],
    ) -> Result<HashMap<Uuid, AccountRow>, sqlx::Error> {
        let mut ids: Vec<String> = accounts
            .iter()
            .map(|id| id.hyphenated().to_string())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rows = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut select = QueryBuilder::<MySql>::new(self.tables.lock_accounts);
            select.push("(");
            let mut list = select.separated(", ");
            for id in chunk {
                list.push_bind(id.as_str());
            }
            select.push(") ORDER BY id FOR UPDATE");
            for row in select.build().fetch_all(&mut *self.tx).await? {
                let id: String = row.try_get("id")?;
                let id = Uuid::parse_str(&id).map_err(|error| sqlx::Error::ColumnDecode {
                    index: "id".to_owned(),
                    source: Box::new(error),
                })?;
                rows.insert(
                    id,
                    AccountRow {
                        id,
                        status: row.try_get("status")?,
                        currency: row.try_get("currency")?,
                        balance: row.try_get("balance")?,
                        version: row.try_get("version")?,
                        created_at: row.try_get("created_at")?,
                        updated_at: row.try_get("updated_at")?,
                    },
                );
            }
        }
        Ok(rows)
    }

    /// Inserts the `opened` accounts (a plain insert: an account someone else opened
    /// meanwhile fails the batch), overwrites the `moved` ones (rows this batch holds
    /// locked) and inserts the operations.
    pub async fn write(
        &mut self,
        opened: &[AccountRow],
        moved: &[AccountRow],
        operations: &[(Uuid, OperationRow)],
    ) -> Result<(), sqlx::Error> {
        for (rows, suffix) in [(opened, ""), (moved, UPDATE_LOCKED_ACCOUNTS)] {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut insert = QueryBuilder::<MySql>::new(self.tables.insert_accounts);
                insert.push_values(chunk, |mut row, account| {
                    row.push_bind(account.id.hyphenated().to_string())
                        .push_bind(account.status.clone())
                        .push_bind(account.currency.clone())
                        .push_bind(account.balance)
                        .push_bind(account.version)
                        .push_bind(account.created_at)
                        .push_bind(account.updated_at);
                });
                insert.push(suffix);
                insert.build().execute(&mut *self.tx).await?;
            }
        }
        for chunk in operations.chunks(ROWS_PER_STATEMENT) {
            insert_operations(self.tables, chunk.iter().map(|(id, op)| (*id, op)))
                .build()
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// A multi-row insert of operations, each with its account.
fn insert_operations<'a>(
    tables: &Tables,
    operations: impl IntoIterator<Item = (Uuid, &'a OperationRow)>,
) -> QueryBuilder<MySql> {
    let mut insert = QueryBuilder::<MySql>::new(tables.insert_operations);
    insert.push_values(operations, |mut row, (account, op)| {
        row.push_bind(op.event_id.hyphenated().to_string())
            .push_bind(account.hyphenated().to_string())
            .push_bind(op.version)
            .push_bind(op.kind)
            .push_bind(op.amount)
            .push_bind(op.currency)
            .push_bind(op.balance_after)
            .push_bind(op.occurred_at);
    });
    insert
}

/// A credit or debit as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperationRecord {
    pub event_id: String,
    pub version: i64,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub amount: Decimal,
    pub currency: String,
    pub balance_after: Decimal,
    pub occurred_at: DateTime<Utc>,
}

/// An account as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRecord {
    pub id: String,
    pub status: String,
    pub currency: String,
    pub balance: Decimal,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The total of one currency over the accounts that are not closed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CurrencyTotalRecord {
    pub currency: String,
    pub balance: Decimal,
    pub accounts: i64,
}

/// Filters of the account listing.
#[derive(Debug, Clone, Default)]
pub struct AccountFilter {
    pub status: Option<&'static str>,
    pub currency: Option<&'static str>,
}

macro_rules! list_accounts {
    ($where:literal) => {
        concat!(
            "SELECT id, status, currency, balance, version, created_at, updated_at FROM accounts WHERE ",
            $where,
            " id > ? ORDER BY id LIMIT ?"
        )
    };
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
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Whether the database answers (within two seconds).
    pub async fn ping(&self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ping).await,
            Ok(Ok(_))
        )
    }

    /// The projected version and currency of an account; `None` before its first event.
    pub async fn head(&self, tables: &Tables, account: Uuid) -> Result<Option<Head>, sqlx::Error> {
        let row = sqlx::query(tables.head)
            .bind(account.hyphenated().to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Head {
                version: row.try_get("version")?,
                currency: row.try_get("currency")?,
            })
        })
        .transpose()
    }

    /// Applies a run of events in one transaction, guarded by the account's version.
    pub async fn apply(
        &self,
        tables: &Tables,
        mutation: &Mutation,
    ) -> Result<Applied, sqlx::Error> {
        let id = mutation.account.hyphenated().to_string();
        let mut tx = self.pool.begin().await?;
        let moved = match &mutation.opening {
            Some(opening) => sqlx::query(tables.insert_account)
                .bind(&id)
                .bind(mutation.status.unwrap_or("CREATED"))
                .bind(opening.currency)
                .bind(mutation.balance.unwrap_or_default())
                .bind(mutation.to_version)
                .bind(opening.created_at)
                .bind(mutation.updated_at)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected()),
            None => sqlx::query(tables.update_account)
                .bind(mutation.status)
                .bind(mutation.balance)
                .bind(mutation.to_version)
                .bind(mutation.updated_at)
                .bind(&id)
                .bind(mutation.from_version)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected()),
        };
        match moved {
            Ok(1) => {}
            Ok(_) => return Ok(Applied::Conflict),
            Err(error) if is_retryable(&error) || is_unique_violation(&error) => {
                return Ok(Applied::Conflict);
            }
            Err(error) => return Err(error),
        }
        if !mutation.operations.is_empty() {
            let operations = mutation.operations.iter().map(|op| (mutation.account, op));
            match insert_operations(tables, operations)
                .build()
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {}
                Err(error) if is_unique_violation(&error) => return Ok(Applied::DuplicateEventId),
                Err(error) if is_retryable(&error) => return Ok(Applied::Conflict),
                Err(error) => return Err(error),
            }
        }
        match tx.commit().await {
            Ok(()) => Ok(Applied::Committed),
            Err(error) if is_retryable(&error) => Ok(Applied::Conflict),
            Err(error) => Err(error),
        }
    }

    /// Starts a transaction applying many accounts' runs at once.
    pub async fn batch(&self, tables: &'static Tables) -> Result<Batch, sqlx::Error> {
        Ok(Batch {
            tx: self.pool.begin().await?,
            tables,
        })
    }

    /// The feed checkpoint: its generation and the position verified so far.
    pub async fn checkpoint(&self, tables: &Tables) -> Result<(String, i64), sqlx::Error> {
        let row = sqlx::query(tables.read_checkpoint)
            .fetch_one(&self.pool)
            .await?;
        Ok((row.try_get("generation")?, row.try_get("position")?))
    }

    /// Moves the checkpoint from `from` to `to`, unless someone else (another replica,
    /// or a rebuild that swapped the tables) changed it since it was read.
    pub async fn advance_checkpoint(
        &self,
        tables: &Tables,
        generation: &str,
        from: i64,
        to: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(tables.advance_checkpoint)
            .bind(to)
            .bind(generation)
            .bind(from)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// One account.
    pub async fn account(&self, id: Uuid) -> Result<Option<AccountRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, status, currency, balance, version, created_at, updated_at FROM accounts WHERE id = ?",
        )
        .bind(id.hyphenated().to_string())
        .fetch_optional(&self.pool)
        .await
    }

    /// Up to `limit` accounts with an id above `after`, in id order.
    pub async fn accounts(
        &self,
        filter: &AccountFilter,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AccountRecord>, sqlx::Error> {
        let after = after
            .map(|id| id.hyphenated().to_string())
            .unwrap_or_default();
        let query = match (filter.status, filter.currency) {
            (None, None) => sqlx::query_as(list_accounts!("")),
            (Some(status), None) => sqlx::query_as(list_accounts!("status = ? AND")).bind(status),
            (None, Some(currency)) => {
                sqlx::query_as(list_accounts!("currency = ? AND")).bind(currency)
            }
            (Some(status), Some(currency)) => {
                sqlx::query_as(list_accounts!("status = ? AND currency = ? AND"))
                    .bind(status)
                    .bind(currency)
            }
        };
        query.bind(after).bind(limit).fetch_all(&self.pool).await
    }

    /// Up to `limit` operations of an account with a version above `after`, oldest first.
    pub async fn operations(
        &self,
        account: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<OperationRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT event_id, version, type, amount, currency, balance_after, occurred_at FROM operations \
             WHERE account_id = ? AND version > ? ORDER BY version LIMIT ?",
        )
        .bind(account.hyphenated().to_string())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Balance totals per currency over the accounts that are not closed.
    pub async fn balance_sheet(&self) -> Result<Vec<CurrencyTotalRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT currency, CAST(SUM(balance) AS DECIMAL(38,4)) AS balance, COUNT(*) AS accounts \
             FROM accounts WHERE status <> 'CLOSED' GROUP BY currency ORDER BY currency",
        )
        .fetch_all(&self.pool)
        .await
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
pub fn is_unavailable(error: &sqlx::Error) -> bool {
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
