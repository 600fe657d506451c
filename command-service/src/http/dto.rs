//! Request and response bodies.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use shared_events::{Currency, EventEnvelope, parse_decimal};
use utoipa::ToSchema;
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

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateAccountRequest {
    /// Opening balance, `0 <= initial_balance <= 10^12`.
    #[schema(value_type = String, example = "100.00")]
    pub(super) initial_balance: AmountInput,
    pub(super) currency: Currency,
    /// Id to give the account; generated (UUID v7) when absent.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub(super) id: Option<Uuid>,
    /// The `sub` the account belongs to: the caller when absent; naming anyone else
    /// needs `accounts:admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) owner: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MovementRequest {
    /// `0 < amount <= 10^12`, with at most the currency's fraction digits.
    #[schema(value_type = String, example = "50.00")]
    pub(super) amount: AmountInput,
    /// Must be the account's currency when given.
    pub(super) currency: Option<Currency>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SuspendRequest {
    /// Why the account is suspended (at most 500 characters).
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
    pub(super) version: u64,
}

/// Answer to a credit or debit.
///
/// The fields are in alphabetical order, the order in which the previous version
/// answered (from a sorted JSON map): replies it stored under idempotency keys are
/// replayed through this type, byte for byte as first sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub(super) struct BalanceResponse {
    /// Balance after the command.
    #[schema(example = "150.00")]
    pub(super) balance: String,
    #[schema(value_type = String, format = Uuid)]
    pub(super) id: Uuid,
    pub(super) version: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AccountEventsResponse {
    pub(super) events: Vec<EventEnvelope>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FeedResponse {
    pub(super) events: Vec<EventEnvelope>,
    /// Pass as `after` to read on.
    pub(super) next_after: u64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountEventsQuery {
    /// First version to return (default 1).
    pub(super) from_version: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedQuery {
    /// Position after which to read (default 0).
    pub(super) after: Option<u64>,
    /// 1..=1000, default 500.
    pub(super) limit: Option<u32>,
}
