//! Cost growth: a small store and a big one, each behind its own command service; the
//! append rate at the same concurrency, and single-account latency on long streams.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::context::{BIG, COMMAND, Ctx, SMALL};
use crate::load::{self, Accounts};
use crate::pg;
use crate::report::format::{MISSING, compared, ms, rate, rate_p50_p99, ratio};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Sample, median_sample};

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// (events in the account's stream, samples).
    pub(crate) long_streams: Vec<(u64, Vec<Sample>)>,
    pub(crate) small_store: Vec<Sample>,
    pub(crate) big_store: Vec<Sample>,
    pub(crate) small_store_events: u64,
    pub(crate) big_store_events: u64,
    /// Clients of the append-rate runs.
    pub(crate) append_clients: usize,
}

impl Figures {
    /// The median p50 on the stream of `events` events.
    fn p50_at(&self, events: u64) -> Option<f64> {
        self.long_streams
            .iter()
            .find(|(n, _)| *n == events)
            .and_then(|(_, samples)| median_sample(samples))
            .map(|s| s.p50_ms)
    }
}

/// The number of the first long account of the big store (one per stream length).
const LONG_FIRST: u64 = 10_000_000;

/// A small store and a big one, each behind its own command service: append rate at
/// the same concurrency, and single-account latency on long streams.
pub(crate) async fn cost_growth(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    // The main stack is done; its memory peak is final.
    ctx.stop(COMMAND).await;
    let accounts = ctx.plan.accounts();
    let exchange = ctx.growth_exchange();
    let (small, big) = (ctx.name("small"), ctx.name("big"));
    ctx.pg_databases.push(small.clone());
    ctx.pg_databases.push(big.clone());
    ctx.start_command(SMALL, &small, &exchange).await?;
    ctx.start_command(BIG, &big, &exchange).await?;
    let small_pool = pg::connect(&pg::database_url(&ctx.opts.postgres, &small), 2).await?;
    let big_pool = pg::connect(&pg::database_url(&ctx.opts.postgres, &big), 2).await?;
    ctx.small_pool = Some(small_pool.clone());
    ctx.big_pool = Some(big_pool.clone());

    progress!("seeding the small store: {accounts} accounts");
    pg::seed_accounts(&small_pool, 1, accounts, 2, false).await?;
    progress!(
        "seeding the big store: {accounts} accounts of {} events, and streams of {:?} events",
        ctx.plan.big_events_per_account,
        ctx.plan.long_streams
    );
    let seeded = pg::seed_accounts(
        &big_pool,
        1,
        accounts,
        ctx.plan.big_events_per_account,
        false,
    )
    .await?;
    progress!(
        "seeded {} events in {:.1} s",
        seeded.events,
        seeded.took.as_secs_f64()
    );
    for (offset, &length) in (0u64..).zip(&ctx.plan.long_streams) {
        pg::seed_accounts(&big_pool, LONG_FIRST + offset, 1, length, false).await?;
    }
    for pool in [&small_pool, &big_pool] {
        for statement in ["VACUUM ANALYZE events", "VACUUM ANALYZE streams"] {
            sqlx::raw_sql(statement).execute(pool).await?;
        }
    }
    results.growth.small_store_events = u64::try_from(pg::event_count(&small_pool).await?)?;
    results.growth.big_store_events = u64::try_from(pg::event_count(&big_pool).await?)?;
    append_rate(ctx, results, &small_pool, &big_pool).await?;
    long_stream_latency(ctx, results).await?;
    // The big store's command service stays up for the time-travel phase.
    pg::wait_outbox_empty(&big_pool, Instant::now(), Duration::from_secs(120)).await?;
    Ok(())
}

/// The append rate of both stores at the same concurrency, alternating which goes first.
async fn append_rate(
    ctx: &Ctx,
    results: &mut Results,
    small_pool: &PgPool,
    big_pool: &PgPool,
) -> anyhow::Result<()> {
    let all = Accounts::seeded(1, ctx.plan.accounts())?;
    let clients = ctx.plan.append_clients;
    let timing = ctx.plan.timing;
    for repeat in 0..ctx.plan.repeats {
        let order = if repeat % 2 == 0 {
            [SMALL, BIG]
        } else {
            [BIG, SMALL]
        };
        for role in order {
            let target = ctx.target(role)?;
            let sample =
                load::closed_loop(&target, &all, clients, timing.warmup, timing.measure).await?;
            progress!(
                "{role}: {:.0} cmd/s p50 {:.2} ms p99 {:.2} ms, {} errors",
                sample.throughput,
                sample.p50_ms,
                sample.p99_ms,
                sample.errors
            );
            if role == SMALL {
                results.growth.small_store.push(sample);
            } else {
                results.growth.big_store.push(sample);
            }
            let pool = if role == SMALL { small_pool } else { big_pool };
            pg::wait_outbox_empty(pool, Instant::now(), Duration::from_secs(120)).await?;
        }
    }
    Ok(())
}

