//! B1 against the command service: pgbench running the minimal durable append (B1) and
//! the event store's own statements for one credit (B1s), interleaved with closed-loop
//! HTTP clients posting credits, at each client count.

use std::time::{Duration, Instant};

use crate::context::{COMMAND, Ctx};
use crate::load::{self, Accounts};
use crate::prom::{self, Quantiles};
use crate::report::format::{MISSING, duration, ms, rate_p50_p99, ratio};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Sample, median, median_sample};
use crate::{pg, pgbench};

/// B1, B1s and the service at one client count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pair {
    pub(crate) clients: usize,
    /// The minimal append.
    pub(crate) b1: Vec<Sample>,
    /// The store's own statements.
    pub(crate) b1s: Vec<Sample>,
    pub(crate) service: Vec<Sample>,
    /// Command-service CPU time per command, µs (one per service repeat).
    pub(crate) service_cpu_us: Vec<f64>,
    /// The service's own latency of the credit route (its `/metrics` histogram), one
    /// per service repeat where it is exported.
    pub(crate) service_server: Vec<Quantiles>,
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

/// The three sides of a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Minimal,
    Store,
    Service,
}

impl Side {
    /// The order of the sides at turn `turn`: rotated by one each turn.
    fn order(turn: usize) -> [Self; 3] {
        let mut sides = [Self::Minimal, Self::Store, Self::Service];
        sides.rotate_left(turn % 3);
        sides
    }
}

/// B1, B1s (pgbench) and the service at each client count, rotating which goes first.
pub(crate) async fn b1_vs_service(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let minimal_script = ctx.dir.join("b1.sql");
    std::fs::write(&minimal_script, pgbench::minimal_script())?;
    let store_script = ctx.dir.join("b1s.sql");
    let store_pool =
        pg::connect(&pg::database_url(&ctx.opts.postgres, &ctx.name("b1s")), 1).await?;
    let outbox = pg::writes_outbox_rows(&store_pool).await?;
    store_pool.close().await;
    std::fs::write(&store_script, pgbench::store_script(outbox))?;
    let minimal = pgbench::Target::parse(&ctx.opts.postgres, &ctx.name("b1"))?;
    let store = pgbench::Target::parse(&ctx.opts.postgres, &ctx.name("b1s"))?;
    let accounts = Accounts::seeded(1, ctx.plan.accounts())?;
    let main = Ctx::pool(ctx.main_pool.as_ref())?;
    if pg::event_count(main).await? == 0 {
        // The relay phase seeds the service's accounts; run without it, this one does.
        pg::seed_accounts(main, 1, ctx.plan.accounts(), 2, false).await?;
        pg::analyze(main).await?;
    }
    let timing = ctx.plan.timing;
    for (index, &clients) in ctx.plan.clients.clone().iter().enumerate() {
        let mut pair = Pair {
            clients,
            ..Pair::default()
        };
        for repeat in 0..ctx.plan.repeats {
            for side in Side::order(index + repeat) {
                let (name, target, script) = match side {
                    Side::Minimal => ("B1", &minimal, &minimal_script),
                    Side::Store => ("B1s", &store, &store_script),
                    Side::Service => {
                        let (sample, cpu, server) = service_run(ctx, &accounts, clients).await?;
                        pair.service.push(sample);
                        pair.service_cpu_us.extend(cpu);
                        pair.service_server.extend(server);
                        continue;
                    }
                };
                let label = format!("{}_c{clients}_r{repeat}", name.to_lowercase());
                let sample = pgbench::run(
                    target,
                    script,
                    &ctx.dir,
                    ctx.plan.accounts(),
                    clients,
                    timing,
                    &label,
                )
                .await?;
                progress!(
                    "{name:<3} {clients:>2} clients: {:.0} tx/s p50 {:.2} ms p99 {:.2} ms",
                    sample.throughput,
                    sample.p50_ms,
                    sample.p99_ms
                );
                if side == Side::Minimal {
                    pair.b1.push(sample);
                } else {
                    pair.b1s.push(sample);
                }
            }
        }
        results.b1.pairs.push(pair);
    }
    Ok(())
}

