//! Projection lag: an open loop of credits at fractions of the peak service throughput,
//! with the query service live; probes measure acknowledged → visible.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::context::{COMMAND, Ctx, QUERY};
use crate::load::{self, Accounts, Probe};
use crate::prom::{self, Quantiles, Scrape};
use crate::report::format::{MISSING, duration, list, ms, rate};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Sample, percentile, to_usize};
use crate::{mariadb, pg, procs};

/// The longest wait for the query service to work off its queues and catch up with the
/// feed before a run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// One open-loop lag measurement.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lag {
    /// Of the peak service throughput.
    pub(crate) fraction: f64,
    /// Whether the read model's MariaDB flushed its log at each commit (not as deployed).
    pub(crate) flush_each_commit: bool,
    /// Commands per second.
    pub(crate) offered: f64,
    /// Commands answered per second, first arrival to last answer.
    pub(crate) achieved: f64,
    pub(crate) ack: Sample,
    /// Acknowledged → visible, µs, sorted.
    pub(crate) lags_us: Vec<u64>,
    pub(crate) timed_out: usize,
    /// Each stage of [`STAGES`] over the run (from the services' histograms); `None`
    /// where the service does not export it.
    pub(crate) stages: Vec<(&'static str, Option<Quantiles>)>,
    /// The command service's own latency of the credit route over the run
    /// (`http_request_duration_seconds`), when exported as a histogram.
    pub(crate) server: Option<Quantiles>,
    /// Cores each part of the pipeline used while the load ran, in [`CPU_PARTS`] order
    /// (empty when not measured).
    pub(crate) cores: Vec<f64>,
}

/// The processes whose CPU the lag runs account for: the two services, the servers
/// (each by its processes' command name) and the load generator.
pub(crate) const CPU_PARTS: [&str; 6] = [
    "command service",
    "query service",
    "Postgres",
    "MariaDB",
    "RabbitMQ",
    "load (bench)",
];

/// CPU time used so far by each of [`CPU_PARTS`].
fn cpu_times(ctx: &Ctx) -> Vec<Duration> {
    let service = |role: &str| {
        ctx.service(role)
            .ok()
            .and_then(procs::Service::cpu_time)
            .unwrap_or_default()
    };
    vec![
        service(COMMAND),
        service(QUERY),
        procs::cpu_time_of_named("postgres"),
        procs::cpu_time_of_named("mariadbd"),
        procs::cpu_time_of_named("beam.smp"),
        procs::cpu_time(std::process::id()).unwrap_or_default(),
    ]
}

/// The stages of an event's way, in order, and the service recording each
/// (`event_pipeline_seconds{stage}`: seconds from the event's `occurred_at`).
pub(crate) const STAGES: [(&str, &str); 7] = [
    ("committed", COMMAND),
    ("relay_read", COMMAND),
    ("published", COMMAND),
    ("confirmed", COMMAND),
    ("delivered", QUERY),
    ("applied", QUERY),
    ("projected", QUERY),
];

const PIPELINE: &str = "event_pipeline_seconds";

/// Both services' metrics at one moment.
#[derive(Debug, Default)]
pub(crate) struct Scrapes {
    command: Option<Scrape>,
    query: Option<Scrape>,
}

impl Scrapes {
    pub(crate) async fn take(ctx: &Ctx) -> Self {
        let of = |role| ctx.service(role).ok().map(|s| s.base_url());
        Self {
            command: match of(COMMAND) {
                Some(base) => prom::scrape(&ctx.http, &base).await,
                None => None,
            },
            query: match of(QUERY) {
                Some(base) => prom::scrape(&ctx.http, &base).await,
                None => None,
            },
        }
    }

    fn of(&self, role: &str) -> Option<&Scrape> {
        if role == COMMAND {
            self.command.as_ref()
        } else {
            self.query.as_ref()
        }
    }

    /// Every stage's quantiles between `before` and `self`.
    pub(crate) fn stages(&self, before: &Self) -> Vec<(&'static str, Option<Quantiles>)> {
        STAGES
            .iter()
            .map(|&(stage, role)| {
                let quantiles = match (before.of(role), self.of(role)) {
                    (Some(before), Some(after)) if after.has(PIPELINE) => {
                        after.since(before, PIPELINE, &[("stage", stage)])
                    }
                    _ => None,
                };
                (stage, quantiles)
            })
            .collect()
    }

