//! Query-service replicas: the projection's queue designs with one and with two
//! replicas under the same load. One shared queue the replicas compete for
//! (`AMQP_PARTITIONS=0`, the design before partitions) against the default, 8 quorum
//! partitions consumed with a single active consumer each, and 8 classic partitions
//! (to tell partitioning from the quorum queues' cost). Each run has a command service
//! of its own store, exchange and queues, so the rest of the benchmark feels nothing.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hyper::Method;
use serde_json::Value;
use sqlx::MySqlPool;

use crate::context::{Ctx, REPLICAS_COMMAND};
use crate::load::{self, Accounts, Conn, Target};
use crate::procs::Service;
use crate::report::format::{MISSING, duration, ms, rate};
use crate::report::{Markdown, Part, Results};
use crate::stats::{Sample, micros, percentile};
use crate::{mariadb, pg, prom};

/// Clients crediting during the live load and into the backlog.
const CLIENTS: usize = 16;
/// Accounts the clients credit, opened for each run.
const ACCOUNTS: usize = 50;
/// The pause between two lag probes.
const PROBE_PAUSE: Duration = Duration::from_millis(50);
/// Longest wait for the replicas to show every acknowledged credit.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// A queue design: its name in the report, `AMQP_PARTITIONS` and `AMQP_QUEUE_TYPE`.
#[derive(Debug, Clone, Copy)]
struct Design {
    name: &'static str,
    partitions: u16,
    queue_type: &'static str,
}

const DESIGNS: [Design; 3] = [
    Design {
        name: "one shared classic queue",
        partitions: 0,
        queue_type: "classic",
    },
    Design {
        name: "8 quorum partitions (default)",
        partitions: 8,
        queue_type: "quorum",
    },
    Design {
        name: "8 classic partitions",
        partitions: 8,
        queue_type: "classic",
    },
];

/// The projection's counters on the broker's path, summed over the replicas, and the
/// events each replica applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    /// Gaps filled: an event arrived before an earlier one of its account.
    pub(crate) gap_fills: f64,
    /// Events fetched from the command service to fill them.
    pub(crate) backfilled: f64,
    pub(crate) applied: Vec<f64>,
}

/// One design with one replica count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    pub(crate) design: &'static str,
    pub(crate) replicas: usize,
    /// The credits acknowledged during the live load.
    pub(crate) live: Sample,
    /// Acknowledged → visible on a replica (round robin), µs sorted.
    pub(crate) lags_us: Vec<u64>,
    /// Probe reads that gave up waiting (their lag is at least the wait).
    pub(crate) probes_timed_out: usize,
    /// How long after the live load every credit was visible.
    pub(crate) caught_up_after: Duration,
    pub(crate) live_counters: Counters,
    /// Credits acknowledged while no replica ran.
    pub(crate) backlog: u64,
    /// From the replicas' start until every one of them was visible.
    pub(crate) worked_off_in: Duration,
    pub(crate) backlog_counters: Counters,
}

impl Run {
    fn lag_ms(&self, q: f64) -> f64 {
        percentile(&self.lags_us, q) / 1000.0
    }

    fn backlog_rate(&self) -> f64 {
        self.backlog as f64 / self.worked_off_in.as_secs_f64().max(1e-9)
    }
}

/// What the phase measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub(crate) runs: Vec<Run>,
    /// The live load of each run (the backlog load is half of it).
    pub(crate) live: Duration,
    /// The untimed load before each run.
    pub(crate) warmup: Duration,
}

/// Every design with one and with two replicas.
pub(crate) async fn replicas(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let store = ctx.name("replicas");
    ctx.pg_databases.push(store.clone());
    pg::create_database(&ctx.opts.postgres, &store).await?;
    let exchange = ctx.replicas_exchange();
    ctx.start_command(REPLICAS_COMMAND, &store, &exchange)
        .await?;
    let live = ctx.plan.replicas_run;
    results.replicas.live = live;
    results.replicas.warmup = ctx.plan.timing.warmup;
    let pool = pg::connect(&pg::database_url(&ctx.opts.postgres, &store), 2).await?;
    for (index, design) in DESIGNS.iter().enumerate() {
        for replicas in [1, 2] {
            let run = measure(ctx, &pool, index, *design, replicas, live).await;
            let run = run.with_context(|| format!("{}, {replicas} replica(s)", design.name))?;
            progress!(
                "{}, {replicas} replica(s): lag p50 {} ms p99 {} ms, {:.1}% backfilled live; backlog {:.0} events/s",
                design.name,
                ms(run.lag_ms(0.5)),
                ms(run.lag_ms(0.99)),
                backfilled_percent(&run.live_counters, run.live.count as u64),
                run.backlog_rate()
            );
            results.replicas.runs.push(run);
        }
    }
    pool.close().await;
    ctx.stop(REPLICAS_COMMAND).await;
    Ok(())
}

