//! The libraries the service is compared with, each on the same Postgres server and the
//! same credits. Each one is installed while the run is prepared and measured by the
//! peer phase (`phases/peer.rs`), paired with the command service at the same client count.
//!
//! Adding a peer: a module here that installs it and runs `clients` concurrent credits
//! for a `Timing`, returning a `stats::Sample`; a field for it in `Ctx`; a `peer::Figures`
//! for it in `Results`, with its section and target (see `phases/peer.rs`).

pub(crate) mod python;