    /// The credit route's server-side latency between `before` and `self`.
    fn server(&self, before: &Self) -> Option<Quantiles> {
        prom::credit_latency(before.command.as_ref()?, self.command.as_ref()?)
    }
}

impl Lag {
    /// The load, as the report names it.
    fn load(&self) -> String {
        let flush = if self.flush_each_commit {
            ", MariaDB flushing at each commit"
        } else {
            ""
        };
        format!("{:.0}% of peak{flush}", self.fraction * 100.0)
    }

    /// A lag quantile in milliseconds.
    fn lag_ms(&self, q: f64) -> f64 {
        percentile(&self.lags_us, q) / 1000.0
    }
}

/// What the phase measured: one run per fraction of the peak.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub(crate) runs: Vec<Lag>,
    /// Length of each open-loop run.
    pub(crate) run: Duration,
}

/// Open-loop credits at fractions of the peak with the query service live; probes
/// measure acknowledged → visible. The loads of the targets (10% and 50%) run once more
/// with the read model's MariaDB flushing its log at each commit.
pub(crate) async fn projection_lag(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let peak = results
        .b1
        .peak()
        .context("no service throughput measured, so no peak to take fractions of")?;
    results.lag.run = ctx.plan.lag_run;
    ctx.spawn_query()?;
    ctx.wait_query().await?;
    let accounts = Accounts::seeded(1, ctx.plan.accounts())?;
    let fractions = ctx.plan.lag_fractions.clone();
    for &fraction in &fractions {
        let lag = measure(ctx, &accounts, peak, fraction, false).await?;
        results.lag.runs.push(lag);
    }
    let mysql = ctx.opts.mysql.clone();
    mariadb::set_log_flush(&mysql, 1).await?;
    let mut compared = Ok(());
    for &fraction in fractions.iter().filter(|&&f| f <= 0.5) {
        match measure(ctx, &accounts, peak, fraction, true).await {
            Ok(lag) => results.lag.runs.push(lag),
            Err(error) => {
                compared = Err(error);
                break;
            }
        }
    }
    mariadb::set_log_flush(&mysql, mariadb::DEPLOYED_LOG_FLUSH).await?;
    ctx.stop(QUERY).await;
    compared
}

