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
    #[schema(minimum = 1)]
    pub version: u64,
    /// `occurred_at` of the account's first event.
    #[schema(format = DateTime, example = "2026-11-22T10:00:00.123456Z")]
    pub created_at: String,
    /// `occurred_at` of the account's latest event.
    #[schema(format = DateTime, example = "2026-11-22T10:00:00.123456Z")]
    pub updated_at: String,
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
    #[schema(minimum = 1)]
    pub version: u64,
    #[schema(format = DateTime, example = "2026-11-22T10:00:00.123456Z")]
    pub occurred_at: String,
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
    /// Wait until the projection holds at least this version of the account (0 waits for nothing).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub min_version: Option<u64>,
    /// Longest wait for `min_version` in milliseconds (default 2000; longer waits are cut to 10000).
    #[param(minimum = 0, maximum = 18_446_744_073_709_551_615_u64)]
    pub wait_ms: Option<u64>,
    /// The account as it stood at this instant (RFC 3339 with a zone, e.g.
    /// `2026-11-30T12:00:00Z`; percent-encode a `+` offset as `%2B`): its last event at
    /// or before the instant gives status, balance, version and `updated_at`. An instant
    /// in the future answers the current state; one before the account existed is a 404.
    /// With `min_version`, the wait comes first.
    #[param(value_type = Option<String>, format = DateTime)]
    pub as_of: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only accounts of this status.
    #[param(value_type = Option<AccountStatus>)]
    pub status: Option<String>,
    /// Only accounts of this currency.
    #[param(schema_with = currency_code)]
    pub currency: Option<String>,
    /// Most accounts to return (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    #[param(pattern = "^a[0-9a-fA-F]{32}$")]
    pub after: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// Most operations to return (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    #[param(pattern = "^o[0-7][0-9a-fA-F]{15}$")]
    pub after: Option<String>,
}

/// Every ISO 4217 code the service knows.
fn currency_code() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some("ISO 4217 currency code"))
        .enum_values(Some(Currency::all().map(|currency| currency.code())))
        .build()
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
