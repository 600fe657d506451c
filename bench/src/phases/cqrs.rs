//! The Rust peer users would pick instead, cqrs-es + postgres-es behind axum
//! (`peers::cqrs`), against a command service of its own (relay on, publishing into a
//! durable queue), both on the seeded accounts of B1, loaded by the same closed-loop
//! clients at B1's client counts, alternating which goes first.

use std::time::{Duration, Instant};

use crate::context::Ctx;
use crate::load::{self, Accounts, Target as LoadTarget};
use crate::peers::cqrs::{self as peer, ROLE as PEER};
use crate::pg;
use crate::phases::Side;
use crate::procs::Service;
use crate::report::format::{MISSING, compared, mib, ms, rate, rate_p50_p99, ratio};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Sample, Timing, median, median_sample};

/// The command service measured beside the peer.
pub(crate) const SERVICE: &str = "command-service beside cqrs-es";

/// The peer and the service at one client count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    pub(crate) clients: usize,
    pub(crate) cqrs: Vec<Sample>,
    pub(crate) service: Vec<Sample>,
    /// CPU time per command of the peer's process, µs (one per repeat).
    pub(crate) cqrs_cpu_us: Vec<f64>,
    /// The same for the command service.
    pub(crate) service_cpu_us: Vec<f64>,
}

impl Run {
    /// Median service throughput over the peer's, with both figures.
    fn speed_up(&self) -> Option<(f64, f64)> {
        Some((
            median_sample(&self.service)?.throughput,
            median_sample(&self.cqrs)?.throughput,
        ))
    }
}

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// `cqrs-es x + postgres-es y`, from the lock file.
    pub(crate) versions: Option<String>,
    pub(crate) accounts: u64,
    pub(crate) runs: Vec<Run>,
    /// The peer's peak RSS, KiB (kept out of the services' memory targets).
    pub(crate) peer_rss_kib: Option<u64>,
}

/// The peer and a command service of its own, interleaved at each client count.
pub(crate) async fn cqrs_vs_service(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    results.cqrs.versions = peer::versions(&ctx.opts.root);
    let accounts = ctx.plan.accounts();
    results.cqrs.accounts = accounts;

    let peer_database = ctx.name("cqrs");
    pg::create_database(&ctx.opts.postgres, &peer_database).await?;
    ctx.pg_databases.push(peer_database.clone());
    progress!("starting the cqrs-es peer and seeding {accounts} accounts through it");
    peer::start(ctx, &peer_database).await?;
    let peer_target = LoadTarget::new(ctx.service(PEER)?.addr(), &ctx.tokens.admin)?;
    let seeding = Instant::now();
    peer::seed(&peer_target, accounts).await?;
    progress!("seeded in {:.1} s", seeding.elapsed().as_secs_f64());
    let peer_pool = pg::connect(&pg::database_url(&ctx.opts.postgres, &peer_database), 1).await?;
    sqlx::raw_sql("ANALYZE").execute(&peer_pool).await?;
    peer_pool.close().await;

    progress!("starting a command service beside it, {accounts} accounts");
    let database = ctx.name("cqrs_service");
    ctx.pg_databases.push(database.clone());
    let (exchange, queue) = (ctx.cqrs_exchange(), ctx.cqrs_queue());
    ctx.broker()?.declare_sink(&exchange, &queue).await?;
    ctx.start_command(SERVICE, &database, &exchange).await?;
    let pool = pg::connect(&pg::database_url(&ctx.opts.postgres, &database), 2).await?;
    pg::seed_accounts(&pool, 1, accounts, 2, false).await?;
    pg::analyze(&pool).await?;

    let loaded = Accounts::seeded(1, accounts)?;
    let timing = ctx.plan.timing;
    for (index, &clients) in ctx.plan.clients.clone().iter().enumerate() {
        let mut run = Run {
            clients,
            ..Run::default()
        };
        for repeat in 0..ctx.plan.repeats {
            for side in Side::order(index + repeat) {
                if side == Side::Baseline {
                    let (sample, cpu) =
                        measure(ctx.service(PEER)?, &peer_target, &loaded, clients, timing).await?;
                    progress!(
                        "cqrs-es {clients:>2} clients: {:.0} cmd/s p50 {:.2} ms p99 {:.2} ms, {} errors",
                        sample.throughput,
                        sample.p50_ms,
                        sample.p99_ms,
                        sample.errors
                    );
                    run.cqrs.push(sample);
                    run.cqrs_cpu_us.extend(cpu);
                } else {
                    let target = ctx.target(SERVICE)?;
                    let (sample, cpu) =
                        measure(ctx.service(SERVICE)?, &target, &loaded, clients, timing).await?;
                    progress!(
                        "service {clients:>2} clients: {:.0} cmd/s p50 {:.2} ms p99 {:.2} ms, {} errors",
                        sample.throughput,
                        sample.p50_ms,
                        sample.p99_ms,
                        sample.errors
                    );
                    run.service.push(sample);
                    run.service_cpu_us.extend(cpu);
                    pg::wait_outbox_empty(&pool, Instant::now(), Duration::from_secs(180)).await?;
                    ctx.broker()?.purge(&queue).await?;
                }
            }
        }
        results.cqrs.runs.push(run);
    }
    pool.close().await;
    if let Some(service) = ctx.services.remove(PEER) {
        results.cqrs.peer_rss_kib = Some(service.stop().await).filter(|kib| *kib > 0);
    }
    ctx.stop(SERVICE).await;
    Ok(())
}

