//! Event and value types shared by the write side and the read side.
//!
//! Everything here is pure: parsing, validation and (de)serialisation, no I/O.
//! Values that exist are valid: a [`Currency`] is a known ISO 4217 code, a
//! [`Money`] amount has no more fraction digits than its currency allows.

mod account;
mod currency;
mod event;
mod money;
mod transfer;
mod upcast;

pub use account::{AccountId, AccountStatus};
pub use currency::Currency;
pub use event::{
    AccountEvent, Actor, DomainEvent, EventDecodeError, EventEnvelope, EventMetadata, EventType,
    SCHEMA_VERSION,
};
pub use money::{MAX_BALANCE, MAX_COMMAND_AMOUNT, Money, MoneyError, parse_decimal, render_amount};
pub use transfer::{
    LegKind, MAX_REFERENCE_CHARS, TransferEvent, TransferId, TransferLeg, TransferStatus,
};
