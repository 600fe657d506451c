//! Transfers: how long one takes, requested to `COMPLETED` and visible in the query
//! service, on an idle system; and how many 16 clients get through, beside the credits
//! the same 16 clients get through.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::context::{COMMAND, Ctx, QUERY};
use crate::load::{self, Accounts, Conn};
use crate::phases::Side;
use crate::phases::lag::{Scrapes, stage_rows};
use crate::prom::Quantiles;
use crate::report::format::{MISSING, duration, ms, rate};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Sample, micros, percentile};

/// Clients of the throughput runs.
const CLIENTS: usize = 16;
/// The phase's own accounts: seeded, numbered from here, apart from the other phases'.
const FIRST_ACCOUNT: u64 = 9_000_000;
const ACCOUNTS: u64 = 200;
/// Transfers run one at a time, untimed, before the timed ones: the first after the
/// services start pay for their connections and caches.
pub(crate) const WARM_UP_TRANSFERS: usize = 10;
/// Longest wait for every requested transfer to end after a throughput run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// One throughput turn: credits and transfers by the same number of clients.
#[derive(Debug, Clone, Default)]
pub(crate) struct Turn {
    pub(crate) credits: Sample,
    /// Transfers answered `202` in the window.
    pub(crate) requested: Sample,
    /// Transfers ended per second, from the first request of the run to the last end.
    pub(crate) ended_per_s: f64,
    /// How long after the last request the last transfer ended.
    pub(crate) drained_after: Duration,
}

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// Requested → `COMPLETED` visible in the query service, one transfer at a time, µs
    /// sorted.
    pub(crate) completion_us: Vec<u64>,
    /// Idle transfers that did not complete.
    pub(crate) not_completed: usize,
    /// Each pipeline stage over the timed idle transfers' events (legs included).
    pub(crate) stages: Vec<(&'static str, Option<Quantiles>)>,
    pub(crate) turns: Vec<Turn>,
}

impl Figures {
    fn completion_ms(&self, q: f64) -> f64 {
        percentile(&self.completion_us, q) / 1000.0
    }
}

/// Idle completion latency, then throughput turns with the query service live.
pub(crate) async fn transfers(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    ctx.spawn_query()?;
    ctx.wait_query().await?;
    let pool = Ctx::pool(ctx.main_pool.as_ref())?;
    crate::pg::seed_accounts(pool, FIRST_ACCOUNT, ACCOUNTS, 2, true).await?;
    crate::pg::wait_outbox_empty(pool, Instant::now(), Duration::from_secs(60)).await?;
    let accounts = Accounts::seeded(FIRST_ACCOUNT, ACCOUNTS)?;
    let command = ctx.target(COMMAND)?;
    let query = ctx.target(QUERY)?;

    let samples = if ctx.opts.quick { 50 } else { 300 };
    let mut requests = Conn::open(&command).await?;
    let mut reads = Conn::open(&query).await?;
    let mut rng = StdRng::from_os_rng();
    let mut before = None;
    for turn in 0..WARM_UP_TRANSFERS + samples {
        if turn == WARM_UP_TRANSFERS {
            before = Some(Scrapes::take(ctx).await);
        }
        let body = transfer_body(&accounts, &mut rng);
        let began = Instant::now();
        let id = request(&mut requests, body).await?;
        let path = format!("/transfers/{id}?wait_ms=5000");
        let mut completed = false;
        while began.elapsed() < Duration::from_secs(10) {
            let (status, reply) = reads.request(Method::GET, &path, None).await?;
            let reply: Value = serde_json::from_slice(&reply).unwrap_or_default();
            if status == 200 && reply["status"] != "PENDING" {
                completed = reply["status"] == "COMPLETED";
                break;
            }
        }
        if turn < WARM_UP_TRANSFERS {
            continue;
        }
        if completed {
            results
                .transfers
                .completion_us
                .push(micros(began.elapsed()));
        } else {
            results.transfers.not_completed += 1;
        }
    }
    results.transfers.completion_us.sort_unstable();
    if let Some(before) = before {
        tokio::time::sleep(Duration::from_secs(1)).await;
        results.transfers.stages = Scrapes::take(ctx).await.stages(&before);
    }
    progress!(
        "transfer requested → COMPLETED visible: p50 {:.1} ms p99 {:.1} ms over {samples}",
        results.transfers.completion_ms(0.5),
        results.transfers.completion_ms(0.99)
    );

    let timing = ctx.plan.timing;
    for turn in 0..ctx.plan.repeats {
        let mut figures = Turn::default();
        for side in Side::order(turn) {
            match side {
                Side::Baseline => {
                    figures.credits = load::closed_loop(
                        &command,
                        &accounts,
                        CLIENTS,
                        timing.warmup,
                        timing.measure,
                    )
                    .await?;
                }
                Side::Platform => {
                    let pool = Ctx::pool(ctx.main_pool.as_ref())?;
                    let (requested, ended_per_s, drained_after) =
                        transfer_load(&command, &accounts, pool, timing.warmup, timing.measure)
                            .await?;
                    figures.requested = requested;
                    figures.ended_per_s = ended_per_s;
                    figures.drained_after = drained_after;
                }
            }
        }
        progress!(
            "16 clients: credits {:.0}/s, transfers requested {:.0}/s, ended {:.0}/s",
            figures.credits.throughput,
            figures.requested.throughput,
            figures.ended_per_s
        );
        results.transfers.turns.push(figures);
    }
    ctx.stop(QUERY).await;
    Ok(())
}

