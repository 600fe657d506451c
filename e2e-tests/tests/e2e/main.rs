//! End-to-end specifications of the platform: both services as processes, each test
//! on its own databases, exchange, queue and ports (see the harness in `src/`).

mod compose;
mod crash;
mod delivery;
mod identity;
mod lifecycle;
mod listing;
mod outage;
mod partitions;
mod rebuild;
mod replicas;
mod transfers;
