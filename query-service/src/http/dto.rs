//! Response bodies and query parameters.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use shared_events::{AccountStatus, Currency, render_amount};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::store::{AccountRecord, CurrencyTotalRecord, OperationRecord};

/// An account as projected.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Account {
    #[schema(value_type = String, format = Uuid)]
    pub(crate) id: Uuid,
    pub(crate) status: AccountStatus,
    pub(crate) currency: Currency,
    /// Rendered with exactly the currency's fraction digits.
    #[schema(example = "150.00")]
    pub(crate) balance: String,
    /// Number of the account's events projected.
    pub(crate) version: u64,
    /// `occurred_at` of the account's first event.
    #[schema(example = "2026-11-22T10:00:00.123456Z")]
    pub(crate) created_at: String,
    /// `occurred_at` of the account's latest event.
    #[schema(example = "2026-11-22T10:00:00.123456Z")]
    pub(crate) updated_at: String,
}

/// A page of accounts in id order.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AccountPage {
    pub(crate) accounts: Vec<Account>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub(crate) next: Option<String>,
}

/// Kind of an operation.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(super) enum OperationType {
    Credit,
    Debit,
}

/// A credit or debit of an account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Operation {
    #[schema(value_type = String, format = Uuid)]
    pub(crate) event_id: Uuid,
    #[serde(rename = "type")]
    pub(crate) kind: OperationType,
    #[schema(example = "50.00")]
    pub(crate) amount: String,
    pub(crate) currency: Currency,
    #[schema(example = "150.00")]
    pub(crate) balance_after: String,
    /// Version of the account the operation brought it to.
    pub(crate) version: u64,
    #[schema(example = "2026-11-22T10:00:00.123456Z")]
    pub(crate) occurred_at: String,
}

/// A page of operations, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OperationPage {
    pub(crate) operations: Vec<Operation>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub(crate) next: Option<String>,
}

/// Total balance of one currency.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CurrencyTotal {
    pub(crate) currency: Currency,
    #[schema(example = "1500.00")]
    pub(crate) balance: String,
    /// Accounts (not closed) holding this currency.
    pub(crate) accounts: u64,
}

/// Totals per currency over all accounts that are not closed.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BalanceSheet {
    pub(crate) totals: Vec<CurrencyTotal>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AccountQuery {
    /// Wait until the projection holds at least this version of the account.
    pub(crate) min_version: Option<u64>,
    /// Longest wait for `min_version` in milliseconds (default 2000, at most 10000).
    pub(crate) wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// `CREATED`, `ACTIVE`, `SUSPENDED` or `CLOSED`.
    pub(crate) status: Option<String>,
    /// ISO 4217 code.
    pub(crate) currency: Option<String>,
    /// 1..=500, default 50.
    pub(crate) limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub(crate) after: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// 1..=500, default 50.
    pub(crate) limit: Option<u32>,
    /// The `next` cursor of the previous page.
    pub(crate) after: Option<String>,
}

/// Renders a timestamp as RFC 3339 UTC with microseconds.
pub(super) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn currency(code: &str) -> Result<Currency, ApiError> {
    Currency::parse(code).map_err(|_| ApiError::Corrupt(format!("currency {code:?}")))
}

fn unsigned(value: i64, what: &str) -> Result<u64, ApiError> {
    u64::try_from(value).map_err(|_| ApiError::Corrupt(format!("{what} {value}")))
}

fn uuid(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::Corrupt(format!("id {id:?}")))
}

impl TryFrom<AccountRecord> for Account {
    type Error = ApiError;

    fn try_from(record: AccountRecord) -> Result<Self, ApiError> {
        let currency = currency(&record.currency)?;
        Ok(Self {
            id: uuid(&record.id)?,
            status: record
                .status
                .parse()
                .map_err(|_| ApiError::Corrupt(format!("status {:?}", record.status)))?,
            currency,
            balance: render_amount(record.balance, currency),
            version: unsigned(record.version, "version")?,
            created_at: timestamp(record.created_at),
            updated_at: timestamp(record.updated_at),
        })
    }
}

impl TryFrom<OperationRecord> for Operation {
    type Error = ApiError;

    fn try_from(record: OperationRecord) -> Result<Self, ApiError> {
        let currency = currency(&record.currency)?;
        let kind = match record.kind.as_str() {
            "CREDIT" => OperationType::Credit,
            "DEBIT" => OperationType::Debit,
            other => return Err(ApiError::Corrupt(format!("operation type {other:?}"))),
        };
        Ok(Self {
            event_id: uuid(&record.event_id)?,
            kind,
            amount: render_amount(record.amount, currency),
            currency,
            balance_after: render_amount(record.balance_after, currency),
            version: unsigned(record.version, "version")?,
            occurred_at: timestamp(record.occurred_at),
        })
    }
}

impl TryFrom<CurrencyTotalRecord> for CurrencyTotal {
    type Error = ApiError;

    fn try_from(record: CurrencyTotalRecord) -> Result<Self, ApiError> {
        let currency = currency(&record.currency)?;
        Ok(Self {
            currency,
            balance: render_amount(record.balance, currency),
            accounts: unsigned(record.accounts, "count")?,
        })
    }
}
