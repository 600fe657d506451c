//! MariaDB/MySQL: B3 (the global feed replayed as raw batched inserts of the read
//! model's rows), and looking at how far the query service's projection got.

use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};

use anyhow::{Context, bail};
use rust_decimal::prelude::ToPrimitive;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool, QueryBuilder};

pub(crate) fn database_url(server: &str, name: &str) -> String {
    format!("{}/{name}", server.trim_end_matches('/'))
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<MySqlPool> {
    MySqlPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .context("cannot connect to MariaDB/MySQL")
}

pub(crate) async fn server_version(server: &str) -> anyhow::Result<String> {
    server_value(server, "SELECT VERSION()").await
}

/// The one value `select` gives, on a connection of its own.
async fn server_value<T>(server: &str, select: &'static str) -> anyhow::Result<T>
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql>,
{
    let pool = connect(server).await?;
    let value = sqlx::query_scalar(select).fetch_one(&pool).await?;
    pool.close().await;
    Ok(value)
}

pub(crate) async fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("refusing database name {name:?}");
    }
    let pool = connect(server).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

/// `innodb_flush_log_at_trx_commit` as the deployments set it for the read model
/// (docs/operations.md, "Read model durability"): the redo log is written at each
/// commit and flushed to disk once a second. The run measures the system so
/// configured, and the lag once more with the log flushed at each commit (1).
pub(crate) const DEPLOYED_LOG_FLUSH: u8 = 2;

/// The server's `innodb_flush_log_at_trx_commit`.
pub(crate) async fn log_flush(server: &str) -> anyhow::Result<u8> {
    let value: u64 = server_value(server, "SELECT @@GLOBAL.innodb_flush_log_at_trx_commit").await?;
    u8::try_from(value).context("innodb_flush_log_at_trx_commit out of range")
}

/// Sets the server's `innodb_flush_log_at_trx_commit` (global: every connection's next
/// commit).
pub(crate) async fn set_log_flush(server: &str, value: u8) -> anyhow::Result<()> {
    let pool = connect(server).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "SET GLOBAL innodb_flush_log_at_trx_commit = {value}"
    )))
    .execute(&pool)
    .await
    .context("cannot set innodb_flush_log_at_trx_commit (the bench needs MariaDB's root user)")?;
    pool.close().await;
    Ok(())
}

/// The tables B3 writes, made `LIKE` the query service's own (same columns, keys and
/// indexes), empty before every run.
const TABLES: [&str; 4] = [
    "accounts",
    "operations",
    "account_versions",
    "projection_checkpoint",
];

/// Rows per multi-row statement, as the query service writes them.
const ROWS_PER_STATEMENT: usize = 500;

/// One event of the global feed, as B3 replays it.
#[derive(Debug, Clone)]
pub(crate) struct FeedEvent {
    pub(crate) position: i64,
    pub(crate) event_id: String,
    pub(crate) account: String,
    pub(crate) version: i64,
    pub(crate) kind: String,
    /// `amount` of a credit or debit.
    pub(crate) amount: Option<String>,
    /// `balance` after a credit or debit, `initial_balance` of an opening.
    pub(crate) balance: Option<String>,
    pub(crate) currency: Option<String>,
    pub(crate) owner: Option<String>,
    /// UTC, `YYYY-MM-DD HH:MM:SS.ffffff`.
    pub(crate) occurred_at: String,
}

/// An account as the replay folds it.
#[derive(Debug, Clone)]
struct AccountState {
    owner: Option<String>,
    status: &'static str,
    currency: String,
    balance: String,
    version: i64,
    created_at: String,
    updated_at: String,
}

/// B3's database: tables shaped like the query service's, emptied before each run.
#[derive(Debug)]
pub(crate) struct RawStore {
    pool: MySqlPool,
    /// The query service's database, whose tables B3's are made like.
    model: String,
}

