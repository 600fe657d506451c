//! The read side: projects the account events from RabbitMQ (with the command
//! service's feeds as the safety net) into a MySQL/MariaDB read model, exactly once
//! and in version order per account, and serves it over REST.

pub mod consumer;
pub mod error;
pub mod follower;
pub mod http;
pub mod projection;
pub mod rebuild;
pub mod settings;
pub mod source;
pub mod startup;
pub mod store;
pub mod watch;

pub use settings::Settings;
pub use startup::Application;
