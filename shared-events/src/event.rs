use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    AccountId, Currency, LegKind, Money, TransferEvent, TransferId, TransferLeg, parse_decimal,
};

/// Schema version of the events whose data never changed shape (every type but
/// `AccountCreated`, see [`EventType::schema_version`]).
pub const SCHEMA_VERSION: i32 = 1;

/// The kinds of event, named as on the wire (`"AccountCredited"`): those of account
/// streams, then those of transfer streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    AccountCreated,
    AccountActivated,
    AccountCredited,
    AccountDebited,
    AccountSuspended,
    AccountReactivated,
    AccountClosed,
    TransferRequested,
    TransferDebited,
    TransferCompleted,
    TransferFailed,
    TransferRefunded,
}

impl EventType {
    pub const ALL: [EventType; 12] = [
        Self::AccountCreated,
        Self::AccountActivated,
        Self::AccountCredited,
        Self::AccountDebited,
        Self::AccountSuspended,
        Self::AccountReactivated,
        Self::AccountClosed,
        Self::TransferRequested,
        Self::TransferDebited,
        Self::TransferCompleted,
        Self::TransferFailed,
        Self::TransferRefunded,
    ];

    /// Whether events of this type belong to a transfer's stream (else an account's).
    pub fn is_transfer(&self) -> bool {
        matches!(
            self,
            Self::TransferRequested
                | Self::TransferDebited
                | Self::TransferCompleted
                | Self::TransferFailed
                | Self::TransferRefunded
        )
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::AccountCreated => "AccountCreated",
            Self::AccountActivated => "AccountActivated",
            Self::AccountCredited => "AccountCredited",
            Self::AccountDebited => "AccountDebited",
            Self::AccountSuspended => "AccountSuspended",
            Self::AccountReactivated => "AccountReactivated",
            Self::AccountClosed => "AccountClosed",
            Self::TransferRequested => "TransferRequested",
            Self::TransferDebited => "TransferDebited",
            Self::TransferCompleted => "TransferCompleted",
            Self::TransferFailed => "TransferFailed",
            Self::TransferRefunded => "TransferRefunded",
        }
    }

    /// Schema version this release writes for the type; older stored versions are
    /// upcast to it when read (see [`crate::upcast`]).
    pub fn schema_version(&self) -> i32 {
        match self {
            Self::AccountCreated => 2,
            _ => SCHEMA_VERSION,
        }
    }

    /// Routing key on the `bank.events` exchange: `account.<kind>` or `transfer.<kind>`.
    pub fn routing_key(&self) -> &'static str {
        match self {
            Self::AccountCreated => "account.created",
            Self::AccountActivated => "account.activated",
            Self::AccountCredited => "account.credited",
            Self::AccountDebited => "account.debited",
            Self::AccountSuspended => "account.suspended",
            Self::AccountReactivated => "account.reactivated",
            Self::AccountClosed => "account.closed",
            Self::TransferRequested => "transfer.requested",
            Self::TransferDebited => "transfer.debited",
            Self::TransferCompleted => "transfer.completed",
            Self::TransferFailed => "transfer.failed",
            Self::TransferRefunded => "transfer.refunded",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = EventDecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| EventDecodeError::UnknownType(s.chars().take(64).collect()))
    }
}

/// A fact about one account. Amounts carry their currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountEvent {
    /// Opened with `initial_balance`, owned by `owner` (the `sub` of a token). Accounts
    /// opened before owners existed (schema version 1) have none: only admins reach them.
    Created {
        initial_balance: Money,
        owner: Option<String>,
    },
    Activated,
    /// `amount` credited, leaving `balance`; `leg` when it is a transfer's credit
    /// (`TRANSFER_IN`) or refund (`TRANSFER_REFUND`).
    Credited {
        amount: Money,
        balance: Money,
        leg: Option<TransferLeg>,
    },
    /// `amount` debited, leaving `balance`; `leg` when it is a transfer's debit
    /// (`TRANSFER_OUT`).
    Debited {
        amount: Money,
        balance: Money,
        leg: Option<TransferLeg>,
    },
    Suspended {
        reason: Option<String>,
    },
    Reactivated,
    Closed,
}

