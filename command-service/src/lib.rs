//! The write side: REST commands on event-sourced accounts, stored in the Postgres
//! event store and relayed to RabbitMQ from it (the events table is the outbox).
//!
//! ```text
//! HTTP ─▶ http::commands ─▶ application::CommandHandler ─▶ writer task (per account)
//!            │ (statuses,          │ typed outcome          │ rehydrate ─▶ domain::decide
//!            │  bodies: reply)     ◀────────────────────────┘ append_batch (events,
//!            ▼                                                  snapshot, idempotent reply)
//!       http::feeds ◀── event store (Postgres) ──events after──▶ relay ──confirms──▶ RabbitMQ
//!                                              the checkpoint
//! ```
//!
//! - `startup`: builds the [`Application`] from [`Settings`] and runs it until shutdown.
//! - `http`: routes, request/response types (`dto`, also the OpenAPI document), and
//!   `reply`, the only place that picks statuses and bodies.
//! - `application`: the writer tasks (group commit, the one conflict retry loop),
//!   rehydration from snapshots, idempotency keys; returns typed outcomes.
//! - `domain`: the account aggregate, pure `decide` and `evolve`.
//! - `relay`: publishes the events after its checkpoint with publisher confirms,
//!   up to sixteen windows in flight; one leader across replicas.

mod application;
mod domain;
mod envelope;
mod error;
mod http;
mod relay;
mod settings;
mod startup;
mod transfers;

pub use settings::Settings;
pub use startup::Application;
