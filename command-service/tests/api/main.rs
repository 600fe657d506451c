//! The command service over HTTP, against the real Postgres and RabbitMQ: in-process on
//! a free port, or as its binary for the faults that need a process; every test on its
//! own database and exchange.

mod auth;
mod contract;
mod faults;
mod helpers;
mod outcomes;
mod transfers;