/// Why a stored or received event could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unsupported schema version {schema_version} of {event_type}")]
    UnsupportedSchema {
        event_type: EventType,
        schema_version: i32,
    },
    #[error("invalid data for {event_type}: {reason}")]
    InvalidData {
        event_type: EventType,
        reason: String,
    },
    #[error("{0} belongs to another kind of stream")]
    WrongStream(EventType),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatedData {
    initial_balance: String,
    currency: Currency,
    owner: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MovementData {
    amount: String,
    currency: Currency,
    balance: String,
    transfer_id: Option<TransferId>,
    kind: Option<LegKind>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendedData {
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoData {}

impl AccountEvent {
    pub fn event_type(&self) -> EventType {
        match self {
            Self::Created { .. } => EventType::AccountCreated,
            Self::Activated => EventType::AccountActivated,
            Self::Credited { .. } => EventType::AccountCredited,
            Self::Debited { .. } => EventType::AccountDebited,
            Self::Suspended { .. } => EventType::AccountSuspended,
            Self::Reactivated => EventType::AccountReactivated,
            Self::Closed => EventType::AccountClosed,
        }
    }

    /// The `data` object of the event as the contract shows it.
    pub fn data(&self) -> Value {
        match self {
            Self::Created {
                initial_balance,
                owner,
            } => json!({
                "initial_balance": initial_balance.render(),
                "currency": initial_balance.currency(),
                "owner": owner,
            }),
            Self::Credited {
                amount,
                balance,
                leg,
            }
            | Self::Debited {
                amount,
                balance,
                leg,
            } => {
                let mut data = json!({
                    "amount": amount.render(),
                    "currency": amount.currency(),
                    "balance": balance.render(),
                });
                if let (Some(leg), Some(fields)) = (leg, data.as_object_mut()) {
                    fields.insert("transfer_id".into(), json!(leg.transfer_id));
                    fields.insert("kind".into(), json!(leg.kind));
                }
                data
            }
            Self::Suspended { reason } => json!({ "reason": reason }),
            Self::Activated | Self::Reactivated | Self::Closed => json!({}),
        }
    }

    /// Schema version of the data this event is written with.
    pub fn schema_version(&self) -> i32 {
        self.event_type().schema_version()
    }

    /// Reads an event back from its type, schema version and data, upcasting data of an
    /// older schema version first, and refusing anything that could not have been
    /// written (unknown type or version, negative or mis-scaled amounts).
    pub fn decode(
        event_type: &str,
        schema_version: i32,
        data: &Value,
    ) -> Result<Self, EventDecodeError> {
        let event_type: EventType = event_type.parse()?;
        if event_type.is_transfer() {
            return Err(EventDecodeError::WrongStream(event_type));
        }
        let data = crate::upcast::to_current(event_type, schema_version, data)?;
        let data = data.as_ref();
        let invalid = |reason: String| EventDecodeError::InvalidData { event_type, reason };
        let money = |text: &str, currency| {
            parse_decimal(text)
                .and_then(|amount| Money::new(amount, currency))
                .map_err(|error| invalid(error.to_string()))
        };
        let parse = |data: &Value| -> Result<_, EventDecodeError> {
            Ok(match event_type {
                EventType::AccountCreated => {
                    let d = CreatedData::deserialize(data).map_err(|e| invalid(e.to_string()))?;
                    if d.owner.as_deref().is_some_and(str::is_empty) {
                        return Err(invalid("owner must not be empty".into()));
                    }
                    Self::Created {
                        initial_balance: money(&d.initial_balance, d.currency)?,
                        owner: d.owner,
                    }
                }
                EventType::AccountCredited | EventType::AccountDebited => {
                    let d = MovementData::deserialize(data).map_err(|e| invalid(e.to_string()))?;
                    let amount = money(&d.amount, d.currency)?;
                    if amount.is_zero() {
                        return Err(invalid("amount must be greater than 0".into()));
                    }
                    let balance = money(&d.balance, d.currency)?;
                    let credit = event_type == EventType::AccountCredited;
                    let leg = match (d.transfer_id, d.kind) {
                        (None, None) => None,
                        (Some(transfer_id), Some(kind))
                            if credit != (kind == LegKind::TransferOut) =>
                        {
                            Some(TransferLeg { transfer_id, kind })
                        }
                        (Some(_), Some(kind)) => {
                            return Err(invalid(format!("a {kind} leg is not an {event_type}")));
                        }
                        _ => {
                            return Err(invalid(
                                "transfer_id and kind come together or not at all".into(),
                            ));
                        }
                    };
                    if credit {
                        Self::Credited {
                            amount,
                            balance,
                            leg,
                        }
                    } else {
                        Self::Debited {
                            amount,
                            balance,
                            leg,
                        }
                    }
                }
                EventType::AccountSuspended => {
                    let d = SuspendedData::deserialize(data).map_err(|e| invalid(e.to_string()))?;
                    Self::Suspended { reason: d.reason }
                }
                EventType::AccountActivated
                | EventType::AccountReactivated
                | EventType::AccountClosed => {
                    NoData::deserialize(data).map_err(|e| invalid(e.to_string()))?;
                    match event_type {
                        EventType::AccountActivated => Self::Activated,
                        EventType::AccountReactivated => Self::Reactivated,
                        _ => Self::Closed,
                    }
                }
                other => return Err(EventDecodeError::WrongStream(other)),
            })
        };
        parse(data)
    }
}

/// Any event of the store: an account's or a transfer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEvent {
    Account(AccountEvent),
    Transfer(TransferEvent),
}

impl DomainEvent {
    /// Reads any stored event back (see [`AccountEvent::decode`], [`TransferEvent::decode`]).
    pub fn decode(
        event_type: &str,
        schema_version: i32,
        data: &Value,
    ) -> Result<Self, EventDecodeError> {
        let kind: EventType = event_type.parse()?;
        if kind.is_transfer() {
            TransferEvent::decode(kind, schema_version, data).map(Self::Transfer)
        } else {
            AccountEvent::decode(event_type, schema_version, data).map(Self::Account)
        }
    }
}

/// Tracing and de-duplication context carried with every event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventMetadata {
    /// Id of the request (and of every message it caused) for log correlation.
    pub correlation_id: Option<String>,
    /// Id of the command that caused the event.
    pub causation_id: Option<String>,
    /// The client's `Idempotency-Key`, when it sent one.
    pub idempotency_key: Option<String>,
    /// Who caused the event (absent on events written before identities existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
}

/// The authenticated caller behind an event: the token's `sub` and its client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Actor {
    /// The token's subject.
    pub sub: String,
    /// The token's `azp` or `client_id`, when it had one.
    pub client_id: Option<String>,
}

