//! The account and transfer aggregates as plain data and pure functions: no I/O, no
//! clock.

pub(crate) mod account;
pub(crate) mod transfer;

pub(crate) use account::{Account, AccountCommand, DomainError, Requester, decide, evolve};
