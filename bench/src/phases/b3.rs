//! B3 against the projection: raw MariaDB inserts of the read model's rows, around the
//! live query service working off the relay's backlog, and around `query-service rebuild`
//! over the whole event store (then a check that the rebuilt model adds up).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::context::{Ctx, QUERY, REBUILD};
use crate::report::format::{compared, duration, list, rate, ratio};
use crate::report::{Markdown, Part, Results, Target};
use crate::stats::{Drain, median};
use crate::{mariadb, pg, procs};

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    /// B3 runs, events per second.
    pub(crate) raw: Vec<f64>,
    /// The live projection working off its backlog.
    pub(crate) live: Option<Drain>,
    /// `query-service rebuild`, process start-up included.
    pub(crate) rebuild: Option<Drain>,
    /// The event store's totals against the rebuilt read model's.
    pub(crate) rebuild_check: Option<String>,
}

/// B3, then the query service working off the relay runs' backlog, then B3 again.
pub(crate) async fn live_vs_b3(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let raw = ctx.name("raw");
    ctx.mysql_databases.push(raw.clone());
    let accounts = usize::try_from(ctx.plan.accounts())?;
    let mut store = mariadb::RawStore::create(&ctx.opts.mysql, &raw, accounts).await?;
    b3(&mut store, ctx, results).await?;
    let expected: u64 = results.b2.relay.iter().map(|d| d.events).sum();
    let expected = i64::try_from(expected)?;
    let queued = ctx.broker()?.queue_state(&ctx.queue()).await?.map(|s| s.0);
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
    b3(&mut store, ctx, results).await?;
    store.close().await;
    Ok(())
}

async fn b3(store: &mut mariadb::RawStore, ctx: &Ctx, results: &mut Results) -> anyhow::Result<()> {
    let rate = store.raw_apply(500, ctx.plan.side_run).await?;
    progress!("B3 raw MariaDB: {rate:.0} events/s");
    results.b3.raw.push(rate);
    Ok(())
}

/// B3, `query-service rebuild` over the whole store, B3; then a check of the result.
pub(crate) async fn rebuild_vs_b3(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let raw = ctx.name("raw");
    let accounts = usize::try_from(ctx.plan.accounts())?;
    mariadb::drop_database(&ctx.opts.mysql, &raw).await?;
    let mut store = mariadb::RawStore::create(&ctx.opts.mysql, &raw, accounts).await?;
    b3(&mut store, ctx, results).await?;
    let pool = Ctx::pool(ctx.main_pool.as_ref())?.clone();
    let events = u64::try_from(pg::event_count(&pool).await?)?;
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
    results.b3.rebuild = Some(drain);
    b3(&mut store, ctx, results).await?;
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
    let purged = ctx.broker()?.purge(&ctx.queue()).await?;
    progress!("purged {purged} messages the rebuild covered");
    Ok(())
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<Target> {
    let b3 = median(results.b3.raw.iter().copied());
    let measured = results
        .b3
        .rebuild
        .filter(|_| b3.is_finite())
        .map(|rebuild| {
            (
                compared(rebuild.rate(), b3, rate, "/s"),
                rebuild.rate() / b3 >= 0.5,
            )
        });
    vec![Target::new("rebuild ≥ 0.5× B3", measured)]
}

fn section(results: &Results, out: &mut Markdown) {
    let figures = &results.b3;
    out.heading("B3 (raw MariaDB inserts) vs the projection");
    let b3 = median(figures.raw.iter().copied());
    let b3_row = [
        format!(
            "B3: 500 credits per transaction (multi-row insert of operations + upsert of accounts), runs: {}",
            list(&figures.raw, |r| rate(*r))
        ),
        rate(b3),
        "1.00×".to_owned(),
    ];
    let live = figures.live.map(|live| {
        [
            format!(
                "projection, live: a backlog of {} events in its queue, drained in {}",
                live.events,
                duration(live.took)
            ),
            rate(live.rate()),
            ratio(live.rate() / b3),
        ]
    });
    let rebuild = figures.rebuild.map(|rebuild| {
        [
            format!(
                "`query-service rebuild` of {} events (whole process, {})",
                rebuild.events,
                duration(rebuild.took)
            ),
            rate(rebuild.rate()),
            ratio(rebuild.rate() / b3),
        ]
    });
    out.table(
        &["measurement", "events/s", "vs B3"],
        "lrr",
        std::iter::once(b3_row).chain(live).chain(rebuild),
    );
    if let Some(check) = &figures.rebuild_check {
        out.paragraph(&format!("Rebuild check: {check}"));
    }
}

fn method(_: &Results) -> Vec<String> {
    vec!["**B3** writes the read model's rows (the query service's `accounts` and `operations` tables) for 500 credits per transaction. The **live** projection figure is how fast the query service, once started, works off the backlog the relay runs left in its queue (progress read from its `accounts` table: the sum of the projected versions); **rebuild** is the wall time of `query-service rebuild` over the whole event store (feed pages of 1000 from the command service), process start-up included.".to_owned()]
}
