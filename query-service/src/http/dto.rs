//! Response bodies and query parameters.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use shared_events::{AccountStatus, Currency, TransferStatus, render_amount};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::ApiError;
use crate::store::{AccountRecord, CurrencyTotalRecord, OperationRecord, TransferRecord};

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

/// Kind of an operation: a plain credit or debit, or a leg of a transfer (the
/// source's debit, the destination's credit, the source's refund).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(super) enum OperationType {
    Credit,
    Debit,
    TransferOut,
    TransferIn,
    TransferRefund,
}

/// A credit or debit of an account, or a leg of a transfer.
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
    /// The transfer this operation is a leg of (only on `TRANSFER_*` operations).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub(crate) transfer_id: Option<Uuid>,
}

/// A page of operations, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct OperationPage {
    pub(crate) operations: Vec<Operation>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub(crate) next: Option<String>,
}

/// The totals of one currency.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CurrencyTotal {
    pub(crate) currency: Currency,
    /// Sum of the balances (a closed account holds zero, unless a transfer's refund
    /// reached it after it closed).
    #[schema(example = "1500.00")]
    pub(crate) balance: String,
    /// Accounts (not closed) holding this currency.
    pub(crate) accounts: u64,
    /// Money debited by transfers and not yet credited or refunded.
    #[schema(example = "25.00")]
    pub(crate) in_transit: String,
}

/// Totals per currency; `balance + in_transit` of a currency does not change through
/// transfers.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BalanceSheet {
    pub(crate) totals: Vec<CurrencyTotal>,
}

/// A transfer as projected from its own stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub(super) struct Transfer {
    #[schema(value_type = String, format = Uuid)]
    pub(crate) id: Uuid,
    /// The source account.
    #[schema(value_type = String, format = Uuid)]
    pub(crate) from: Uuid,
    /// The destination account.
    #[schema(value_type = String, format = Uuid)]
    pub(crate) to: Uuid,
    #[schema(example = "25.00")]
    pub(crate) amount: String,
    pub(crate) currency: Currency,
    /// The requester's reference, `null` when none.
    pub(crate) reference: Option<String>,
    /// `PENDING` until it ends `COMPLETED`, `FAILED` or `REFUNDED`.
    pub(crate) status: TransferStatus,
    /// Why it failed or was refunded (the refusal's code, e.g. `insufficient_funds`);
    /// `null` otherwise.
    pub(crate) reason: Option<String>,
    /// `occurred_at` of its first event.
    #[schema(format = DateTime, example = "2026-11-22T10:00:00.123456Z")]
    pub(crate) created_at: String,
    /// `occurred_at` of its latest event.
    #[schema(format = DateTime, example = "2026-11-22T10:00:00.123456Z")]
    pub(crate) updated_at: String,
}

/// A page of transfers, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TransferPage {
    pub(crate) transfers: Vec<Transfer>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub(crate) next: Option<String>,
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

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TransferQuery {
    /// Wait at most this many milliseconds (0 to 10000, default 0) for the transfer to
    /// end (or to be projected at all); the answer is what the projection holds then.
    #[param(minimum = 0, maximum = 10000)]
    pub wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct TransferPageQuery {
    /// Most transfers to return (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// The `next` cursor of the previous page.
    #[param(pattern = "^t[0-7][0-9a-fA-F]{15}[0-9a-fA-F]{32}$")]
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

pub(super) fn uuid(id: &str) -> Result<Uuid, ApiError> {
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
            "TRANSFER_OUT" => OperationType::TransferOut,
            "TRANSFER_IN" => OperationType::TransferIn,
            "TRANSFER_REFUND" => OperationType::TransferRefund,
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
            transfer_id: record.transfer_id.as_deref().map(uuid).transpose()?,
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
            in_transit: render_amount(record.in_transit, currency),
        })
    }
}

impl TryFrom<TransferRecord> for Transfer {
    type Error = ApiError;

    fn try_from(record: TransferRecord) -> Result<Self, ApiError> {
        let currency = currency(&record.currency)?;
        Ok(Self {
            id: uuid(&record.id)?,
            from: uuid(&record.from_account)?,
            to: uuid(&record.to_account)?,
            amount: render_amount(record.amount, currency),
            currency,
            reference: record.reference,
            status: record
                .status
                .parse()
                .map_err(|_| ApiError::Corrupt(format!("transfer status {:?}", record.status)))?,
            reason: record.reason,
            created_at: timestamp(record.created_at),
            updated_at: timestamp(record.updated_at),
        })
    }
}
