//! Transfers: their identity, their status, the events of their own streams, and the
//! marks an account movement carries when it is a leg of one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{AccountId, Currency, EventDecodeError, EventType, Money, parse_decimal};

/// Longest `reference` a transfer may carry, in characters.
pub const MAX_REFERENCE_CHARS: usize = 140;

/// Identity of a transfer, which is also the id of its event stream.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct TransferId(Uuid);

impl TransferId {
    /// A fresh, time-ordered (v7) id.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for TransferId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl FromStr for TransferId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a transfer stands: `PENDING` until it ends `COMPLETED`, `FAILED` (nothing
/// moved) or `REFUNDED` (the source got its money back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransferStatus {
    Pending,
    Completed,
    Failed,
    Refunded,
}

impl TransferStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn is_terminal(&self) -> bool {
        !matches!(self, Self::Pending)
    }
}

impl fmt::Display for TransferStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TransferStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Pending, Self::Completed, Self::Failed, Self::Refunded]
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown transfer status {s:?}"))
    }
}

/// Which leg of a transfer an account movement is: the source's debit, the
/// destination's credit, or the source's refund when the destination refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LegKind {
    TransferOut,
    TransferIn,
    TransferRefund,
}

impl LegKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TransferOut => "TRANSFER_OUT",
            Self::TransferIn => "TRANSFER_IN",
            Self::TransferRefund => "TRANSFER_REFUND",
        }
    }
}

impl fmt::Display for LegKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mark of a transfer leg on an account's `AccountDebited` / `AccountCredited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TransferLeg {
    pub transfer_id: TransferId,
    pub kind: LegKind,
}

impl TransferLeg {
    /// The id of the account event that records this leg: the same for every attempt
    /// (a name-based v5 UUID of the transfer id and the kind), so that the event
    /// store's unique event ids refuse a leg written twice.
    pub fn event_id(&self) -> Uuid {
        Uuid::new_v5(&self.transfer_id.as_uuid(), self.kind.as_str().as_bytes())
    }
}

