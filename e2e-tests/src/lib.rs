//! End-to-end harness: both services as real processes on the machine's shared
//! Postgres, MariaDB/MySQL and RabbitMQ (see `shared/services.md`), each test on its
//! own databases, exchange, queue and ports, driven over HTTP and AMQP like a client.
//!
//! Test code only; the tests are in `tests/`, the projection-lag probe in `src/bin/lag.rs`.

pub mod binaries;
pub mod compose;
pub mod model;
pub mod process;
pub mod stack;
pub mod workload;

pub use stack::{Ack, Stack, StackConfig};