/// One closed-loop run against the command service, then the relay's backlog drained;
/// the sample, the service's CPU time per command (µs) and its own latency of the
/// credit route over the run (warm-up included).
async fn service_run(
    ctx: &Ctx,
    accounts: &Accounts,
    clients: usize,
) -> anyhow::Result<(Sample, Option<f64>, Option<Quantiles>)> {
    let timing = ctx.plan.timing;
    let target = ctx.target(COMMAND)?;
    let service = ctx.service(COMMAND)?;
    let scrape_before = prom::scrape(&ctx.http, &service.base_url()).await;
    let cpu_before = service.cpu_time();
    let sample =
        load::closed_loop(&target, accounts, clients, timing.warmup, timing.measure).await?;
    let scrape_after = prom::scrape(&ctx.http, &service.base_url()).await;
    let server = scrape_before
        .zip(scrape_after)
        .and_then(|(before, after)| prom::credit_latency(&before, &after));
    let mut cpu = None;
    if let (Some(before), Some(after)) = (cpu_before, service.cpu_time()) {
        let commands = sample.throughput * (timing.warmup + timing.measure).as_secs_f64();
        if commands > 0.0 {
            cpu = Some((after - before).as_secs_f64() * 1e6 / commands);
        }
    }
    progress!(
        "service {clients:>2} clients: {:.0} cmd/s p50 {:.2} ms p99 {:.2} ms, {} errors",
        sample.throughput,
        sample.p50_ms,
        sample.p99_ms,
        sample.errors
    );
    let pool = Ctx::pool(ctx.main_pool.as_ref())?;
    pg::wait_outbox_empty(pool, Instant::now(), Duration::from_secs(180)).await?;
    Ok((sample, cpu, server))
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let figures = &results.b1;
    let mut targets = vec![Target::new(
        "1-client p50 within 0.3 ms of B1's (the minimal append)",
        figures.pair(1).map(|(b1, service)| {
            let gap = service.p50_ms - b1.p50_ms;
            (
                format!(
                    "{gap:+.2} ms ({} vs {} ms)",
                    ms(service.p50_ms),
                    ms(b1.p50_ms)
                ),
                gap <= 0.3,
            )
        }),
    )];
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
        "B1 (minimal append), B1s (the store's statements) and the command service: credits, random over {} accounts",
        results.accounts
    ));
    let medians = pairs.iter().filter_map(|pair| {
        let (b1, service) = (median_sample(&pair.b1)?, median_sample(&pair.service)?);
        let b1s = median_sample(&pair.b1s).unwrap_or(Sample {
            throughput: f64::NAN,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            ..Sample::default()
        });
        let cpu = median(pair.service_cpu_us.iter().copied());
        let cpu = if cpu.is_finite() {
            format!("{cpu:.0} µs")
        } else {
            MISSING.to_owned()
        };
        let server = if pair.service_server.is_empty() {
            MISSING.to_owned()
        } else {
            format!(
                "{} / {}",
                ms(median(pair.service_server.iter().map(|q| q.p50_ms))),
                ms(median(pair.service_server.iter().map(|q| q.p99_ms)))
            )
        };
        let comparison = [
            server,
            ratio(service.p99_ms / service.p50_ms),
            ratio(service.throughput / b1.throughput),
            ratio(service.throughput / b1s.throughput),
            cpu,
            (b1.errors + b1s.errors + service.errors).to_string(),
        ];
        Some(
            std::iter::once(pair.clients.to_string())
                .chain(rate_p50_p99(&b1))
                .chain(rate_p50_p99(&b1s))
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
            "B1s tx/s",
            "B1s p50 ms",
            "B1s p99 ms",
            "service cmd/s",
            "service p50 ms",
            "service p99 ms",
            "server-side p50 / p99 ms",
            "service p99/p50",
            "service / B1",
            "service / B1s",
            "service CPU per command",
            "errors",
        ],
        "rrrrrrrrrrrrrrrr",
        medians,
    );
    out.paragraph("\"server-side\" is the command service's own `http_request_duration_seconds` of the credit route (its histogram, medians over the turns of each run's p50 and p99, warm-up included; – when not exported as a histogram); the other service figures are the clients'. \"service / B1\" and \"service / B1s\" are informative: the throughput targets compare the service with the cqrs-es peer (below).");
    let notes: Vec<String> = pairs
        .iter()
        .flat_map(|p| {
            p.b1.iter()
                .chain(p.b1s.iter())
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
        [
            ("B1", &pair.b1),
            ("B1s", &pair.b1s),
            ("service", &pair.service),
        ]
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

fn method(results: &Results) -> Vec<String> {
    vec![
        "**B1** is the minimal durable append any Postgres event store must do, run by pgbench (`-M prepared`, per-transaction log) on a database of its own with one table (`events`: `position bigserial` primary key, `stream_id uuid`, `version bigint`, `payload jsonb` of about the size of the service's event, `UNIQUE (stream_id, version)`), seeded with the same accounts at two events each: per transaction, `BEGIN`, read the stream's current version (`ORDER BY version DESC LIMIT 1` on the unique index), insert the event at the next version, `COMMIT`. Each pgbench client credits its own share of the accounts (`client_id + 1 + clients × k`, k random), so that no two clients race for a version (pgbench cannot retry a unique violation).".to_owned(),
        "**B1s** is pgbench running the store's own statements for one credit: read the stream row (with its snapshot), then in one transaction bump the stream version and snapshot, take the append's own lock (`pg_advisory_xact_lock` keyed by the backend), insert the event (and its outbox row while the store has one: before the relay kept a checkpoint in `relay_checkpoint`), commit. The relay's wake-up is left out (the store sends one `NOTIFY` per burst of appends, on a connection that does not wait for the WAL flush). It runs against its own copy of the schema (the event store's migrations) with the same accounts, random over all of them. Its version check takes the row lock instead of comparing with the version read first, since pgbench cannot retry a conflict.".to_owned(),
        format!(
            "**Service** figures are closed-loop clients, one keep-alive HTTP/1.1 connection each, posting `{{\"amount\": \"1.00\"}}` credits to random accounts; only 200 answers count. The outbox relay runs (it is part of the command service) and publishes every event into the projection's durable queue; the query service is stopped during these runs so that its CPU use does not count against the command service on this 2-core machine, and the relay's backlog is drained before the next measurement. At each client count B1, B1s and the service take turns ({} turns, the first side rotating by one each turn); each run warms up for {}, then measures for {} (pgbench: the transactions started in that window, from its log); the figures are medians over the turns.",
            results.repeats,
            duration(results.warmup),
            duration(results.measure)
        ),
    ]
}
