//! The queries behind the REST API, over the live tables.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::{MySql, QueryBuilder};
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
    /// The transfer an operation is a leg of.
    pub(crate) transfer_id: Option<String>,
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

/// The totals of one currency: the balances of every account, the number of
/// accounts that are not closed, the money in transit.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct CurrencyTotalRecord {
    pub(crate) currency: String,
    pub(crate) balance: Decimal,
    pub(crate) accounts: i64,
    pub(crate) in_transit: Decimal,
}

/// A transfer as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct TransferRecord {
    pub(crate) id: String,
    pub(crate) from_account: String,
    pub(crate) to_account: String,
    pub(crate) amount: Decimal,
    pub(crate) currency: String,
    pub(crate) reference: Option<String>,
    pub(crate) status: String,
    pub(crate) reason: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

/// Where a page of an account's transfers starts: after this transfer (the order is
/// creation time, then id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransferCursor {
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) id: Uuid,
}

/// Which accounts a reader may see: every account (an admin), or those a `sub` owns.
/// An account without an owner (opened before owners existed) is seen by admins only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach<'a> {
    All,
    OwnedBy(&'a str),
}

/// Filters of the account listing.
#[derive(Debug, Clone)]
pub(crate) struct AccountFilter<'a> {
    pub(crate) reach: Reach<'a>,
    pub(crate) status: Option<&'static str>,
    pub(crate) currency: Option<&'static str>,
}

const ACCOUNT_COLUMNS: &str =
    "SELECT id, status, currency, balance, version, created_at, updated_at FROM accounts WHERE ";

const TRANSFER_COLUMNS: &str = "SELECT t.id, t.from_account, t.to_account, t.amount, t.currency, \
     t.reference, t.status, t.reason, t.created_at, t.updated_at FROM transfers t";

impl ReadStore {
    /// One account, if `reach` covers it.
    pub(crate) async fn account(
        &self,
        id: Uuid,
        reach: Reach<'_>,
    ) -> Result<Option<AccountRecord>, sqlx::Error> {
        let mut query = QueryBuilder::<MySql>::new(ACCOUNT_COLUMNS);
        if let Reach::OwnedBy(owner) = reach {
            query.push("owner = ").push_bind(owner).push(" AND ");
        }
        query.push("id = ").push_bind(id.hyphenated().to_string());
        query.build_query_as().fetch_optional(&self.pool).await
    }

    /// One account as it stood at `instant` (its last projected version at or before
    /// it), if `reach` covers it and it existed then. One seek in the index
    /// `account_versions_as_of`, however long the account's history (forced: on some
    /// statistics MariaDB chose the primary key and sorted the account's versions).
    pub(crate) async fn account_as_of(
        &self,
        id: Uuid,
        reach: Reach<'_>,
        instant: DateTime<Utc>,
    ) -> Result<Option<AccountRecord>, sqlx::Error> {
        let mut query = QueryBuilder::<MySql>::new(
            "SELECT a.id, v.status, a.currency, v.balance, v.version, a.created_at, \
             v.occurred_at AS updated_at \
             FROM accounts a JOIN account_versions v FORCE INDEX (account_versions_as_of) \
             ON v.account_id = a.id WHERE ",
        );
        if let Reach::OwnedBy(owner) = reach {
            query.push("a.owner = ").push_bind(owner).push(" AND ");
        }
        query
            .push("a.id = ")
            .push_bind(id.hyphenated().to_string())
            .push(" AND v.occurred_at <= ")
            .push_bind(instant)
            .push(" ORDER BY v.occurred_at DESC, v.version DESC LIMIT 1");
        query.build_query_as().fetch_optional(&self.pool).await
    }

