//! The Python `eventsourcing` peer against the command service on the small store, at the
//! same client counts, alternating which goes first.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::context::{BIG, Ctx, SMALL};
use crate::load::{self, Accounts};
use crate::phases::Side;
use crate::report::format::{rate_p50_p99, ratio};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Sample, median_sample};
use crate::{pg, pgbench};

/// A peer and the service at one client count.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerPair {
    pub(crate) clients: usize,
    pub(crate) peer: Vec<Sample>,
    pub(crate) service: Vec<Sample>,
}

impl PeerPair {
    /// Median service throughput over the peer's, `None` when either side is missing.
    fn speed_up(&self) -> Option<f64> {
        Some(median_sample(&self.service)?.throughput / median_sample(&self.peer)?.throughput)
    }
}

/// What the phase measured of one peer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// The library's version, once installed.
    pub(crate) version: Option<String>,
    pub(crate) runs: Vec<PeerPair>,
}

/// The Python peer and the small-store command service at the same client counts.
pub(crate) async fn peer_vs_service(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    // Still up when the time-travel phase was skipped.
    ctx.stop(BIG).await;
    let peer = ctx
        .peer
        .clone()
        .context("the peer is not installed (see above)")?;
    let database = ctx.name("peer");
    pg::create_database(&ctx.opts.postgres, &database).await?;
    ctx.pg_databases.push(database.clone());
    let target = pgbench::Target::parse(&ctx.opts.postgres, &database)?;
    let accounts = ctx.plan.peer_accounts.min(ctx.plan.accounts());
    progress!("peer setup: {accounts} accounts");
    peer.setup(&target, accounts).await?;
    let service_accounts = Accounts::seeded(1, accounts)?;
    let timing = ctx.plan.timing;
    let small_pool = Ctx::pool(ctx.small_pool.as_ref())?.clone();
    for (index, &clients) in ctx.plan.peer_clients.clone().iter().enumerate() {
        let mut peer_samples = Vec::new();
        let mut service_samples = Vec::new();
        for repeat in 0..ctx.plan.repeats {
            for side in Side::order(index + repeat) {
                if side == Side::Baseline {
                    let sample = peer.run(&target, clients, timing, accounts).await?;
                    progress!(
                        "peer {clients:>2} clients: {:.0} ops/s p50 {:.2} ms p99 {:.2} ms",
                        sample.throughput,
                        sample.p50_ms,
                        sample.p99_ms
                    );
                    peer_samples.push(sample);
                } else {
                    let target = ctx.target(SMALL)?;
                    let sample = load::closed_loop(
                        &target,
                        &service_accounts,
                        clients,
                        timing.warmup,
                        timing.measure,
                    )
                    .await?;
                    progress!(
                        "service {clients:>2} clients: {:.0} cmd/s p50 {:.2} ms p99 {:.2} ms",
                        sample.throughput,
                        sample.p50_ms,
                        sample.p99_ms
                    );
                    service_samples.push(sample);
                    pg::wait_outbox_empty(&small_pool, Instant::now(), Duration::from_secs(120))
                        .await?;
                }
            }
        }
        results.peer.runs.push(PeerPair {
            clients,
            peer: peer_samples,
            service: service_samples,
        });
    }
    ctx.stop(SMALL).await;
    Ok(())
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let speed_ups: Vec<(String, f64)> = results
        .peer
        .runs
        .iter()
        .filter_map(|pair| Some((format!("{} clients", pair.clients), pair.speed_up()?)))
        .collect();
    vec![Target::at_each(
        "≥ 3× the peer (throughput, at each client count)",
        &speed_ups,
        |speed_up| speed_up >= 3.0,
    )]
}

fn section(results: &Results, out: &mut Markdown) {
    let figures = &results.peer;
    out.heading(&format!(
        "Peer: Python `eventsourcing` {}",
        figures.version.as_deref().unwrap_or("")
    ));
    let rows = figures.runs.iter().filter_map(|pair| {
        let (p, s) = (median_sample(&pair.peer)?, median_sample(&pair.service)?);
        Some(
            std::iter::once(pair.clients.to_string())
                .chain(rate_p50_p99(&p))
                .chain(rate_p50_p99(&s))
                .chain([ratio(s.throughput / p.throughput)]),
        )
    });
    out.table(
        &[
            "clients",
            "peer ops/s",
            "peer p50 ms",
            "peer p99 ms",
            "service cmd/s",
            "service p50 ms",
            "service p99 ms",
            "service / peer",
        ],
        "rrrrrrrr",
        rows,
    );
}

fn method(_: &Results) -> Vec<String> {
    vec!["**Peer**: the Python `eventsourcing` library with its Postgres persistence (installed by the benchmark into `target/bench/venv` with `pip install \"eventsourcing[postgres]\"`), an `Account` aggregate; each operation loads the aggregate (replaying its events) and saves one `Credited` event, on as many threads as clients, against its own database on the same server. It is paired with the small-store command service at the same client count.".to_owned()]
}
