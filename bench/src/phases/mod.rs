//! The benchmark's phases, one module each, run in the order of [`Phase::ALL`] after
//! [`prepare`](prepare::prepare). Each phase measures one pair, baseline against the
//! platform, interleaved so that a drifting machine hurts both sides alike, and owns its
//! figures and its part of the report.
//!
//! Adding a phase: a module here with its `run`, its `Figures` (a field of
//! `report::Results`) and its `REPORT` part (listed in `report::SECTIONS` and
//! `report::TARGETS`), and a variant of [`Phase`].

pub(crate) mod b1;
pub(crate) mod b2;
pub(crate) mod b3;
pub(crate) mod cqrs;
pub(crate) mod growth;
pub(crate) mod lag;
pub(crate) mod live;
pub(crate) mod peer;
mod prepare;
pub(crate) mod replicas;
pub(crate) mod rss;
pub(crate) mod token_check;
pub(crate) mod transfers;

use crate::context::Ctx;
use crate::elapsed;
use crate::report::Results;

/// One measured step of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// B2 (raw RabbitMQ publishing) against the outbox relay.
    RelayVsB2,
    /// B3 (raw MariaDB inserts) against the live projection working off the relay's backlog.
    LiveProjectionVsB3,
    /// B1 (pgbench) against the command service at each client count.
    B1VsService,
    /// The cqrs-es peer against a command service of its own.
    CqrsPeer,
    /// `Authenticator::verify` on one core, against the command's CPU B1 measured.
    TokenCheck,
    /// B3 against `query-service rebuild`.
    RebuildVsB3,
    /// Acknowledged → visible in the query service, at fractions of the peak.
    ProjectionLag,
    /// A small store against a big one, and latency on long streams.
    CostGrowth,
    /// `as_of` reads on long histories, and idle open update streams.
    TimeTravel,
    /// Transfer completion latency, and transfer throughput beside credits.
    Transfers,
    /// The Python `eventsourcing` peer against the command service.
    Peer,
    /// The query service's queue designs with one and two replicas.
    Replicas,
}

impl Phase {
    /// Every phase, in the order of the run.
    pub(crate) const ALL: [Self; 12] = [
        Self::RelayVsB2,
        Self::LiveProjectionVsB3,
        Self::B1VsService,
        Self::CqrsPeer,
        Self::TokenCheck,
        Self::RebuildVsB3,
        Self::ProjectionLag,
        Self::Transfers,
        Self::CostGrowth,
        Self::TimeTravel,
        Self::Peer,
        Self::Replicas,
    ];

    /// The name progress lines and failures use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::RelayVsB2 => "relay vs B2",
            Self::LiveProjectionVsB3 => "live projection vs B3",
            Self::B1VsService => "B1 vs service",
            Self::CqrsPeer => "cqrs-es peer vs service",
            Self::TokenCheck => "token check",
            Self::RebuildVsB3 => "rebuild vs B3",
            Self::ProjectionLag => "projection lag",
            Self::CostGrowth => "cost growth",
            Self::TimeTravel => "time travel and live updates",
            Self::Transfers => "transfers",
            Self::Peer => "peer",
            Self::Replicas => "query replicas",
        }
    }

    /// Whether it runs the query service.
    fn needs_query_service(self) -> bool {
        matches!(
            self,
            Self::LiveProjectionVsB3
                | Self::RebuildVsB3
                | Self::ProjectionLag
                | Self::TimeTravel
                | Self::Transfers
                | Self::Replicas
        )
    }

    /// Whether it is skipped once the run is over its time budget.
    fn optional(self) -> bool {
        !matches!(
            self,
            Self::RelayVsB2
                | Self::LiveProjectionVsB3
                | Self::B1VsService
                | Self::CqrsPeer
                | Self::TokenCheck
        )
    }

    async fn run(self, ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
        match self {
            Self::RelayVsB2 => Box::pin(b2::relay_vs_b2(ctx, results)).await,
            Self::LiveProjectionVsB3 => Box::pin(b3::live_vs_b3(ctx, results)).await,
            Self::B1VsService => Box::pin(b1::b1_vs_service(ctx, results)).await,
            Self::CqrsPeer => Box::pin(cqrs::cqrs_vs_service(ctx, results)).await,
            Self::TokenCheck => Box::pin(token_check::token_check(ctx, results)).await,
            Self::RebuildVsB3 => Box::pin(b3::rebuild_vs_b3(ctx, results)).await,
            Self::ProjectionLag => Box::pin(lag::projection_lag(ctx, results)).await,
            Self::CostGrowth => Box::pin(growth::cost_growth(ctx, results)).await,
            Self::TimeTravel => Box::pin(live::time_travel_and_streams(ctx, results)).await,
            Self::Transfers => Box::pin(transfers::transfers(ctx, results)).await,
            Self::Peer => Box::pin(peer::peer_vs_service(ctx, results)).await,
            Self::Replicas => Box::pin(replicas::replicas(ctx, results)).await,
        }
    }
}

/// Prepares the run, then runs every phase it can; a failure is recorded and the run
/// goes on with the next phase.
pub(crate) async fn run_all(ctx: &mut Ctx, results: &mut Results) {
    if let Err(error) = Box::pin(prepare::prepare(ctx, results)).await {
        results.failures.push(format!("preparation: {error:#}"));
        return;
    }
    for phase in Phase::ALL {
        let name = phase.name();
        if !ctx.opts.only.is_empty()
            && !ctx
                .opts
                .only
                .iter()
                .any(|only| name.contains(only.as_str()))
        {
            results.failures.push(format!("{name}: not run (--only)"));
            continue;
        }
        if phase.needs_query_service() && !ctx.has_query {
            results.failures.push(format!(
                "{name}: skipped, the query-service binary is missing"
            ));
            continue;
        }
        if phase.optional() && elapsed() > ctx.plan.budget {
            results.failures.push(format!(
                "{name}: skipped, the run already took {:.0} s",
                elapsed().as_secs_f64()
            ));
            continue;
        }
        progress!("== {name}");
        if let Err(error) = Box::pin(phase.run(ctx, results)).await {
            progress!("{name} failed: {error:#}");
            results.failures.push(format!("{name}: {error:#}"));
        }
    }
}

/// The two sides of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Baseline,
    Platform,
}

impl Side {
    /// The order of the sides at turn `turn`: the baseline first on even turns (ABBA).
    pub(crate) fn order(turn: usize) -> [Self; 2] {
        if turn.is_multiple_of(2) {
            [Self::Baseline, Self::Platform]
        } else {
            [Self::Platform, Self::Baseline]
        }
    }
}