    /// The account as each of its versions after `after` left it, oldest first, at
    /// most `limit` (versions projected before `account_versions` existed are absent).
    pub(crate) async fn account_versions_after(
        &self,
        id: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AccountRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT a.id, v.status, a.currency, v.balance, v.version, a.created_at, \
             v.occurred_at AS updated_at \
             FROM accounts a JOIN account_versions v ON v.account_id = a.id \
             WHERE a.id = ? AND v.version > ? ORDER BY v.version LIMIT ?",
        )
        .bind(id.hyphenated().to_string())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Up to `limit` accounts with an id above `after`, in id order. Each combination
    /// of filters has an index that leads with its columns and ends with `id`.
    pub(crate) async fn accounts(
        &self,
        filter: &AccountFilter<'_>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<AccountRecord>, sqlx::Error> {
        let after = after
            .map(|id| id.hyphenated().to_string())
            .unwrap_or_default();
        let mut query = QueryBuilder::<MySql>::new(ACCOUNT_COLUMNS);
        if let Reach::OwnedBy(owner) = filter.reach {
            query.push("owner = ").push_bind(owner).push(" AND ");
        }
        if let Some(status) = filter.status {
            query.push("status = ").push_bind(status).push(" AND ");
        }
        if let Some(currency) = filter.currency {
            query.push("currency = ").push_bind(currency).push(" AND ");
        }
        query
            .push("id > ")
            .push_bind(after)
            .push(" ORDER BY id LIMIT ")
            .push_bind(limit);
        query.build_query_as().fetch_all(&self.pool).await
    }

    /// Up to `limit` operations of an account with a version above `after`, oldest first.
    pub(crate) async fn operations(
        &self,
        account: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<OperationRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT event_id, version, type, amount, currency, balance_after, occurred_at, transfer_id \
             FROM operations WHERE account_id = ? AND version > ? ORDER BY version LIMIT ?",
        )
        .bind(account.hyphenated().to_string())
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// The balance sheet: per currency, the sums of its counters' slots (a handful
    /// of rows per currency, however many accounts there are). A currency whose
    /// counters are all zero (every account closed and empty) is left out.
    pub(crate) async fn balance_sheet(&self) -> Result<Vec<CurrencyTotalRecord>, sqlx::Error> {
        sqlx::query_as(
            "SELECT currency, CAST(SUM(balance) AS DECIMAL(38,4)) AS balance, \
             CAST(SUM(accounts) AS SIGNED) AS accounts, \
             CAST(SUM(in_transit) AS DECIMAL(38,4)) AS in_transit \
             FROM balance_sheet GROUP BY currency \
             HAVING SUM(accounts) <> 0 OR SUM(balance) <> 0 OR SUM(in_transit) <> 0 \
             ORDER BY currency",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// One transfer, if `reach` covers it: every transfer for an admin, else those
    /// whose source or destination the reader owns.
    pub(crate) async fn transfer(
        &self,
        id: Uuid,
        reach: Reach<'_>,
    ) -> Result<Option<TransferRecord>, sqlx::Error> {
        let mut query = QueryBuilder::<MySql>::new(TRANSFER_COLUMNS);
        query
            .push(" WHERE t.id = ")
            .push_bind(id.hyphenated().to_string());
        if let Reach::OwnedBy(owner) = reach {
            query
                .push(
                    " AND EXISTS (SELECT 1 FROM accounts a \
                     WHERE a.id IN (t.from_account, t.to_account) AND a.owner = ",
                )
                .push_bind(owner)
                .push(")");
        }
        query.build_query_as().fetch_optional(&self.pool).await
    }

    /// Up to `limit` transfers from or to `account` after `after`, oldest first
    /// (creation time, then id): one range of the index of each side, merged.
    pub(crate) async fn account_transfers(
        &self,
        account: Uuid,
        after: Option<TransferCursor>,
        limit: u32,
    ) -> Result<Vec<TransferRecord>, sqlx::Error> {
        let account = account.hyphenated().to_string();
        let mut query = QueryBuilder::<MySql>::new("");
        for (index, (side, index_name)) in [
            ("from_account", "transfers_from_account"),
            ("to_account", "transfers_to_account"),
        ]
        .into_iter()
        .enumerate()
        {
            if index > 0 {
                query.push(" UNION ALL ");
            }
            query
                .push("(")
                .push(TRANSFER_COLUMNS)
                .push(" FORCE INDEX (")
                .push(index_name)
                .push(") WHERE t.")
                .push(side)
                .push(" = ")
                .push_bind(account.clone());
            if let Some(after) = after {
                query
                    .push(" AND (t.created_at > ")
                    .push_bind(after.created_at)
                    .push(" OR (t.created_at = ")
                    .push_bind(after.created_at)
                    .push(" AND t.id > ")
                    .push_bind(after.id.hyphenated().to_string())
                    .push("))");
            }
            query
                .push(" ORDER BY t.created_at, t.id LIMIT ")
                .push_bind(limit)
                .push(")");
        }
        query
            .push(" ORDER BY created_at, id LIMIT ")
            .push_bind(limit);
        query.build_query_as().fetch_all(&self.pool).await
    }
}