/// One open-loop run at `fraction` of `peak`, its probes and its stages.
async fn measure(
    ctx: &mut Ctx,
    accounts: &Accounts,
    peak: f64,
    fraction: f64,
    flush_each_commit: bool,
) -> anyhow::Result<Lag> {
    let rate = (peak * fraction).max(1.0);
    let probe = Probe {
        query_base: ctx.service(QUERY)?.base_url(),
        client: ctx.http.clone(),
        every: to_usize(rate / 40.0).max(1),
        timeout: Duration::from_secs(15),
    };
    let target = ctx.target(COMMAND)?;
    let waited = drained(ctx).await?;
    if waited > Duration::from_secs(2) {
        progress!(
            "waited {:.1} s for the query service to work off its queues and catch up with the feed",
            waited.as_secs_f64()
        );
    }
    let before = Scrapes::take(ctx).await;
    let (cpu_before, started) = (cpu_times(ctx), Instant::now());
    let outcome =
        load::open_loop(&target, accounts, rate, ctx.plan.lag_run, 64, Some(probe)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let cores = cpu_times(ctx)
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after.saturating_sub(*before).as_secs_f64() / elapsed)
        .collect();
    let pool = Ctx::pool(ctx.main_pool.as_ref())?;
    pg::wait_outbox_empty(pool, Instant::now(), Duration::from_secs(180)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = Scrapes::take(ctx).await;
    let lag = Lag {
        fraction,
        flush_each_commit,
        offered: rate,
        achieved: outcome.achieved_rate,
        ack: outcome.ack,
        lags_us: outcome.lags_us,
        timed_out: outcome.probes_timed_out,
        stages: after.stages(&before),
        server: after.server(&before),
        cores,
    };
    progress!(
        "lag at {} ({rate:.0} cmd/s): p50 {:.1} ms p99 {:.1} ms over {} probes, {} timed out",
        lag.load(),
        lag.lag_ms(0.5),
        lag.lag_ms(0.99),
        lag.lags_us.len(),
        lag.timed_out
    );
    Ok(lag)
}

/// Waits until the query service has worked off its queues (what an earlier run or
/// phase left there) and its feed follower has caught up, then one more second for the
/// messages it holds unacknowledged: each run measures the lag of its own load.
async fn drained(ctx: &Ctx) -> anyhow::Result<Duration> {
    let started = Instant::now();
    ctx.broker()?
        .wait_drained(&Ctx::partitions(&ctx.queue()), DRAIN_TIMEOUT)
        .await?;
    followed(ctx, started).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(started.elapsed())
}

/// Waits until the query service's feed follower (its safety net beside the broker)
/// has read the feed up to its head. A follower still reading back through what the
/// earlier phases wrote checks every one of those events again, beside the live
/// projection: not the steady state the targets are about. A query service without a
/// follower exports no checkpoint and is not waited for.
async fn followed(ctx: &Ctx, started: Instant) -> anyhow::Result<()> {
    const CHECKPOINT: &str = "projection_checkpoint_position";
    let head = pg::event_count(Ctx::pool(ctx.main_pool.as_ref())?).await? as f64;
    let query = ctx.service(QUERY)?.base_url();
    loop {
        let text = prom::scrape_text(&ctx.http, &query)
            .await
            .unwrap_or_default();
        if !text.contains(CHECKPOINT) || prom::counter(&text, CHECKPOINT, &[]) >= head {
            return Ok(());
        }
        if started.elapsed() > DRAIN_TIMEOUT {
            anyhow::bail!(
                "the query service's feed follower had not read up to position {head} after {} s",
                DRAIN_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let at = |fraction: f64| {
        results
            .lag
            .runs
            .iter()
            .find(|l| (l.fraction - fraction).abs() < 1e-6 && !l.flush_each_commit)
            .filter(|lag| !lag.lags_us.is_empty())
    };
    let measured = |lag: &Lag, q: f64, limit: f64| {
        let figure = lag.lag_ms(q);
        let timed_out = if lag.timed_out > 0 {
            format!(", {} probes timed out", lag.timed_out)
        } else {
            String::new()
        };
        (
            format!(
                "{} ms at {} cmd/s{timed_out}",
                ms(figure),
                rate(lag.offered)
            ),
            figure < limit && lag.timed_out == 0,
        )
    };
    vec![
        Target::new(
            "projection lag p50 < 10 ms at 10% of peak",
            at(0.1).map(|lag| measured(lag, 0.5, 10.0)),
        ),
        Target::new(
            "projection lag p99 < 50 ms at 50% of peak",
            at(0.5).map(|lag| measured(lag, 0.99, 50.0)),
        ),
    ]
}

fn section(results: &Results, out: &mut Markdown) {
    out.heading("Projection lag (command acknowledged → visible in the query service)");
    let rows = results.lag.runs.iter().map(|lag| {
        let (server_p50, server_p99) = lag
            .server
            .map_or((MISSING.to_owned(), MISSING.to_owned()), |q| {
                (ms(q.p50_ms), ms(q.p99_ms))
            });
        [
            lag.load(),
            rate(lag.offered),
            rate(lag.achieved),
            ms(lag.ack.p50_ms),
            ms(lag.ack.p99_ms),
            server_p50,
            server_p99,
            ms(lag.lag_ms(0.5)),
            ms(lag.lag_ms(0.99)),
            lag.lags_us.len().to_string(),
            lag.timed_out.to_string(),
        ]
    });
    out.table(
        &[
            "load",
            "offered cmd/s",
            "achieved cmd/s",
            "ack p50 ms",
            "ack p99 ms",
            "server p50 ms",
            "server p99 ms",
            "lag p50 ms",
            "lag p99 ms",
            "probes",
            "timed out",
        ],
        "lrrrrrrrrrr",
        rows,
    );
    out.paragraph("\"ack\" is the client's latency (from when the request was due); \"server\" is the command service's own `http_request_duration_seconds` of the credit route over the run (– when it is not exported as a histogram).");
    let measured: Vec<&Lag> = results
        .lag
        .runs
        .iter()
        .filter(|lag| lag.cores.len() == CPU_PARTS.len())
        .collect();
    if !measured.is_empty() {
        out.paragraph("CPU used while the load ran, in cores (user + system time over the run's length), and all of it per command:\n");
        let mut headers = vec!["load"];
        headers.extend(CPU_PARTS);
        headers.extend(["total", "µs per command"]);
        let align = format!("l{}", "r".repeat(CPU_PARTS.len() + 2));
        let rows = measured.iter().map(|lag| {
            let total: f64 = lag.cores.iter().sum();
            let mut row = vec![lag.load()];
            row.extend(lag.cores.iter().map(|cores| format!("{cores:.2}")));
            row.push(format!("{total:.2}"));
            row.push(format!("{:.0}", total * 1e6 / lag.achieved.max(1.0)));
            row
        });
        out.table(&headers, &align, rows);
    }
    for lag in &results.lag.runs {
        out.paragraph(&format!(
            "Where the time goes at {} ({} cmd/s), each stage from the event's `occurred_at`:\n",
            lag.load(),
            rate(lag.offered)
        ));
        let stages = stage_rows(&lag.stages);
        let visible = [
            "visible (from the acknowledgement)".to_owned(),
            "bench probe".to_owned(),
            ms(lag.lag_ms(0.5)),
            ms(lag.lag_ms(0.99)),
            lag.lags_us.len().to_string(),
        ];
        out.table(
            &["stage", "recorded by", "p50 ms", "p99 ms", "events"],
            "llrrr",
            stages.chain(std::iter::once(visible)),
        );
    }
}

/// The rows of a stage table: stage, service, p50, p99, events.
pub(crate) fn stage_rows<'a>(
    stages: &'a [(&'static str, Option<Quantiles>)],
) -> impl Iterator<Item = [String; 5]> + 'a {
    stages.iter().map(|(stage, quantiles)| {
        let service = STAGES
            .iter()
            .find(|(name, _)| name == stage)
            .map_or("", |(_, role)| role);
        match quantiles {
            Some(q) if q.count > 0 => [
                (*stage).to_owned(),
                service.to_owned(),
                ms(q.p50_ms),
                ms(q.p99_ms),
                q.count.to_string(),
            ],
            Some(_) => [
                (*stage).to_owned(),
                service.to_owned(),
                MISSING.to_owned(),
                MISSING.to_owned(),
                "0".to_owned(),
            ],
            None => [
                (*stage).to_owned(),
                service.to_owned(),
                "not exported".to_owned(),
                MISSING.to_owned(),
                MISSING.to_owned(),
            ],
        }
    })
}