impl RawStore {
    /// Creates database `name` for tables like those of the database `model`.
    pub(crate) async fn create(server: &str, name: &str, model: &str) -> anyhow::Result<Self> {
        for database in [name, model] {
            if !database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                bail!("refusing database name {database:?}");
            }
        }
        let admin = connect(server).await?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let pool = connect(&database_url(server, name)).await?;
        Ok(Self {
            pool,
            model: model.to_owned(),
        })
    }

    /// Drops and re-creates the tables, empty.
    async fn reset(&self) -> anyhow::Result<()> {
        for table in TABLES {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS `{table}`; CREATE TABLE `{table}` LIKE `{}`.`{table}`",
                self.model
            )))
            .execute(&self.pool)
            .await
            .with_context(|| format!("cannot make B3's {table} table"))?;
        }
        Ok(())
    }

    /// B3: replays `feed` into empty tables, `batch` events per transaction, as raw
    /// multi-row statements: the accounts first seen in the batch inserted, the others
    /// upserted (one row per account, its state after the batch), one `operations` row
    /// per credit or debit, one `account_versions` row per event; then the checkpoint
    /// row. The tables are emptied first (not timed). Events per second.
    pub(crate) async fn replay(&self, feed: &[FeedEvent], batch: usize) -> anyhow::Result<f64> {
        self.reset().await?;
        let started = Instant::now();
        let mut accounts: HashMap<&str, AccountState> = HashMap::new();
        for events in feed.chunks(batch.max(1)) {
            let mut opened: Vec<&str> = Vec::new();
            let mut moved: Vec<&str> = Vec::new();
            let mut seen: HashSet<&str> = HashSet::new();
            let mut operations = Vec::new();
            let mut versions = Vec::with_capacity(events.len());
            for event in events {
                let account = event.account.as_str();
                if seen.insert(account) {
                    if accounts.contains_key(account) {
                        moved.push(account);
                    } else {
                        opened.push(account);
                    }
                }
                let state = accounts.entry(account).or_insert_with(|| AccountState {
                    owner: event.owner.clone(),
                    status: "CREATED",
                    currency: event.currency.clone().unwrap_or_else(|| "MAD".to_owned()),
                    balance: "0".to_owned(),
                    version: 0,
                    created_at: event.occurred_at.clone(),
                    updated_at: event.occurred_at.clone(),
                });
                fold(state, event);
                if let ("AccountCredited" | "AccountDebited", Some(amount)) =
                    (event.kind.as_str(), &event.amount)
                {
                    operations.push((event, amount.as_str(), state.balance.clone()));
                }
                versions.push((event, state.status, state.balance.clone()));
            }
            let mut tx = self.pool.begin().await?;
            for (rows, upsert) in [(&opened, false), (&moved, true)] {
                for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                    let mut insert = QueryBuilder::new(
                        "INSERT INTO accounts (id, owner, status, currency, balance, version, created_at, updated_at) ",
                    );
                    insert.push_values(chunk, |mut row, id| {
                        let state = &accounts[id];
                        row.push_bind(*id)
                            .push_bind(state.owner.as_deref())
                            .push_bind(state.status)
                            .push_bind(state.currency.as_str())
                            .push_bind(state.balance.as_str())
                            .push_bind(state.version)
                            .push_bind(state.created_at.as_str())
                            .push_bind(state.updated_at.as_str());
                    });
                    if upsert {
                        insert.push(" ON DUPLICATE KEY UPDATE status = VALUES(status), balance = VALUES(balance), version = VALUES(version), updated_at = VALUES(updated_at)");
                    }
                    insert.build().execute(&mut *tx).await?;
                }
            }
            for chunk in operations.chunks(ROWS_PER_STATEMENT) {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO operations (event_id, account_id, version, type, amount, currency, balance_after, occurred_at) ",
                );
                insert.push_values(chunk, |mut row, (event, amount, after)| {
                    let kind = if event.kind == "AccountDebited" {
                        "DEBIT"
                    } else {
                        "CREDIT"
                    };
                    row.push_bind(event.event_id.as_str())
                        .push_bind(event.account.as_str())
                        .push_bind(event.version)
                        .push_bind(kind)
                        .push_bind(*amount)
                        .push_bind(event.currency.as_deref().unwrap_or("MAD"))
                        .push_bind(after.as_str())
                        .push_bind(event.occurred_at.as_str());
                });
                insert.build().execute(&mut *tx).await?;
            }
            for chunk in versions.chunks(ROWS_PER_STATEMENT) {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO account_versions (account_id, version, event_id, type, status, balance, occurred_at) ",
                );
                insert.push_values(chunk, |mut row, (event, status, balance)| {
                    row.push_bind(event.account.as_str())
                        .push_bind(event.version)
                        .push_bind(event.event_id.as_str())
                        .push_bind(event.kind.as_str())
                        .push_bind(*status)
                        .push_bind(balance.as_str())
                        .push_bind(event.occurred_at.as_str());
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        let position = feed.last().map_or(0, |event| event.position);
        sqlx::query(
            "INSERT INTO projection_checkpoint (name, generation, position, updated_at) VALUES ('feed', UUID(), ?, UTC_TIMESTAMP(6))",
        )
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(feed.len() as f64 / started.elapsed().as_secs_f64().max(1e-9))
    }

    pub(crate) async fn close(self) {
        self.pool.close().await;
    }
}

/// Applies one event to its account's folded state.
fn fold(state: &mut AccountState, event: &FeedEvent) {
    state.version = event.version;
    state.updated_at.clone_from(&event.occurred_at);
    match event.kind.as_str() {
        "AccountCreated" => {
            state.status = "CREATED";
            if let Some(balance) = &event.balance {
                state.balance.clone_from(balance);
            }
        }
        "AccountActivated" | "AccountReactivated" => state.status = "ACTIVE",
        "AccountSuspended" => state.status = "SUSPENDED",
        "AccountClosed" => state.status = "CLOSED",
        _ => {
            if let Some(balance) = &event.balance {
                state.balance.clone_from(balance);
            }
        }
    }
}

/// How far the query service's live read model got: accounts and the sum of their
/// versions (the number of their events applied).
pub(crate) async fn projected(pool: &MySqlPool) -> anyhow::Result<(i64, i64)> {
    let (accounts, events): (i64, Option<rust_decimal::Decimal>) =
        sqlx::query_as("SELECT COUNT(*), SUM(version) FROM accounts")
            .fetch_one(pool)
            .await
            .context("cannot read the query service's accounts table")?;
    let events = events.and_then(|e| e.to_i64()).unwrap_or(0);
    Ok((accounts, events))
}

/// Accounts and the sum of their balances in the read model, as text.
pub(crate) async fn projected_balance(pool: &MySqlPool) -> anyhow::Result<(i64, String)> {
    let (accounts, total): (i64, Option<rust_decimal::Decimal>) =
        sqlx::query_as("SELECT COUNT(*), SUM(balance) FROM accounts")
            .fetch_one(pool)
            .await
            .context("cannot read the query service's accounts table")?;
    Ok((
        accounts,
        total.map_or_else(|| "0".to_owned(), |t| t.normalize().to_string()),
    ))
}
