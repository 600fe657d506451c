//! The queries behind the REST API, over the live tables.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::ReadStore;

/// A credit or debit as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OperationRecord {
    pub(crate) event_id: String,
    pub(crate) version: i64,
    #[sqlx(rename = "type")]
    pub(crate) kind: String,
    pub(crate) amount: Decimal,
    pub(crate) currency: String,
    pub(crate) balance_after: Decimal,
    pub(crate) occurred_at: DateTime<Utc>,
}

/// An account as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct AccountRecord {
    pub(crate) id: String,
    pub(crate) status: String,
    pub(crate) currency: String,
    pub(crate) balance: Decimal,
    pub(crate) version: i64,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// The total of one currency over the accounts that are not closed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct CurrencyTotalRecord {
    pub(crate) currency: String,
    pub(crate) balance: Decimal,
    pub(crate) accounts: i64,
}

/// Filters of the account listing.
#[derive(Debug, Clone, Default)]
pub(crate) struct AccountFilter {
    pub(crate) status: Option<&'static str>,
    pub(crate) currency: Option<&'static str>,
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

impl ReadStore {
    /// One account.
    pub(crate) async fn account(&self, id: Uuid) -> Result<Option<AccountRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, status, currency, balance, version, created_at, updated_at FROM accounts WHERE id = ?",
        )
        .bind(id.hyphenated().to_string())
        .fetch_optional(&self.pool)
        .await
    }

    /// Up to `limit` accounts with an id above `after`, in id order.
    pub(crate) async fn accounts(
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
    pub(crate) async fn operations(
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
    pub(crate) async fn balance_sheet(&self) -> Result<Vec<CurrencyTotalRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT currency, CAST(SUM(balance) AS DECIMAL(38,4)) AS balance, COUNT(*) AS accounts \
             FROM accounts WHERE status <> 'CLOSED' GROUP BY currency ORDER BY currency",
        )
        .fetch_all(&self.pool)
        .await
    }
}