/// A fact about one transfer, in its own stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    /// Asked for by `requested_by` (the caller's `sub`): move `amount` from `from` to `to`.
    Requested {
        from: AccountId,
        to: AccountId,
        amount: Money,
        reference: Option<String>,
        requested_by: String,
    },
    /// The source was debited: the money is in transit.
    Debited,
    /// The destination was credited: done.
    Completed,
    /// The source refused the debit (`reason` is the refusal's code): nothing moved.
    Failed { reason: String },
    /// The destination refused the credit (`reason`), and the source was refunded.
    Refunded { reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedData {
    from: AccountId,
    to: AccountId,
    amount: String,
    currency: Currency,
    reference: Option<String>,
    requested_by: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonData {
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoData {}

impl TransferEvent {
    pub fn event_type(&self) -> EventType {
        match self {
            Self::Requested { .. } => EventType::TransferRequested,
            Self::Debited => EventType::TransferDebited,
            Self::Completed => EventType::TransferCompleted,
            Self::Failed { .. } => EventType::TransferFailed,
            Self::Refunded { .. } => EventType::TransferRefunded,
        }
    }

    pub fn schema_version(&self) -> i32 {
        self.event_type().schema_version()
    }

    /// The `data` object of the event.
    pub fn data(&self) -> Value {
        match self {
            Self::Requested {
                from,
                to,
                amount,
                reference,
                requested_by,
            } => json!({
                "from": from,
                "to": to,
                "amount": amount.render(),
                "currency": amount.currency(),
                "reference": reference,
                "requested_by": requested_by,
            }),
            Self::Debited | Self::Completed => json!({}),
            Self::Failed { reason } | Self::Refunded { reason } => json!({ "reason": reason }),
        }
    }

    /// The status a transfer has once this event happened.
    pub fn status(&self) -> TransferStatus {
        match self {
            Self::Requested { .. } | Self::Debited => TransferStatus::Pending,
            Self::Completed => TransferStatus::Completed,
            Self::Failed { .. } => TransferStatus::Failed,
            Self::Refunded { .. } => TransferStatus::Refunded,
        }
    }

    /// Reads a transfer event back from its type, schema version and data, refusing
    /// anything that could not have been written.
    pub fn decode(
        event_type: EventType,
        schema_version: i32,
        data: &Value,
    ) -> Result<Self, EventDecodeError> {
        if schema_version != event_type.schema_version() {
            return Err(EventDecodeError::UnsupportedSchema {
                event_type,
                schema_version,
            });
        }
        let invalid = |reason: String| EventDecodeError::InvalidData { event_type, reason };
        let reason = |data: &Value| {
            ReasonData::deserialize(data)
                .map_err(|e| invalid(e.to_string()))
                .and_then(|d| {
                    if d.reason.is_empty() {
                        Err(invalid("reason must not be empty".into()))
                    } else {
                        Ok(d.reason)
                    }
                })
        };
        let nothing = |data: &Value| NoData::deserialize(data).map_err(|e| invalid(e.to_string()));
        Ok(match event_type {
            EventType::TransferRequested => {
                let d = RequestedData::deserialize(data).map_err(|e| invalid(e.to_string()))?;
                let amount = parse_decimal(&d.amount)
                    .and_then(|amount| Money::command_amount(amount, d.currency))
                    .map_err(|e| invalid(e.to_string()))?;
                if d.from == d.to {
                    return Err(invalid("from and to are the same account".into()));
                }
                if d.reference
                    .as_ref()
                    .is_some_and(|r| r.chars().count() > MAX_REFERENCE_CHARS)
                {
                    return Err(invalid("reference is too long".into()));
                }
                Self::Requested {
                    from: d.from,
                    to: d.to,
                    amount,
                    reference: d.reference,
                    requested_by: d.requested_by,
                }
            }
            EventType::TransferDebited => {
                nothing(data)?;
                Self::Debited
            }
            EventType::TransferCompleted => {
                nothing(data)?;
                Self::Completed
            }
            EventType::TransferFailed => Self::Failed {
                reason: reason(data)?,
            },
            EventType::TransferRefunded => Self::Refunded {
                reason: reason(data)?,
            },
            other => return Err(EventDecodeError::WrongStream(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    fn mad(cents: i64) -> Money {
        Money::new(Decimal::new(cents, 2), Currency::parse("MAD").unwrap()).unwrap()
    }

    fn every_kind_of_event() -> Vec<TransferEvent> {
        vec![
            TransferEvent::Requested {
                from: AccountId::generate(),
                to: AccountId::generate(),
                amount: mad(2_500),
                reference: Some("rent".into()),
                requested_by: "alice".into(),
            },
            TransferEvent::Requested {
                from: AccountId::generate(),
                to: AccountId::generate(),
                amount: mad(1),
                reference: None,
                requested_by: "bob".into(),
            },
            TransferEvent::Debited,
            TransferEvent::Completed,
            TransferEvent::Failed {
                reason: "insufficient_funds".into(),
            },
            TransferEvent::Refunded {
                reason: "invalid_state".into(),
            },
        ]
    }

    #[test]
    fn every_transfer_event_decodes_from_its_own_data() {
        for event in every_kind_of_event() {
            let decoded =
                TransferEvent::decode(event.event_type(), event.schema_version(), &event.data());
            assert_eq!(decoded, Ok(event));
        }
    }

    #[test]
    fn impossible_transfer_events_are_refused() {
        let same = AccountId::generate();
        let cases = [
            (
                EventType::TransferRequested,
                json!({"from": same, "to": same, "amount": "1.00", "currency": "MAD",
                       "reference": null, "requested_by": "alice"}),
            ),
            (
                EventType::TransferRequested,
                json!({"from": AccountId::generate(), "to": AccountId::generate(),
                       "amount": "0.00", "currency": "MAD", "reference": null,
                       "requested_by": "alice"}),
            ),
            (EventType::TransferFailed, json!({"reason": ""})),
            (EventType::TransferCompleted, json!({"surprise": 1})),
            (EventType::AccountCredited, json!({})),
        ];
        for (event_type, data) in cases {
            assert!(
                TransferEvent::decode(event_type, 1, &data).is_err(),
                "{event_type} {data}"
            );
        }
    }

    #[test]
    fn a_leg_has_the_same_event_id_on_every_attempt_and_another_per_kind() {
        let transfer_id = TransferId::generate();
        let leg = |kind| TransferLeg { transfer_id, kind };
        assert_eq!(
            leg(LegKind::TransferOut).event_id(),
            leg(LegKind::TransferOut).event_id()
        );
        assert_ne!(
            leg(LegKind::TransferOut).event_id(),
            leg(LegKind::TransferIn).event_id()
        );
        assert_ne!(
            leg(LegKind::TransferIn).event_id(),
            leg(LegKind::TransferRefund).event_id()
        );
    }
}