/// One run: its replicas consume while the clients credit and a probe times the lag;
/// then they are killed, the clients credit into the queues, and they start again
/// together and work the backlog off.
async fn measure(
    ctx: &mut Ctx,
    store: &sqlx::PgPool,
    index: usize,
    design: Design,
    replicas: usize,
    live: Duration,
) -> anyhow::Result<Run> {
    let queue = format!("{}.r{index}x{replicas}", ctx.replicas_exchange());
    let read = ctx.name(&format!("replicas_read_{index}_{replicas}"));
    ctx.mysql_databases.push(read.clone());
    let queues = if design.partitions == 0 {
        vec![queue.clone()]
    } else {
        service_kit::amqp::partition_queues(&queue, design.partitions)
    };
    // Every queue and exchange the replicas declare, dropped after the run (and by the
    // clean-up, should the run fail).
    let mut made_queues = queues.clone();
    made_queues.extend([queue.clone(), format!("{queue}.dlq")]);
    let made_exchanges = [service_kit::amqp::partition_exchange(&queue)];
    ctx.queues.extend(made_queues.iter().cloned());
    ctx.exchanges.extend(made_exchanges.iter().cloned());
    let env = replica_env(ctx, design, &queue, &read)?;
    let command = ctx.target(REPLICAS_COMMAND)?;

    let mut running = start_together(ctx, &env, replicas, &queues).await?;
    let read_pool = mariadb::connect(&mariadb::database_url(&ctx.opts.mysql, &read)).await?;
    let accounts = open_accounts(&command, ACCOUNTS).await?;
    let probe_account = open_accounts(&command, 1).await?;
    let mut all_ids = accounts.ids().to_vec();
    all_ids.extend_from_slice(probe_account.ids());
    let warmup = ctx.plan.timing.warmup;
    load::closed_loop(&command, &accounts, CLIENTS, warmup, Duration::ZERO).await?;
    caught_up(store, &read_pool, &all_ids).await?;

    let before = counters(ctx, &running).await;
    let targets: Vec<Target> = running
        .iter()
        .map(|replica| Target::new(replica.addr(), &ctx.tokens.admin))
        .collect::<anyhow::Result<_>>()?;
    let probe_id = probe_account.ids()[0].clone();
    let probing = tokio::spawn(probe(command.clone(), targets, probe_id, live));
    let credits = load::closed_loop(&command, &accounts, CLIENTS, Duration::ZERO, live).await?;
    let (mut lags_us, probes_timed_out) = probing.await.context("the lag probe panicked")??;
    lags_us.sort_unstable();
    let load_ended = Instant::now();
    caught_up(store, &read_pool, &all_ids).await?;
    let caught_up_after = load_ended.elapsed();
    let live_counters = counters(ctx, &running).await.since(&before);

    running.clear();
    let backlog_load =
        load::closed_loop(&command, &accounts, CLIENTS, Duration::ZERO, live / 2).await?;
    let restarted = Instant::now();
    let running = start_together(ctx, &env, replicas, &queues).await?;
    caught_up(store, &read_pool, &all_ids).await?;
    let worked_off_in = restarted.elapsed();
    let backlog_counters = counters(ctx, &running).await;
    read_pool.close().await;
    for replica in running {
        replica.stop().await;
    }
    if let Some(broker) = &ctx.broker {
        broker.delete(&made_queues, &made_exchanges).await;
    }
    Ok(Run {
        design: design.name,
        replicas,
        live: credits,
        lags_us,
        probes_timed_out,
        caught_up_after,
        live_counters,
        backlog: backlog_load.count as u64,
        worked_off_in,
        backlog_counters,
    })
}

/// A replica's settings: the run's read database and queues, the feed follower off
/// (only the broker's path is measured).
fn replica_env(
    ctx: &Ctx,
    design: Design,
    queue: &str,
    read: &str,
) -> anyhow::Result<Vec<(&'static str, String)>> {
    Ok(vec![
        ("DATABASE_URL", mariadb::database_url(&ctx.opts.mysql, read)),
        ("AMQP_URL", ctx.opts.amqp.clone()),
        ("AMQP_EXCHANGE", ctx.replicas_exchange()),
        ("AMQP_QUEUE", queue.to_owned()),
        ("AMQP_PARTITIONS", design.partitions.to_string()),
        ("AMQP_QUEUE_TYPE", design.queue_type.to_owned()),
        ("AMQP_DEAD_LETTER_QUEUE", format!("{queue}.dlq")),
        ("FEED_FOLLOW_ENABLED", "false".to_owned()),
        (
            "COMMAND_SERVICE_URL",
            ctx.service(REPLICAS_COMMAND)?.base_url(),
        ),
        ("COMMAND_SERVICE_TOKEN", ctx.tokens.query_service.clone()),
        ("AUTH_JWT_SECRET", ctx.tokens.secret().to_owned()),
    ])
}