/// A closed-loop run against `service` at `target`, with the process's CPU time per command.
async fn measure(
    service: &Service,
    target: &LoadTarget,
    accounts: &Accounts,
    clients: usize,
    timing: Timing,
) -> anyhow::Result<(Sample, Option<f64>)> {
    let before = service.cpu_time();
    let sample =
        load::closed_loop(target, accounts, clients, timing.warmup, timing.measure).await?;
    let commands = sample.throughput * (timing.warmup + timing.measure).as_secs_f64();
    let cpu = match (before, service.cpu_time()) {
        (Some(before), Some(after)) if commands > 0.0 => {
            Some((after - before).as_secs_f64() * 1e6 / commands)
        }
        _ => None,
    };
    Ok((sample, cpu))
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    [([1, 4], 1.0), ([16, 64], 1.3)]
        .into_iter()
        .map(|(counts, floor)| {
            let measured: Vec<(usize, f64, f64)> = results
                .cqrs
                .runs
                .iter()
                .filter(|run| counts.contains(&run.clients))
                .filter_map(|run| {
                    let (service, cqrs) = run.speed_up()?;
                    Some((run.clients, service, cqrs))
                })
                .collect();
            let figure = (!measured.is_empty()).then(|| {
                (
                    measured
                        .iter()
                        .map(|(clients, service, cqrs)| {
                            format!("{clients}: {}", compared(*service, *cqrs, rate, "/s"))
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    measured
                        .iter()
                        .all(|(_, service, cqrs)| service / cqrs >= floor),
                )
            });
            Target::new(
                format!(
                    "command throughput ≥ {floor:.1}× cqrs-es at {} and {} clients",
                    counts[0], counts[1]
                ),
                figure,
            )
        })
        .collect()
}

/// `1403/s, p50 0.69 ms, p99 1.20 ms`.
fn cell(sample: Option<Sample>) -> String {
    sample.map_or_else(
        || MISSING.to_owned(),
        |s| {
            format!(
                "{}/s, p50 {} ms, p99 {} ms",
                rate(s.throughput),
                ms(s.p50_ms),
                ms(s.p99_ms)
            )
        },
    )
}

fn cpu(values: &[f64]) -> String {
    let us = median(values.iter().copied());
    if us.is_finite() {
        format!("{us:.0} µs")
    } else {
        MISSING.to_owned()
    }
}

fn section(results: &Results, out: &mut Markdown) {
    let figures = &results.cqrs;
    out.heading(&format!(
        "Peer: {} behind axum, against the command service",
        figures
            .versions
            .as_deref()
            .unwrap_or("cqrs-es + postgres-es")
    ));
    let rows = figures.runs.iter().map(|run| {
        let minimal = results
            .b1
            .pairs
            .iter()
            .find(|pair| pair.clients == run.clients)
            .and_then(|pair| median_sample(&pair.b1));
        let (cqrs, service) = (median_sample(&run.cqrs), median_sample(&run.service));
        let errors: usize = run.cqrs.iter().chain(&run.service).map(|s| s.errors).sum();
        [
            run.clients.to_string(),
            cell(minimal),
            cell(cqrs),
            cell(service),
            run.speed_up()
                .map_or_else(|| MISSING.to_owned(), |(s, c)| ratio(s / c)),
            format!("{} / {}", cpu(&run.cqrs_cpu_us), cpu(&run.service_cpu_us)),
            errors.to_string(),
        ]
    });
    out.table(
        &[
            "clients",
            "minimal append (B1)",
            "cqrs-es",
            "command service",
            "service / cqrs-es",
            "CPU per command (cqrs-es / service)",
            "errors",
        ],
        "rrrrrrr",
        rows,
    );
    let notes: Vec<String> = figures
        .runs
        .iter()
        .flat_map(|run| {
            run.cqrs
                .iter()
                .chain(&run.service)
                .filter_map(|s| s.note.clone())
                .map(move |note| format!("{} clients: {note}", run.clients))
        })
        .collect();
    if !notes.is_empty() {
        out.line("");
        out.bullets(notes.iter().take(8));
    }
    if let Some(kib) = figures.peer_rss_kib {
        out.paragraph(&format!(
            "Peak RSS of the cqrs-es peer: {:.1} MiB.",
            mib(kib)
        ));
    }
    out.paragraph("Every repeat:\n");
    let repeats = figures.runs.iter().flat_map(|run| {
        [("cqrs-es", &run.cqrs), ("service", &run.service)]
            .into_iter()
            .flat_map(move |(side, samples)| {
                samples.iter().map(move |s| {
                    [run.clients.to_string(), side.to_owned()]
                        .into_iter()
                        .chain(rate_p50_p99(s))
                })
            })
    });
    out.table(
        &["clients", "side", "cmd/s", "p50 ms", "p99 ms"],
        "rlrrr",
        repeats,
    );
}

fn method(results: &Results) -> Vec<String> {
    vec![format!(
        "**cqrs-es peer** (`bench/cqrs-peer`): an `Account` aggregate on {} as its documentation shows (`handle` writes events to the `EventSink`, `apply` evolves; `default_postgress_pool`, 10 connections; `postgres_cqrs` with no query processors, so no snapshots: every command loads the account's events), the library's `events` and `snapshots` tables, behind axum 0.8 with the command service's paths and bodies; it refuses overdrafts like the service, retries a command that lost an optimistic-concurrency race (up to 5 attempts) and answers an empty 200. It runs from its release binary on its own database with the same {} accounts, opened and activated through its own requests (then `ANALYZE`). Beside it runs a command service of its own (release binary, default settings, relay publishing to RabbitMQ into a durable queue without consumer, purged between runs after the relay has drained), seeded like B1's store. Both are driven by the same closed-loop clients as B1's service figures, at B1's client counts and repeats, alternating which goes first; CPU per command is the process's user + system time over the warm-up and measurement, per command. The minimal-append column repeats B1's figures measured earlier in the run.",
        results
            .cqrs
            .versions
            .as_deref()
            .unwrap_or("cqrs-es + postgres-es"),
        results.cqrs.accounts
    )]
}
