//! B3 against the projection: the event store's feed replayed as raw MariaDB inserts of
//! the read model's rows, around the live query service working off the relay's backlog
//! (the same events), and taking turns with `query-service rebuild` over the whole event
//! store (then a check that the rebuilt model adds up).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::context::{Ctx, QUERY, REBUILD};
use crate::phases::Side;
use crate::report::format::{compared, duration, list, rate, ratio};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Drain, median};
use crate::{mariadb, pg, procs};

/// Events per B3 transaction: the page `query-service rebuild` reads and projects in
/// one transaction (its `PAGE_SIZE`, the command service's largest feed page).
pub(crate) const REBUILD_PAGE: usize = 1000;

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// B3 runs around the live projection, events per second.
    pub(crate) live_raw: Vec<f64>,
    /// Events in the feed B3 replayed around the live projection (the relay runs' backlog).
    pub(crate) live_feed: u64,
    /// The live projection working off its backlog.
    pub(crate) live: Option<Drain>,
    /// B3 runs around the rebuilds, events per second.
    pub(crate) raw: Vec<f64>,
    /// Events in the feed B3 and the rebuilds replayed.
    pub(crate) feed: u64,
    /// `query-service rebuild` runs, process start-up included.
    pub(crate) rebuild: Vec<Drain>,
    /// The event store's totals against the rebuilt read model's.
    pub(crate) rebuild_check: Option<String>,
}

