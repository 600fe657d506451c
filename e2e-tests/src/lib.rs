//! End-to-end harness: both services as real processes on the machine's shared
//! Postgres, MariaDB/MySQL and RabbitMQ (see `shared/services.md`), each test on its
//! own databases, exchange, queue and ports, driven over HTTP and AMQP like a client.
//!
//! Test code only; the tests are in `tests/`, the projection-lag probe in `src/bin/lag.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api;
pub mod binaries;
pub mod broker;
pub mod compose;
pub mod model;
pub mod process;
pub mod proxy;
pub mod servers;
pub mod stack;
pub mod workload;

pub use api::{Api, Reply};
pub use broker::Broker;
pub use stack::{Ack, Stack, StackConfig};