/// One client crediting each long account of the big store in turn.
async fn long_stream_latency(ctx: &Ctx, results: &mut Results) -> anyhow::Result<()> {
    let lengths = ctx.plan.long_streams.clone();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); lengths.len()];
    let target = ctx.target(BIG)?;
    let growth = ctx.plan.growth_timing;
    for repeat in 0..ctx.plan.repeats {
        for step in 0..lengths.len() {
            let which = (step + repeat) % lengths.len();
            let account = Accounts::new(vec![pg::account_id(LONG_FIRST + which as u64)])?;
            let sample =
                load::closed_loop(&target, &account, 1, growth.warmup, growth.measure).await?;
            progress!(
                "credit on a stream of {} events: p50 {:.2} ms p99 {:.2} ms, {} errors",
                lengths[which],
                sample.p50_ms,
                sample.p99_ms,
                sample.errors
            );
            samples[which].push(sample);
        }
    }
    results.growth.long_streams = lengths.into_iter().zip(samples).collect();
    Ok(())
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let figures = &results.growth;
    let shortest = figures.long_streams.iter().map(|(n, _)| *n).min();
    let longest = figures.long_streams.iter().map(|(n, _)| *n).max();
    let compared_ends = match (shortest, longest) {
        (Some(short), Some(long)) if short < long => {
            match (figures.p50_at(short), figures.p50_at(long)) {
                (Some(a), Some(b)) => Some((
                    format!("credit latency at {long} events ≤ 1.1× at {short} events"),
                    (compared(b, a, ms, "ms p50"), b / a <= 1.1),
                )),
                _ => None,
            }
        }
        _ => None,
    };
    let target = match compared_ends {
        Some((label, measured)) => Target::new(label, Some(measured)),
        None => Target::new("credit latency at 100k events ≤ 1.1× at 10 events", None),
    };
    vec![target]
}

fn section(results: &Results, out: &mut Markdown) {
    let figures = &results.growth;
    out.heading("Cost growth");
    out.line("Credit latency, one client, always the same account:\n");
    latency_by_length(out, &figures.long_streams, "cmd/s");
    out.paragraph(&format!(
        "Append rate, {} clients, credits random over the same number of accounts:\n",
        figures.append_clients
    ));
    let small = median_sample(&figures.small_store);
    let stores = [
        (figures.small_store_events, &figures.small_store),
        (figures.big_store_events, &figures.big_store),
    ];
    let rates = stores.into_iter().filter_map(|(events, samples)| {
        let s = median_sample(samples)?;
        let versus_small = small
            .as_ref()
            .map_or(MISSING.to_owned(), |b| ratio(s.throughput / b.throughput));
        Some(
            std::iter::once(events.to_string())
                .chain(rate_p50_p99(&s))
                .chain([versus_small]),
        )
    });
    out.table(
        &[
            "events in the store",
            "cmd/s",
            "p50 ms",
            "p99 ms",
            "vs small store",
        ],
        "rrrrr",
        rates,
    );
}

fn method(results: &Results) -> Vec<String> {
    vec![format!(
        "**Cost growth**: two more command-service processes, one on a store with only its {} accounts, one on a store with {} events (the same accounts with longer streams, plus one account per stream length measured, all seeded with SQL, then `VACUUM ANALYZE`). The single-account latency runs one client against each long account in turn.",
        results.accounts, results.growth.big_store_events
    )]
}

/// A table of one client's latency on accounts of each stream length, against the
/// shortest; `per_second` names the throughput column.
pub(crate) fn latency_by_length(
    out: &mut Markdown,
    by_length: &[(u64, Vec<Sample>)],
    per_second: &str,
) {
    let base = by_length
        .first()
        .and_then(|(_, s)| median_sample(s))
        .map(|s| s.p50_ms);
    let rows = by_length.iter().filter_map(|(events, samples)| {
        let s = median_sample(samples)?;
        Some([
            events.to_string(),
            ms(s.p50_ms),
            ms(s.p99_ms),
            rate(s.throughput),
            base.map_or(MISSING.to_owned(), |b| ratio(s.p50_ms / b)),
        ])
    });
    out.table(
        &[
            "events in the account's stream",
            "p50 ms",
            "p99 ms",
            per_second,
            "p50 vs shortest",
        ],
        "rrrrr",
        rows,
    );
}