fn method(results: &Results) -> Vec<String> {
    let deployed: Vec<&Lag> = results
        .lag
        .runs
        .iter()
        .filter(|lag| !lag.flush_each_commit)
        .collect();
    let fractions = list(&deployed, |lag| format!("{:.0}%", lag.fraction * 100.0));
    vec![
        format!(
            "**Lag** runs an open loop (arrivals at a fixed rate, 64 connections, latency counted from when a request was due) for {} at each of {fractions} of the highest service throughput B1's turns found, with the query service live; \"achieved\" is the commands answered per second from the first arrival to the last answer; about 40 acknowledged commands a second are probed with `GET /accounts/{{id}}?min_version=<acknowledged version>` on the query service, and the lag is the time from the acknowledgement to that answer. One run per load level (no repeats: the probes are the sample); each starts once the query service has worked off its queues (what the previous run or phase left) and its feed follower has read the feed up to its head (a follower still reading the history checks every event again, beside the live projection), and a second has passed. The read model's MariaDB runs as the deployments configure it (`innodb_flush_log_at_trx_commit` {}: the log written at each commit, flushed to disk once a second; docs/operations.md, \"Read model durability\"); the loads up to 50% then run once more with it flushing at each commit (1), the lines marked so, which the targets do not count.",
            duration(results.lag.run),
            mariadb::DEPLOYED_LOG_FLUSH
        ),
        "**Stages**: both services' `/metrics` are scraped before each lag run and after it (once the relay's backlog is drained and a second has passed); each stage's p50/p99 is computed from the difference of the `event_pipeline_seconds{stage}` histogram buckets (seconds from the event's `occurred_at`, set when the command was decided, to the stage: committed, relay_read, published, confirmed in the command service; delivered, applied, projected in the query service), interpolating linearly within a bucket, so a figure is only as fine as the buckets around it (0.5, 1, 2, 3, 4, 5, 6, 7.5, 9, 10, 12.5, 15, 20, 30, 50 ms ...); a quantile past the last finite bucket shows that bound. Both services run on this machine and share its clock. \"visible\" is the bench's own probe, measured from the acknowledgement (not from `occurred_at`), so it is not directly comparable to the stages above it. A stage reads \"not exported\" when the service's `/metrics` has no such histogram.".to_owned(),
    ]
}
