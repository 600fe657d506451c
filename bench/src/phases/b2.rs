//! B2 against the outbox relay: raw RabbitMQ publishing with windowed confirms, and how
//! fast the command service empties a freshly seeded outbox into its exchange.

use std::time::{Duration, Instant};

use crate::context::Ctx;
use crate::pg;
use crate::phases::Side;
use crate::report::format::{compared, duration, list, rate};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Drain, median};

/// Messages per confirm window in B2: the command service's default relay batch
/// (`relay_batch_size`), the window the relay publishes before awaiting its confirms.
pub(crate) const RELAY_WINDOW: usize = 500;

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// B2 runs, messages per second.
    pub(crate) raw: Vec<f64>,
    /// Relay runs.
    pub(crate) relay: Vec<Drain>,
    /// Length of one B2 run.
    pub(crate) side_run: Duration,
    /// Accounts seeded for each relay run, and events per account.
    pub(crate) batch_accounts: u64,
    pub(crate) events_per_account: u64,
}

/// B2 and the relay, ABBA: each relay run drains a freshly seeded outbox.
pub(crate) async fn relay_vs_b2(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    results.b2.side_run = ctx.plan.side_run;
    results.b2.batch_accounts = ctx.plan.relay_batch_accounts;
    results.b2.events_per_account = ctx.plan.relay_events_per_account;
    let (raw_exchange, raw_queue) = (ctx.raw_exchange(), ctx.raw_queue());
    ctx.broker()?
        .declare_sink(&raw_exchange, &raw_queue)
        .await?;
    for batch in 0..ctx.plan.relay_batches {
        for side in Side::order(usize::try_from(batch)?) {
            match side {
                Side::Baseline => b2(ctx, results).await?,
                Side::Platform => relay(ctx, results, batch).await?,
            }
        }
    }
    Ok(())
}

async fn b2(ctx: &Ctx, results: &mut Results) -> anyhow::Result<()> {
    let broker = ctx.broker()?;
    let rate = broker
        .raw_publish(&ctx.raw_exchange(), RELAY_WINDOW, ctx.plan.side_run)
        .await?;
    broker.purge(&ctx.raw_queue()).await?;
    progress!("B2 raw publish: {rate:.0} msg/s");
    results.b2.raw.push(rate);
    Ok(())
}

async fn relay(ctx: &Ctx, results: &mut Results, batch: u64) -> anyhow::Result<()> {
    let pool = Ctx::pool(ctx.main_pool.as_ref())?;
    pg::wait_outbox_empty(pool, Instant::now(), Duration::from_secs(120)).await?;
    let first = 1 + batch * ctx.plan.relay_batch_accounts;
    let seeded = pg::seed_accounts(
        pool,
        first,
        ctx.plan.relay_batch_accounts,
        ctx.plan.relay_events_per_account,
        true,
    )
    .await?;
    let committed = Instant::now();
    let took = pg::wait_outbox_empty(pool, committed, Duration::from_secs(300)).await?;
    let drain = Drain {
        events: seeded.events,
        took,
    };
    progress!(
        "relay: {} events in {:.2} s = {:.0}/s (seeding took {:.2} s)",
        drain.events,
        took.as_secs_f64(),
        drain.rate(),
        seeded.took.as_secs_f64()
    );
    results.b2.relay.push(drain);
    Ok(())
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let b2 = median(results.b2.raw.iter().copied());
    let relay = median(results.b2.relay.iter().map(Drain::rate));
    let measured = (b2.is_finite() && relay.is_finite())
        .then(|| (compared(relay, b2, rate, "/s"), relay / b2 >= 0.9));
    vec![Target::new("relay ≥ 0.9× B2", measured)]
}

fn section(results: &Results, out: &mut Markdown) {
    let figures = &results.b2;
    out.heading("B2 (raw RabbitMQ publishing) vs the outbox relay");
    let relay: Vec<f64> = figures.relay.iter().map(Drain::rate).collect();
    let rows = [
        [
            format!(
                "B2: the relay's messages, persistent, to a durable queue bound like the projection's, confirms awaited per window of {RELAY_WINDOW}"
            ),
            list(&figures.raw, |r| rate(*r)),
            rate(median(figures.raw.iter().copied())),
        ],
        [
            format!(
                "relay: outbox → exchange → projection queue ({} events per run)",
                list(&figures.relay, |d| d.events.to_string())
            ),
            list(&relay, |r| rate(*r)),
            rate(median(relay.iter().copied())),
        ],
    ];
    out.table(
        &["measurement", "events/s (each run)", "median"],
        "llr",
        rows,
    );
}

fn method(results: &Results) -> Vec<String> {
    vec![format!(
        "**B2** publishes what the relay publishes, like for like: the JSON of an `AccountCredited` envelope of the same size, the same properties (persistent, `application/json`, message id, type, `user_id`, timestamp) and headers (`account_id`, `correlation_id`, `traceparent`), routing key `account.credited`, to a durable topic exchange with a durable queue bound as the projection's queue is (`account.*`, with a dead-letter exchange argument); it awaits the confirms of each window of {RELAY_WINDOW} (the relay's batch) before the next, for {} per run. The **relay** figure is how fast the command service empties an outbox of freshly seeded events (each run {} accounts × {} events, committed in one transaction that notifies the relay) into its exchange, to which the projection's durable queue is bound (the query service is stopped meanwhile, so the queue only fills); measured from that commit to the outbox found empty (polled every 10 ms). B2 and relay runs alternate ({} each).",
        duration(results.b2.side_run),
        results.b2.batch_accounts,
        results.b2.events_per_account,
        results.b2.raw.len().max(results.b2.relay.len())
    )]
}
