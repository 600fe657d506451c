//! The account aggregate as plain data and pure functions: no I/O, no clock.

mod account;

pub(crate) use account::{Account, AccountCommand, DomainError, Requester, decide, evolve};
