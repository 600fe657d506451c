//! Request and response bodies.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use shared_events::{Currency, EventEnvelope, TransferStatus, parse_decimal};
use utoipa::ToSchema;
use utoipa::openapi::{RefOr, Schema};
use uuid::Uuid;

/// An amount given as a decimal string (`"100.50"`) or a JSON number, read exactly
/// from its text, never through binary floating point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub(super) struct AmountInput(pub(super) Decimal);

impl<'de> Deserialize<'de> for AmountInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        let digits = if text.starts_with('"') {
            serde_json::from_str::<String>(text).map_err(serde::de::Error::custom)?
        } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            text.to_owned()
        } else {
            return Err(serde::de::Error::custom(
                "an amount must be a decimal string such as \"100.50\" or a JSON number",
            ));
        };
        parse_decimal(&digits)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// Body of `POST /accounts`; its schema is [`super::schema::create_account`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateAccountRequest {
    /// Opening balance, `0 <= initial_balance <= 10^12`.
    pub(super) initial_balance: AmountInput,
    pub(super) currency: Currency,
    /// Id to give the account; generated (UUID v7) when absent.
    pub(super) id: Option<Uuid>,
    /// The `sub` the account belongs to: the caller when absent; naming anyone else
    /// needs `accounts:admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) owner: Option<String>,
}

impl utoipa::PartialSchema for CreateAccountRequest {
    fn schema() -> RefOr<Schema> {
        super::schema::create_account()
    }
}

impl ToSchema for CreateAccountRequest {}

/// Body of a credit or debit; its schema is [`super::schema::movement`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MovementRequest {
    /// `0 < amount <= 10^12`, with at most the currency's fraction digits.
    pub(super) amount: AmountInput,
    /// Must be the account's currency when given.
    pub(super) currency: Option<Currency>,
}

impl utoipa::PartialSchema for MovementRequest {
    fn schema() -> RefOr<Schema> {
        super::schema::movement()
    }
}

impl ToSchema for MovementRequest {}

/// Body of `POST /transfers`; its schema is [`super::schema::transfer`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TransferRequestBody {
    pub(super) from: Uuid,
    pub(super) to: Uuid,
    /// `0 < amount <= 10^12`, with at most the source's currency's fraction digits.
    pub(super) amount: AmountInput,
    /// Must be the source's currency when given.
    pub(super) currency: Option<Currency>,
    /// Free text kept with the transfer, at most 140 characters.
    pub(super) reference: Option<String>,
}

impl utoipa::PartialSchema for TransferRequestBody {
    fn schema() -> RefOr<Schema> {
        super::schema::transfer()
    }
}

impl ToSchema for TransferRequestBody {}

/// A transfer: the answer to `POST /transfers`, as the query service shows it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(super) struct TransferResponse {
    #[schema(value_type = String, format = Uuid)]
    pub(super) id: Uuid,
    #[schema(value_type = String, format = Uuid)]
    pub(super) from: Uuid,
    #[schema(value_type = String, format = Uuid)]
    pub(super) to: Uuid,
    /// With exactly the currency's fraction digits.
    #[schema(example = "25.00")]
    pub(super) amount: String,
    #[schema(value_type = String, example = "MAD")]
    pub(super) currency: Currency,
    pub(super) reference: Option<String>,
    pub(super) status: TransferStatus,
    /// Why it failed or was refunded: the refusing account's error code.
    #[schema(example = "insufficient_funds")]
    pub(super) reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub(super) created_at: String,
    #[schema(value_type = String, format = DateTime)]
    pub(super) updated_at: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SuspendRequest {
    /// Why the account is suspended.
    #[schema(max_length = 500)]
    pub(super) reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmptyRequest {}

/// Answer to opening an account or to a lifecycle command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(super) struct VersionResponse {
    #[schema(value_type = String, format = Uuid)]
    pub(super) id: Uuid,
    /// The account's stream version after the command.
    #[schema(minimum = 1)]
    pub(super) version: u64,
}

/// Answer to a credit or debit.
///
/// The fields are in alphabetical order, the order in which the previous version
/// answered (from a sorted JSON map): replies it stored under idempotency keys are
/// replayed through this type, byte for byte as first sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(super) struct BalanceResponse {
    /// Balance after the command, with exactly the currency's fraction digits.
    #[schema(example = "150.00")]
    pub(super) balance: String,
    #[schema(value_type = String, format = Uuid)]
    pub(super) id: Uuid,
    /// The account's stream version after the command.
    #[schema(minimum = 1)]
    pub(super) version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AccountEventsResponse {
    pub(super) events: Vec<EventEnvelope>,
    /// Pass as `from_version` to read the next page; `null` once the page reached the
    /// end of the stream.
    pub(super) next_from_version: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FeedResponse {
    pub(super) events: Vec<EventEnvelope>,
    /// Pass as `after` to read on.
    pub(super) next_after: u64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct AccountEventsQuery {
    /// First version to return (default 1; 0 reads from the start too).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub(super) from_version: Option<u64>,
    /// Most events to return (default and most 1000); `next_from_version` reads on.
    #[param(minimum = 1, maximum = 1000)]
    pub(super) limit: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct FeedQuery {
    /// Position after which to read (default 0).
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub(super) after: Option<u64>,
    /// Most events to return (default 500).
    #[param(minimum = 1, maximum = 1000)]
    pub(super) limit: Option<u32>,
}