/// B3 over the relay runs' events, then the query service working off the same events
/// from its queue, then B3 again.
pub(crate) async fn live_vs_b3(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let pool = Ctx::pool(ctx.main_pool.as_ref())?.clone();
    let feed = pg::load_feed(&pool).await?;
    results.b3.live_feed = u64::try_from(feed.len())?;
    let store = raw_store(ctx).await?;
    b3(&store, &feed, &mut results.b3.live_raw).await?;
    let expected: u64 = results.b2.relay.iter().map(|d| d.events).sum();
    let expected = i64::try_from(expected)?;
    let queued = ctx
        .broker()?
        .backlog(&Ctx::partitions(&ctx.queue()))
        .await?;
    progress!("starting the query service on a backlog of {queued:?} messages");
    let read = ctx.read_pool.clone().context("read model not prepared")?;
    let spawned = Instant::now();
    ctx.spawn_query()?;
    let mut first: Option<(Instant, i64)> = None;
    let done = loop {
        let (_, applied) = mariadb::projected(&read).await?;
        let now = Instant::now();
        if applied > 0 && first.is_none() {
            first = Some((now, applied));
        }
        if applied >= expected {
            break now;
        }
        if spawned.elapsed() > Duration::from_secs(600) {
            bail!("the projection applied {applied} of {expected} events in 600 s");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let (from, already) = first.unwrap_or((spawned, 0));
    let (from, already) = if done.duration_since(from) < Duration::from_millis(100) {
        (spawned, 0)
    } else {
        (from, already)
    };
    let drain = Drain {
        events: u64::try_from(expected - already)?,
        took: done.duration_since(from),
    };
    progress!(
        "live projection: {} events in {:.2} s = {:.0}/s",
        drain.events,
        drain.took.as_secs_f64(),
        drain.rate()
    );
    results.b3.live = Some(drain);
    ctx.wait_query().await?;
    ctx.stop(QUERY).await;
    b3(&store, &feed, &mut results.b3.live_raw).await?;
    store.close().await;
    Ok(())
}

/// B3's database, made afresh.
async fn raw_store(ctx: &mut Ctx) -> anyhow::Result<mariadb::RawStore> {
    let raw = ctx.name("raw");
    if !ctx.mysql_databases.contains(&raw) {
        ctx.mysql_databases.push(raw.clone());
    }
    mariadb::drop_database(&ctx.opts.mysql, &raw).await?;
    mariadb::RawStore::create(&ctx.opts.mysql, &raw, &ctx.name("read")).await
}

async fn b3(
    store: &mariadb::RawStore,
    feed: &[mariadb::FeedEvent],
    runs: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let rate = store.replay(feed, REBUILD_PAGE).await?;
    progress!(
        "B3 raw MariaDB: {} events replayed at {rate:.0} events/s",
        feed.len()
    );
    runs.push(rate);
    Ok(())
}

/// B3 and `query-service rebuild` over the whole store, taking turns; then a check of
/// the rebuilt model.
pub(crate) async fn rebuild_vs_b3(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let pool = Ctx::pool(ctx.main_pool.as_ref())?.clone();
    let feed = pg::load_feed(&pool).await?;
    let events = u64::try_from(feed.len())?;
    results.b3.feed = events;
    let store = raw_store(ctx).await?;
    for turn in 0..ctx.plan.repeats {
        for side in Side::order(turn) {
            match side {
                Side::Baseline => b3(&store, &feed, &mut results.b3.raw).await?,
                Side::Platform => {
                    let drain = rebuild(ctx, events).await?;
                    results.b3.rebuild.push(drain);
                }
            }
        }
    }
    drop(feed);
    store.close().await;

    let read = ctx.read_pool.clone().context("read model not prepared")?;
    let (streams, total) = pg::balance_total(&pool).await?;
    let (projected, projected_total) = mariadb::projected_balance(&read).await?;
    let same = streams == projected
        && total.parse::<rust_decimal::Decimal>().ok()
            == projected_total.parse::<rust_decimal::Decimal>().ok();
    let check = format!(
        "event store {streams} accounts totalling {total} MAD; rebuilt read model {projected} accounts totalling {projected_total} MAD{}",
        if same { " (equal)" } else { " (**different**)" }
    );
    if !same {
        results.failures.push(format!("rebuild check: {check}"));
    }
    results.b3.rebuild_check = Some(check);
    // Everything queued so far is in the rebuilt model.
    let mut purged = 0;
    for queue in Ctx::partitions(&ctx.queue()) {
        purged += ctx.broker()?.purge(&queue).await?;
    }
    progress!("purged {purged} messages the rebuild covered");
    Ok(())
}

/// One `query-service rebuild` of the whole store, timed from process start to exit.
async fn rebuild(ctx: &mut Ctx, events: u64) -> anyhow::Result<Drain> {
    let mut env = ctx.query_env()?;
    env.push(("HTTP_PORT", procs::free_port()?.to_string()));
    let log = ctx.dir.join("query-service-rebuild.log");
    progress!("rebuilding the read model from {events} events");
    let (took, peak) = procs::run_to_end(
        &ctx.binary("query-service"),
        &["rebuild"],
        &env,
        &log,
        Duration::from_secs(600),
    )
    .await?;
    ctx.record_peak(REBUILD, peak);
    let drain = Drain { events, took };
    progress!(
        "rebuild: {events} events in {:.2} s = {:.0}/s",
        took.as_secs_f64(),
        drain.rate()
    );
    Ok(drain)
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let b3 = median(results.b3.raw.iter().copied());
    let rebuild = median(results.b3.rebuild.iter().map(Drain::rate));
    let measured = (b3.is_finite() && rebuild.is_finite())
        .then(|| (compared(rebuild, b3, rate, "/s"), rebuild / b3 >= 0.9));
    vec![Target::new("rebuild ≥ 0.9× B3", measured)]
}

fn section(results: &Results, out: &mut Markdown) {
    let figures = &results.b3;
    out.heading("B3 (the feed replayed as raw MariaDB inserts) vs the projection");
    let live_b3 = median(figures.live_raw.iter().copied());
    let b3 = median(figures.raw.iter().copied());
    let rebuilds: Vec<f64> = figures.rebuild.iter().map(Drain::rate).collect();
    let rebuild = median(rebuilds.iter().copied());
    let mut rows = vec![[
        format!(
            "B3 over the relay runs' {} events, around the live projection (runs: {})",
            figures.live_feed,
            list(&figures.live_raw, |r| rate(*r))
        ),
        rate(live_b3),
        "1.00×".to_owned(),
    ]];
    if let Some(live) = figures.live {
        rows.push([
            format!(
                "projection, live: the same backlog from its queue, {} events timed (from the first one seen applied) in {}",
                live.events,
                duration(live.took)
            ),
            rate(live.rate()),
            ratio(live.rate() / live_b3),
        ]);
    }
    rows.push([
        format!(
            "B3 over the whole feed, {} events (runs: {})",
            figures.feed,
            list(&figures.raw, |r| rate(*r))
        ),
        rate(b3),
        "1.00×".to_owned(),
    ]);
    if !figures.rebuild.is_empty() {
        rows.push([
            format!(
                "`query-service rebuild` of the same {} events (whole process; runs: {})",
                figures.feed,
                list(&figures.rebuild, |d| duration(d.took))
            ),
            rate(rebuild),
            ratio(rebuild / b3),
        ]);
    }
    out.table(&["measurement", "events/s (median)", "vs B3"], "lrr", rows);
    if let Some(check) = &figures.rebuild_check {
        out.paragraph(&format!("Rebuild check: {check}"));
    }
}

fn method(_: &Results) -> Vec<String> {
    vec![format!(
        "**B3** replays, like for like, the feed the projection replays: every event of the benchmark's event store in position order (read from Postgres before the run, not timed), {REBUILD_PAGE} events per transaction (`query-service rebuild`'s page), into EMPTY tables made `LIKE` the query service's own (`accounts`, `operations`, `account_versions`, `projection_checkpoint`: same columns, keys and indexes), with raw multi-row statements of at most 500 rows (as the service writes them): the accounts first seen in the batch inserted, the others upserted (one row per account, its state after the batch, folded in memory), one `operations` row per credit or debit, one `account_versions` row per event, commit; the checkpoint row at the end. What B3 leaves out is what the service adds to that floor: reading the feed over HTTP, decoding, locking and reading the accounts' rows (`SELECT ... FOR UPDATE`), de-duplication. **Rebuild** is the wall time of `query-service rebuild` (process start-up included) over the same events into its fresh tables, then the swap; B3 and rebuild take turns (the first alternating), figures are medians. The **live** projection figure is how fast the query service, once started, works off the backlog the relay runs left in its queue, the same events B3 replays around it (progress read from its `accounts` table: the sum of the projected versions; its batches are its consumer's, not {REBUILD_PAGE})."
    )]
}
