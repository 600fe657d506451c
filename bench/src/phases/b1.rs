//! B1 against the command service: pgbench running the event store's own statements for
//! one credit, paired with closed-loop HTTP clients posting credits, at each client count.

use std::time::{Duration, Instant};

use crate::context::{COMMAND, Ctx};
use crate::load::{self, Accounts};
use crate::phases::Side;
use crate::report::format::{MISSING, compared, ms, rate, rate_p50_p99, ratio};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Sample, median, median_sample};
use crate::{pg, pgbench};

/// B1 and the service at one client count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pair {
    pub(crate) clients: usize,
    pub(crate) b1: Vec<Sample>,
    pub(crate) service: Vec<Sample>,
    /// Command-service CPU time per command, µs (one per service repeat).
    pub(crate) service_cpu_us: Vec<f64>,
}

/// What the phase measured: one pair per client count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub(crate) pairs: Vec<Pair>,
}

impl Figures {
    /// The median B1 and service samples at `clients`.
    fn pair(&self, clients: usize) -> Option<(Sample, Sample)> {
        let pair = self.pairs.iter().find(|p| p.clients == clients)?;
        Some((median_sample(&pair.b1)?, median_sample(&pair.service)?))
    }

    /// The command service's median CPU time per credit at `clients`, µs.
    pub(crate) fn cpu_per_command(&self, clients: usize) -> Option<f64> {
        let pair = self.pairs.iter().find(|p| p.clients == clients)?;
        let us = median(pair.service_cpu_us.iter().copied());
        (us.is_finite() && us > 0.0).then_some(us)
    }

    /// The service's median throughput at `clients`.
    pub(crate) fn throughput(&self, clients: usize) -> Option<f64> {
        let pair = self.pairs.iter().find(|p| p.clients == clients)?;
        median_sample(&pair.service).map(|sample| sample.throughput)
    }

    /// Highest median service throughput over the client counts.
    pub(crate) fn peak(&self) -> Option<f64> {
        self.pairs
            .iter()
            .filter_map(|p| median_sample(&p.service))
            .map(|s| s.throughput)
            .filter(|t| t.is_finite() && *t > 0.0)
            .max_by(f64::total_cmp)
    }
}

/// B1 (pgbench) and the service at each client count, alternating which goes first.
pub(crate) async fn b1_vs_service(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let script = ctx.dir.join("b1.sql");
    std::fs::write(&script, pgbench::script())?;
    let target = pgbench::Target::parse(&ctx.opts.postgres, &ctx.name("b1"))?;
    let accounts = Accounts::seeded(1, ctx.plan.accounts())?;
    let timing = ctx.plan.timing;
    for (index, &clients) in ctx.plan.clients.clone().iter().enumerate() {
        let mut pair = Pair {
            clients,
            ..Pair::default()
        };
        for repeat in 0..ctx.plan.repeats {
            for side in Side::order(index + repeat) {
                if side == Side::Baseline {
                    let label = format!("b1_c{clients}_r{repeat}");
                    let sample = pgbench::run(
                        &target,
                        &script,
                        &ctx.dir,
                        ctx.plan.accounts(),
                        clients,
                        timing,
                        &label,
                    )
                    .await?;
                    progress!(
                        "B1 {clients:>2} clients: {:.0} tx/s p50 {:.2} ms p99 {:.2} ms",
                        sample.throughput,
                        sample.p50_ms,
                        sample.p99_ms
                    );
                    pair.b1.push(sample);
                } else {
                    let target = ctx.target(COMMAND)?;
                    let service = ctx.service(COMMAND)?;
                    let cpu_before = service.cpu_time();
                    let sample = load::closed_loop(
                        &target,
                        &accounts,
                        clients,
                        timing.warmup,
                        timing.measure,
                    )
                    .await?;
                    if let (Some(before), Some(after)) = (cpu_before, service.cpu_time()) {
                        let commands =
                            sample.throughput * (timing.warmup + timing.measure).as_secs_f64();
                        if commands > 0.0 {
                            pair.service_cpu_us
                                .push((after - before).as_secs_f64() * 1e6 / commands);
                        }
                    }
                    progress!(
                        "service {clients:>2} clients: {:.0} cmd/s p50 {:.2} ms p99 {:.2} ms, {} errors",
                        sample.throughput,
                        sample.p50_ms,
                        sample.p99_ms,
                        sample.errors
                    );
                    pair.service.push(sample);
                    let pool = Ctx::pool(ctx.main_pool.as_ref())?;
                    pg::wait_outbox_empty(pool, Instant::now(), Duration::from_secs(180)).await?;
                }
            }
        }
        results.b1.pairs.push(pair);
    }
    Ok(())
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let figures = &results.b1;
    let mut targets: Vec<Target> = [16, 64]
        .into_iter()
        .map(|clients| {
            Target::new(
                format!("command throughput ≥ 1.0× B1 at {clients} clients"),
                figures.pair(clients).map(|(b1, service)| {
                    (
                        compared(service.throughput, b1.throughput, rate, "/s"),
                        service.throughput / b1.throughput >= 1.0,
                    )
                }),
            )
        })
        .collect();
    targets.push(Target::new(
        "1-client p50 within 1 ms of B1's",
        figures.pair(1).map(|(b1, service)| {
            let gap = service.p50_ms - b1.p50_ms;
            (
                format!(
                    "{gap:+.2} ms ({} vs {} ms)",
                    ms(service.p50_ms),
                    ms(b1.p50_ms)
                ),
                gap <= 1.0,
            )
        }),
    ));
    let spreads: Vec<(String, f64)> = figures
        .pairs
        .iter()
        .filter_map(|p| {
            median_sample(&p.service).map(|s| (p.clients.to_string(), s.p99_ms / s.p50_ms))
        })
        .collect();
    targets.push(Target::at_each(
        "service p99 ≤ 3× p50 (at each client count)",
        &spreads,
        |spread| spread <= 3.0,
    ));
    targets
}

