//! MariaDB/MySQL: B3 (raw batched inserts of the read model's rows), and looking at
//! how far the query service's projection got.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::prelude::ToPrimitive;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool, QueryBuilder};

use crate::pg::account_id;

/// The read model's two tables, as the query service lays them out.
const SCHEMA: &str = "
CREATE TABLE accounts (
    id CHAR(36) NOT NULL, status VARCHAR(16) NOT NULL, currency CHAR(3) NOT NULL,
    balance DECIMAL(22,4) NOT NULL, version BIGINT NOT NULL,
    created_at DATETIME(6) NOT NULL, updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (id), KEY accounts_status_id (status, id), KEY accounts_currency_id (currency, id),
    KEY accounts_status_currency_id (status, currency, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE operations (
    event_id CHAR(36) NOT NULL, account_id CHAR(36) NOT NULL, version BIGINT NOT NULL,
    type VARCHAR(8) NOT NULL, amount DECIMAL(22,4) NOT NULL, currency CHAR(3) NOT NULL,
    balance_after DECIMAL(22,4) NOT NULL, occurred_at DATETIME(6) NOT NULL,
    PRIMARY KEY (event_id), UNIQUE KEY operations_account_version (account_id, version)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
";

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
    let pool = connect(server).await?;
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(version)
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

/// The raw baseline's database: the read model's tables, `accounts` accounts in them.
#[derive(Debug)]
pub(crate) struct RawStore {
    pool: MySqlPool,
    versions: Vec<i64>,
    sequence: u64,
}

impl RawStore {
    pub(crate) async fn create(server: &str, name: &str, accounts: usize) -> anyhow::Result<Self> {
        let admin = connect(server).await?;
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let pool = connect(&database_url(server, name)).await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        for chunk in (1..=accounts).collect::<Vec<_>>().chunks(1000) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO accounts (id, status, currency, balance, version, created_at, updated_at) ",
            );
            insert.push_values(chunk, |mut row, n| {
                row.push_bind(account_id(*n as u64))
                    .push_bind("ACTIVE")
                    .push_bind("MAD")
                    .push_bind("1000.0000")
                    .push_bind(2_i64)
                    .push("UTC_TIMESTAMP(6)")
                    .push("UTC_TIMESTAMP(6)");
            });
            insert.build().execute(&pool).await?;
        }
        Ok(Self {
            pool,
            versions: vec![2; accounts],
            sequence: 0,
        })
    }

    /// B3: credits on random accounts, `batch` per transaction (one multi-row insert of
    /// operations, one multi-row upsert of accounts), for `duration`. Events per second.
    pub(crate) async fn raw_apply(
        &mut self,
        batch: usize,
        duration: Duration,
    ) -> anyhow::Result<f64> {
        let mut rng = StdRng::from_os_rng();
        let started = Instant::now();
        let mut applied = 0usize;
        while started.elapsed() < duration {
            let mut rows = Vec::with_capacity(batch);
            for _ in 0..batch {
                let n = rng.random_range(0..self.versions.len());
                self.versions[n] += 1;
                self.sequence += 1;
                rows.push((n, self.versions[n], self.sequence));
            }
            let mut tx = self.pool.begin().await?;
            let mut operations = QueryBuilder::new(
                "INSERT INTO operations (event_id, account_id, version, type, amount, currency, balance_after, occurred_at) ",
            );
            operations.push_values(&rows, |mut row, (n, version, sequence)| {
                row.push_bind(format!("00000000-0000-7000-8000-{sequence:012x}"))
                    .push_bind(account_id(*n as u64 + 1))
                    .push_bind(*version)
                    .push_bind("CREDIT")
                    .push_bind("1.0000")
                    .push_bind("MAD")
                    .push_bind(format!("{}.0000", 1000 + version - 2))
                    .push("UTC_TIMESTAMP(6)");
            });
            operations.build().execute(&mut *tx).await?;
            let mut accounts = QueryBuilder::new(
                "INSERT INTO accounts (id, status, currency, balance, version, created_at, updated_at) ",
            );
            accounts.push_values(&rows, |mut row, (n, version, _)| {
                row.push_bind(account_id(*n as u64 + 1))
                    .push_bind("ACTIVE")
                    .push_bind("MAD")
                    .push_bind(format!("{}.0000", 1000 + version - 2))
                    .push_bind(*version)
                    .push("UTC_TIMESTAMP(6)")
                    .push("UTC_TIMESTAMP(6)");
            });
            accounts.push(
                " ON DUPLICATE KEY UPDATE balance = VALUES(balance), version = VALUES(version), updated_at = VALUES(updated_at)",
            );
            accounts.build().execute(&mut *tx).await?;
            tx.commit().await?;
            applied += rows.len();
        }
        Ok(applied as f64 / started.elapsed().as_secs_f64())
    }

    pub(crate) async fn close(self) {
        self.pool.close().await;
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