fn transfer_body(accounts: &Accounts, rng: &mut StdRng) -> Bytes {
    let ids = accounts.ids();
    let from = rng.random_range(0..ids.len());
    let mut to = rng.random_range(0..ids.len().max(2) - 1);
    if to >= from {
        to += 1;
    }
    let to = to.min(ids.len() - 1);
    Bytes::from(format!(
        r#"{{"from": "{}", "to": "{}", "amount": "0.01"}}"#,
        ids[from], ids[to]
    ))
}

async fn request(conn: &mut Conn, body: Bytes) -> anyhow::Result<String> {
    let (status, reply) = conn.request(Method::POST, "/transfers", Some(body)).await?;
    if status != 202 {
        bail!(
            "POST /transfers: HTTP {status}: {}",
            String::from_utf8_lossy(&reply)
        );
    }
    let reply: Value = serde_json::from_slice(&reply).context("POST /transfers: not JSON")?;
    reply["id"]
        .as_str()
        .map(str::to_owned)
        .context("POST /transfers: no id")
}

/// Transfers by [`CLIENTS`] closed-loop clients; then waits until every transfer of the
/// run ended (counted in the event store). Returns the requests answered in the window,
/// the transfers ended per second over the whole run, and the drain after its end.
async fn transfer_load(
    target: &load::Target,
    accounts: &Accounts,
    pool: &sqlx::PgPool,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<(Sample, f64, Duration)> {
    let ended_before = ended(pool).await?;
    let start = Instant::now();
    let window_start = start + warmup;
    let end = window_start + measure;
    let mut workers = JoinSet::new();
    for _ in 0..CLIENTS {
        let mut conn = Conn::open(target).await?;
        let accounts = accounts.clone();
        workers.spawn(async move {
            let mut rng = StdRng::from_os_rng();
            let (mut latencies, mut errors, mut sent) = (Vec::new(), 0usize, 0u64);
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let outcome = request(&mut conn, transfer_body(&accounts, &mut rng)).await;
                sent += 1;
                match outcome {
                    Ok(_) if began >= window_start => latencies.push(micros(began.elapsed())),
                    Ok(_) => {}
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors, sent)
        });
    }
    let (mut latencies, mut errors, mut sent) = (Vec::new(), 0, 0);
    while let Some(joined) = workers.join_next().await {
        let (mine, my_errors, my_sent) = joined.context("transfer worker panicked")?;
        latencies.extend(mine);
        errors += my_errors;
        sent += my_sent;
    }
    let requests_ended = Instant::now();
    let wanted = ended_before + i64::try_from(sent).unwrap_or(i64::MAX);
    loop {
        if ended(pool).await? >= wanted - i64::try_from(errors).unwrap_or(0) {
            break;
        }
        if requests_ended.elapsed() > DRAIN_TIMEOUT {
            bail!("transfers did not all end within {DRAIN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ended_per_s = (sent as f64 - errors as f64) / start.elapsed().as_secs_f64();
    Ok((
        Sample::from_latencies(latencies, measure, errors),
        ended_per_s,
        requests_ended.elapsed(),
    ))
}

/// Transfers ended in the store so far.
async fn ended(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type IN ('TransferCompleted', 'TransferFailed', 'TransferRefunded')",
    )
    .fetch_one(pool)
    .await
    .context("counting ended transfers")
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let figures = &results.transfers;
    let measured = (!figures.completion_us.is_empty()).then(|| {
        let p99 = figures.completion_ms(0.99);
        let incomplete = if figures.not_completed > 0 {
            format!(", {} did not complete", figures.not_completed)
        } else {
            String::new()
        };
        (
            format!("{} ms{incomplete}", ms(p99)),
            p99 < 50.0 && figures.not_completed == 0,
        )
    });
    vec![Target::new(
        "transfer requested → COMPLETED visible in the query service, p99 < 50 ms (idle)",
        measured,
    )]
}

fn section(results: &Results, out: &mut Markdown) {
    let figures = &results.transfers;
    out.heading("Transfers");
    let (p50, p99) = if figures.completion_us.is_empty() {
        (MISSING.to_owned(), MISSING.to_owned())
    } else {
        (
            ms(figures.completion_ms(0.5)),
            ms(figures.completion_ms(0.99)),
        )
    };
    out.line(&format!(
        "Requested → `COMPLETED` and visible in the query service, one transfer at a time on an idle system: p50 {p50} ms, p99 {p99} ms over {} transfers ({} did not complete).\n",
        figures.completion_us.len() + figures.not_completed,
        figures.not_completed
    ));
    let rows = figures.turns.iter().enumerate().map(|(turn, t)| {
        [
            (turn + 1).to_string(),
            rate(t.credits.throughput),
            ms(t.credits.p50_ms),
            rate(t.requested.throughput),
            ms(t.requested.p50_ms),
            ms(t.requested.p99_ms),
            rate(t.ended_per_s),
            duration(t.drained_after),
        ]
    });
    out.table(
        &[
            "turn",
            "credits/s (16 clients)",
            "credit p50 ms",
            "transfers requested/s",
            "request p50 ms",
            "request p99 ms",
            "transfers ended/s",
            "drained after",
        ],
        "rrrrrrrr",
        rows,
    );
    if !figures.stages.is_empty() {
        out.paragraph("Where the time goes for the events of the transfers timed one at a time (each transfer's three events and its two legs), each stage from the event's `occurred_at` (as in the projection lag's tables):\n");
        out.table(
            &["stage", "recorded by", "p50 ms", "p99 ms", "events"],
            "llrrr",
            stage_rows(&figures.stages),
        );
    }
}

fn method(results: &Results) -> Vec<String> {
    let _ = results;
    vec![format!(
        "**Transfers**: with the query service live, transfers of 0.01 MAD between random accounts of {ACCOUNTS} seeded for the phase (published to the query service before it starts). Completion: one at a time, `POST /transfers` then `GET /transfers/{{id}}?wait_ms=5000` on the query service until it is no longer `PENDING`, timed from the request, after {WARM_UP_TRANSFERS} untimed ones. Throughput: {CLIENTS} closed-loop clients send transfers for the warm-up and the measure window; \"requested\" counts the `202` answers started in the window; \"ended\" is every transfer of the run (warm-up included) divided by the time from the first request to the moment the event store holds the last one's end (`TransferCompleted`, `TransferFailed` or `TransferRefunded`); the credits beside them are {CLIENTS} closed-loop clients crediting the same accounts, taking turns with the transfers (ABBA)."
    )]
}