fn section(results: &Results, out: &mut Markdown) {
    let pairs = &results.b1.pairs;
    out.heading(&format!(
        "B1 (raw Postgres) vs the command service: credits, random over {} accounts",
        results.accounts
    ));
    let medians = pairs.iter().filter_map(|pair| {
        let (b1, service) = (median_sample(&pair.b1)?, median_sample(&pair.service)?);
        let cpu = median(pair.service_cpu_us.iter().copied());
        let cpu = if cpu.is_finite() {
            format!("{cpu:.0} µs")
        } else {
            MISSING.to_owned()
        };
        let comparison = [
            ratio(service.p99_ms / service.p50_ms),
            ratio(service.throughput / b1.throughput),
            cpu,
            (b1.errors + service.errors).to_string(),
        ];
        Some(
            std::iter::once(pair.clients.to_string())
                .chain(rate_p50_p99(&b1))
                .chain(rate_p50_p99(&service))
                .chain(comparison),
        )
    });
    out.table(
        &[
            "clients",
            "B1 tx/s",
            "B1 p50 ms",
            "B1 p99 ms",
            "service cmd/s",
            "service p50 ms",
            "service p99 ms",
            "service p99/p50",
            "service / B1",
            "service CPU per command",
            "errors",
        ],
        "rrrrrrrrrrr",
        medians,
    );
    let notes: Vec<String> = pairs
        .iter()
        .flat_map(|p| {
            p.b1.iter()
                .chain(p.service.iter())
                .filter_map(|s| s.note.clone())
                .map(move |n| format!("{} clients: {n}", p.clients))
        })
        .collect();
    if !notes.is_empty() {
        out.line("");
        out.bullets(notes.iter().take(8));
    }
    out.paragraph("Every repeat:\n");
    let repeats = pairs.iter().flat_map(|pair| {
        [("B1", &pair.b1), ("service", &pair.service)]
            .into_iter()
            .flat_map(move |(side, samples)| {
                samples.iter().map(move |s| {
                    [pair.clients.to_string(), side.to_owned()]
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

fn method(_: &Results) -> Vec<String> {
    vec![
        "**B1** is pgbench (`-M prepared`, per-transaction log) running the store's own statements for one credit: read the stream row (with its snapshot), then in one transaction bump the stream version and snapshot, take the global append lock and notify the relay (`pg_advisory_xact_lock`, `pg_notify`), insert the event and its outbox row, commit. It runs against its own copy of the schema (the event store's migrations) with the same accounts. Its version check takes the row lock instead of comparing with the version read first, since pgbench cannot retry a conflict.".to_owned(),
        "**Service** figures are closed-loop clients, one keep-alive HTTP/1.1 connection each, posting `{\"amount\": \"1.00\"}` credits to random accounts; only 200 answers count. The outbox relay runs (it is part of the command service) and publishes every event into the projection's durable queue; the query service is stopped during these pairs so that its CPU use does not count against the command service on this 2-core machine, and the relay's backlog is drained before the next measurement.".to_owned(),
    ]
}
