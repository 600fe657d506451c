//! The libraries the service is compared with, each on the same Postgres server and the
//! same credits:
//! - `cqrs`: cqrs-es + postgres-es behind axum (the `cqrs-peer` crate), a process started
//!   like the services and driven by the same HTTP load (`phases/cqrs.rs`, paired with a
//!   command service of its own at B1's client counts);
//! - `python`: the Python `eventsourcing` library, installed while the run is prepared,
//!   running its own threads (`phases/peer.rs`, paired with the small-store service).
//!
//! Adding a peer: a module here that starts or installs it and runs `clients` concurrent
//! credits for a `Timing`, returning a `stats::Sample`; its figures in `Results`, with
//! its section and target, in a phase.

pub(crate) mod cqrs;
pub(crate) mod python;
