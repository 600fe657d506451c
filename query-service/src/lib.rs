//! The read side: projects the events of accounts and transfers from RabbitMQ (with
//! the command service's feeds as the safety net) into a MySQL/MariaDB read model,
//! exactly once and in version order per stream, and serves it over REST.
//!
//! How an event travels:
//!
//! - [`consumer`] takes `account.*` and `transfer.*` messages off the projection's queues
//!   (declared by [`topology`]: partitions with one active consumer each), and
//!   [`follower`] reads the command service's global feed from a checkpoint (what the
//!   broker lost); [`source`] is the HTTP client of those feeds.
//! - Both hand events to [`projection`]: [`projection::plan`] decides (pure), the
//!   orchestration fills gaps from the stream's events and writes through [`store`]
//!   (accounts, operations, transfers, and the balance sheet's counters).
//! - Each write wakes the reads waiting for that version ([`watch`]); [`http`] serves
//!   the read model ([`store`]'s queries), mapping failures once in [`error`].
//! - [`rebuild`] replays the global feed into fresh tables and swaps them in;
//!   [`startup`] assembles the service from [`settings`].

mod consumer;
mod error;
mod follower;
mod http;
pub mod projection;
pub mod rebuild;
pub mod settings;
pub mod source;
pub mod startup;
pub mod store;
mod topology;
pub mod watch;

pub use settings::Settings;
pub use startup::Application;
