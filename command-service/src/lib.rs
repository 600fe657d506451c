//! The write side: REST commands on event-sourced accounts, stored in the Postgres
//! event store and relayed to RabbitMQ through the transactional outbox.

pub mod application;
pub mod domain;
pub mod envelope;
pub mod error;
pub mod http;
pub mod relay;
pub mod settings;
pub mod startup;

pub use settings::Settings;
pub use startup::Application;
