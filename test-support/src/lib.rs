//! The one place that knows how the workspace's tests reach the shared servers of the
//! machine (`shared/services.md`), as launchbadge/sqlx keeps `sqlx-test`:
//!
//! - [`servers`]: the Postgres, MariaDB/MySQL and RabbitMQ URLs (`TEST_*_URL` override
//!   them), the check that fails a test saying how to start a server that is down, and
//!   free ports;
//! - [`names`]: fresh names, so that every test has its own databases, exchange, queue;
//! - [`cleanup`]: what a test created on the servers, removed after it;
//! - [`proxy`]: a TCP proxy the test cuts and restores, an outage for its services alone;
//! - [`amqp`]: publishing raw messages and events, binding a queue, draining, depth;
//! - [`http`]: a client of one service, its replies and their assertions;
//! - [`auth`]: the tests' token secret and bearer tokens signed with it.
//!
//! It depends on no crate of the workspace: the end-to-end suite, which uses it too,
//! treats the services as black boxes.

pub mod amqp;
pub mod auth;
pub mod cleanup;
pub mod http;
pub mod names;
pub mod proxy;
pub mod servers;

pub use amqp::{Broker, QueueDepth, Received, Subscription};
pub use cleanup::Leftovers;
pub use http::{Api, Reply};
pub use proxy::TcpProxy;