/// Starts `count` replicas at once and waits until they are ready and every queue has
/// a consumer.
async fn start_together(
    ctx: &Ctx,
    env: &[(&'static str, String)],
    count: usize,
    queues: &[String],
) -> anyhow::Result<Vec<Service>> {
    let mut started = Vec::with_capacity(count);
    for replica in 0..count {
        let log = ctx.dir.join(format!("query-replica-{replica}.log"));
        started.push(Service::start(
            "query-service replica",
            &ctx.binary("query-service"),
            &[],
            env,
            &log,
        )?);
    }
    for replica in &mut started {
        replica
            .wait_ready(&ctx.http, Duration::from_secs(60))
            .await?;
    }
    ctx.broker()?
        .wait_for_consumers(queues, Duration::from_secs(30))
        .await?;
    Ok(started)
}

/// Opens and activates `count` accounts through the command service, so that the run's
/// read model holds every one of their events.
async fn open_accounts(command: &Target, count: usize) -> anyhow::Result<Accounts> {
    let mut conn = Conn::open(command).await?;
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let id = uuid::Uuid::new_v4().to_string();
        conn.open_account(&id, "0.00").await?;
        ids.push(id);
    }
    Accounts::new(ids)
}

/// Credits `account` again and again for `run`, each time timing from the
/// acknowledgement until a replica (the next one in turn) shows it; returns the lags
/// and how many reads gave up (`504` after 10 s, counted among the lags as 10 s).
async fn probe(
    command: Target,
    replicas: Vec<Target>,
    account: String,
    run: Duration,
) -> anyhow::Result<(Vec<u64>, usize)> {
    let mut conn = Conn::open(&command).await?;
    let mut reads = Vec::with_capacity(replicas.len());
    for replica in &replicas {
        reads.push(Conn::open(replica).await?);
    }
    let credit = format!("/accounts/{account}/credit");
    let end = Instant::now() + run;
    let mut lags = Vec::new();
    let mut timed_out = 0;
    for turn in 0.. {
        if Instant::now() >= end {
            break;
        }
        let ack = conn
            .post_expecting(
                &credit,
                Some(Bytes::from_static(br#"{"amount": "1.00"}"#)),
                200,
            )
            .await?;
        let ack: Value = serde_json::from_slice(&ack).context("a credit's answer is not JSON")?;
        let acknowledged = Instant::now();
        let version = ack["version"]
            .as_u64()
            .context("a credit without version")?;
        let path = format!("/accounts/{account}?min_version={version}&wait_ms=10000");
        let read = &mut reads[turn % replicas.len()];
        let (status, body) = read.request(Method::GET, &path, None).await?;
        if status == 504 {
            timed_out += 1;
        } else if status != 200 {
            bail!(
                "GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        lags.push(micros(acknowledged.elapsed()));
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    Ok((lags, timed_out))
}

/// Waits until the read model holds every event the store has for `ids`.
async fn caught_up(store: &sqlx::PgPool, read: &MySqlPool, ids: &[String]) -> anyhow::Result<()> {
    let uuids: Vec<uuid::Uuid> = ids.iter().filter_map(|id| id.parse().ok()).collect();
    let wanted: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream_id = ANY($1)")
        .bind(&uuids)
        .fetch_one(store)
        .await
        .context("counting the run's events")?;
    let started = Instant::now();
    loop {
        let (_, applied) = mariadb::projected(read).await?;
        if applied >= wanted {
            return Ok(());
        }
        if started.elapsed() > CATCH_UP_TIMEOUT {
            bail!(
                "the replicas applied {applied} of {wanted} events within {} s",
                CATCH_UP_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The replicas' counters now.
async fn counters(ctx: &Ctx, replicas: &[Service]) -> Counters {
    let mut figures = Counters::default();
    for replica in replicas {
        let text = prom::scrape_text(&ctx.http, &replica.base_url())
            .await
            .unwrap_or_default();
        let broker = [("path", "broker")];
        figures.gap_fills += prom::counter(&text, "projection_gap_fills_total", &broker);
        figures.backfilled += prom::counter(&text, "projection_backfilled_events_total", &broker);
        figures.applied.push(prom::counter(
            &text,
            "projection_events_total",
            &[("path", "broker"), ("outcome", "applied")],
        ));
    }
    figures
}

impl Counters {
    /// What was counted after `before` (the same replicas).
    fn since(&self, before: &Self) -> Self {
        Self {
            gap_fills: self.gap_fills - before.gap_fills,
            backfilled: self.backfilled - before.backfilled,
            applied: self
                .applied
                .iter()
                .zip(&before.applied)
                .map(|(after, before)| after - before)
                .collect(),
        }
    }
}

fn backfilled_percent(counters: &Counters, events: u64) -> f64 {
    100.0 * counters.backfilled / events.max(1) as f64
}

fn applied(counters: &Counters) -> String {
    let each: Vec<String> = counters
        .applied
        .iter()
        .map(|applied| format!("{:.0}", applied + 0.0))
        .collect();
    each.join(" / ")
}

/// The phase's part of the report.
pub(crate) const REPORT: Part = Part::new(targets, section, method);

fn targets(results: &Results) -> Vec<crate::report::Target> {
    let _ = results;
    Vec::new()
}

fn section(results: &Results, out: &mut Markdown) {
    let figures = &results.replicas;
    out.heading("Query-service replicas");
    if figures.runs.is_empty() {
        out.line(&format!("{MISSING} (not run)"));
        return;
    }
    out.line(&format!(
        "{CLIENTS} closed-loop clients credit {ACCOUNTS} accounts for {} while a probe times acknowledged → visible; then every replica is killed, the clients credit for {} into the queues, and the replicas start again together and work the backlog off.\n",
        duration(figures.live),
        duration(figures.live / 2)
    ));
    let live = figures.runs.iter().map(|run| {
        [
            run.design.to_owned(),
            run.replicas.to_string(),
            rate(run.live.throughput),
            ms(run.lag_ms(0.5)),
            ms(run.lag_ms(0.99)),
            run.probes_timed_out.to_string(),
            duration(run.caught_up_after),
            format!("{:.0}", run.live_counters.gap_fills + 0.0),
            format!(
                "{:.0} ({:.1}%)",
                run.live_counters.backfilled + 0.0,
                backfilled_percent(&run.live_counters, run.live.count as u64)
            ),
            applied(&run.live_counters),
        ]
    });
    out.table(
        &[
            "design",
            "replicas",
            "credits/s",
            "lag p50 ms",
            "lag p99 ms",
            "probes timed out",
            "caught up after",
            "gap fills",
            "events backfilled",
            "applied per replica",
        ],
        "lrrrrrrrrl",
        live,
    );
    let backlog = figures.runs.iter().map(|run| {
        [
            run.design.to_owned(),
            run.replicas.to_string(),
            run.backlog.to_string(),
            duration(run.worked_off_in),
            rate(run.backlog_rate()),
            format!("{:.0}", run.backlog_counters.gap_fills + 0.0),
            format!(
                "{:.0} ({:.1}%)",
                run.backlog_counters.backfilled + 0.0,
                backfilled_percent(&run.backlog_counters, run.backlog)
            ),
            applied(&run.backlog_counters),
        ]
    });
    out.paragraph("Backlog worked off:\n");
    out.table(
        &[
            "design",
            "replicas",
            "credits queued",
            "worked off in",
            "events/s",
            "gap fills",
            "events backfilled",
            "applied per replica",
        ],
        "lrrrrrrl",
        backlog,
    );
}

fn method(results: &Results) -> Vec<String> {
    vec![format!(
        "**Query-service replicas**: a command service of its own (own store, exchange and queues) and, per design and replica count, fresh queues and a fresh read database; the replicas start together (the partitions are shared out as they subscribe) with the feed follower off, so that only the broker's path is measured. {ACCOUNTS} accounts (and the probe's) are opened and activated through the command service, credited by the clients for {} of warm-up, and projected before the load. The lag probe credits its own account, then reads it with `min_version` and `wait_ms=10000` from the replicas in turn, with {} ms between probes; a read that gives up (`504 not_yet_projected`) is counted as timed out and its lag as the time it waited. \"Caught up after\" and \"worked off in\" end when the run's read database holds every event the store has for the run's accounts (polled every 20 ms); the backlog's events/s counts the credits queued. Gap fills, events backfilled (fetched from the command service to fill a gap: an event that overtook an earlier one of its account) and events applied are the replicas' `projection_gap_fills_total`, `projection_backfilled_events_total` and `projection_events_total{{outcome=\"applied\"}}` on the broker's path; the percentage is of the credits of that part of the run.",
        duration(results.replicas.warmup),
        PROBE_PAUSE.as_millis()
    )]
}