/// An event as the event store keeps it and as the feeds and the broker carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventEnvelope {
    #[schema(value_type = String, format = Uuid)]
    pub event_id: Uuid,
    /// The event's stream: the account's id, or for a `Transfer*` event the transfer's.
    pub account_id: AccountId,
    /// 1-based, gap-free position of the event in its account's stream.
    pub version: u64,
    /// Global position in the event store, strictly increasing in feed order.
    pub position: u64,
    #[serde(rename = "type")]
    #[schema(example = "AccountCredited")]
    pub event_type: String,
    pub schema_version: i32,
    #[serde(
        serialize_with = "serialize_micros",
        deserialize_with = "deserialize_timestamp"
    )]
    #[schema(value_type = String, format = DateTime, example = "2026-11-22T10:00:00.123456Z")]
    pub occurred_at: DateTime<Utc>,
    #[schema(value_type = Object, example = json!({"amount": "50.00", "currency": "MAD", "balance": "150.00"}))]
    pub data: Value,
    pub metadata: EventMetadata,
}

impl EventEnvelope {
    /// The typed event inside the envelope.
    pub fn decode(&self) -> Result<DomainEvent, EventDecodeError> {
        DomainEvent::decode(&self.event_type, self.schema_version, &self.data)
    }
}

fn serialize_micros<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn deserialize_timestamp<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<DateTime<Utc>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn mad(cents: i64) -> Money {
        Money::new(Decimal::new(cents, 2), Currency::parse("MAD").unwrap()).unwrap()
    }

    fn every_kind_of_event() -> Vec<AccountEvent> {
        vec![
            AccountEvent::Created {
                initial_balance: mad(10_000),
                owner: Some("alice".into()),
            },
            AccountEvent::Created {
                initial_balance: mad(0),
                owner: None,
            },
            AccountEvent::Activated,
            AccountEvent::Credited {
                amount: mad(5_000),
                balance: mad(15_000),
                leg: None,
            },
            AccountEvent::Debited {
                amount: mad(3_000),
                balance: mad(12_000),
                leg: None,
            },
            AccountEvent::Debited {
                amount: mad(3_000),
                balance: mad(9_000),
                leg: Some(TransferLeg {
                    transfer_id: TransferId::generate(),
                    kind: LegKind::TransferOut,
                }),
            },
            AccountEvent::Credited {
                amount: mad(3_000),
                balance: mad(12_000),
                leg: Some(TransferLeg {
                    transfer_id: TransferId::generate(),
                    kind: LegKind::TransferRefund,
                }),
            },
            AccountEvent::Suspended {
                reason: Some("fraud check".into()),
            },
            AccountEvent::Suspended { reason: None },
            AccountEvent::Reactivated,
            AccountEvent::Closed,
        ]
    }

    #[test]
    fn every_event_decodes_from_its_own_data() {
        for event in every_kind_of_event() {
            let kind = event.event_type();
            assert_eq!(
                AccountEvent::decode(kind.as_str(), event.schema_version(), &event.data()),
                Ok(event)
            );
        }
    }

    #[test]
    fn data_has_the_contract_shape() {
        let credited = AccountEvent::Credited {
            amount: mad(5_000),
            balance: mad(15_000),
            leg: None,
        };
        assert_eq!(
            credited.data(),
            json!({"amount": "50.00", "currency": "MAD", "balance": "150.00"})
        );
        let transfer_id = TransferId::generate();
        let leg = AccountEvent::Credited {
            amount: mad(5_000),
            balance: mad(15_000),
            leg: Some(TransferLeg {
                transfer_id,
                kind: LegKind::TransferIn,
            }),
        };
        assert_eq!(
            leg.data(),
            json!({"amount": "50.00", "currency": "MAD", "balance": "150.00",
                   "transfer_id": transfer_id, "kind": "TRANSFER_IN"})
        );
        assert_eq!(
            AccountEvent::Created {
                initial_balance: mad(0),
                owner: Some("alice".into()),
            }
            .data(),
            json!({"initial_balance": "0.00", "currency": "MAD", "owner": "alice"})
        );
    }

    #[test]
    fn impossible_events_are_refused() {
        let cases = [
            ("AccountTeleported", json!({})),
            (
                "AccountCredited",
                json!({"amount": "-1.00", "currency": "MAD", "balance": "1.00"}),
            ),
            (
                "AccountCredited",
                json!({"amount": "0.00", "currency": "MAD", "balance": "1.00"}),
            ),
            (
                "AccountDebited",
                json!({"amount": "1.001", "currency": "MAD", "balance": "1.00"}),
            ),
            (
                "AccountCreated",
                json!({"initial_balance": 1.5, "currency": "MAD"}),
            ),
            (
                "AccountCreated",
                json!({"initial_balance": "1.00", "currency": "ZZZ"}),
            ),
            ("AccountActivated", json!({"surprise": true})),
            (
                "AccountCredited",
                json!({"amount": "1.00", "currency": "MAD", "balance": "1.00",
                       "transfer_id": Uuid::nil(), "kind": "TRANSFER_OUT"}),
            ),
            (
                "AccountDebited",
                json!({"amount": "1.00", "currency": "MAD", "balance": "1.00",
                       "transfer_id": Uuid::nil()}),
            ),
            ("TransferCompleted", json!({})),
            ("AccountActivated", json!(null)),
        ];
        for (kind, data) in cases {
            assert!(
                AccountEvent::decode(kind, SCHEMA_VERSION, &data).is_err(),
                "{kind} {data}"
            );
        }
        assert!(AccountEvent::decode("AccountActivated", 2, &json!({})).is_err());
    }

    #[test]
    fn metadata_written_before_actors_existed_reads_and_writes_back_unchanged() {
        let stored = json!({"correlation_id": "c", "causation_id": null, "idempotency_key": null});
        let metadata: EventMetadata = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(metadata.actor, None);
        assert_eq!(serde_json::to_value(&metadata).unwrap(), stored);

        let with_actor = EventMetadata {
            actor: Some(Actor {
                sub: "alice".into(),
                client_id: Some("mobile".into()),
            }),
            ..metadata
        };
        assert_eq!(
            serde_json::to_value(&with_actor).unwrap()["actor"],
            json!({"sub": "alice", "client_id": "mobile"})
        );
    }

    #[test]
    fn envelope_serialises_occurred_at_with_microseconds() {
        let envelope = EventEnvelope {
            event_id: Uuid::nil(),
            account_id: AccountId::from(Uuid::nil()),
            version: 3,
            position: 1042,
            event_type: "AccountActivated".into(),
            schema_version: SCHEMA_VERSION,
            occurred_at: DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            data: json!({}),
            metadata: EventMetadata::default(),
        };
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["occurred_at"], "2026-11-22T10:00:00.123456Z");
        assert_eq!(json["type"], "AccountActivated");
        let back: EventEnvelope = serde_json::from_value(json).unwrap();
        assert_eq!(back, envelope);
    }
}
