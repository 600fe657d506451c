//! `bench`: one run that measures the platform against raw baselines, each pair
//! interleaved so that a drifting machine hurts both sides alike, and writes the figures
//! to `docs/benchmarks.md`. Run it with `bench/run.sh [--quick]`, which builds the
//! release binaries first.

mod broker;
mod load;
mod mariadb;
mod peer;
mod pg;
mod pgbench;
mod procs;
mod report;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::{MySqlPool, PgPool};

use crate::broker::Broker;
use crate::load::{Accounts, Probe};
use crate::peer::Peer;
use crate::procs::Service;
use crate::report::{Drain, Lag, Machine, Pair, Results};
use crate::stats::{Timing, to_usize};

const USAGE: &str = "usage: bench [--quick] [--out FILE] [--bin-dir DIR] [--keep]

Measures the command and query services against raw Postgres (pgbench), RabbitMQ and
MariaDB baselines and the Python eventsourcing library, in one interleaved run, and
writes a Markdown report. Normally run through bench/run.sh, which builds the release
binaries first.

  --quick        smoke run of about a minute (small data, short runs)
  --out FILE     report path (default docs/benchmarks.md; target/bench/benchmarks-quick.md with --quick)
  --bin-dir DIR  where the service binaries are (default target/release)
  --keep         keep the databases, queues and exchanges it made

Servers (environment): BENCH_POSTGRES_URL (postgres://postgres@127.0.0.1:5432),
BENCH_MYSQL_URL (mysql://root@127.0.0.1:3306), BENCH_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f)";

static STARTED: OnceLock<Instant> = OnceLock::new();

fn elapsed() -> Duration {
    STARTED.get_or_init(Instant::now).elapsed()
}

macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[bench {:>6.1}s] {}", crate::elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    out: PathBuf,
    root: PathBuf,
    bin_dir: PathBuf,
    keep: bool,
    postgres: String,
    mysql: String,
    amqp: String,
    invocation: String,
}

impl Options {
    fn parse() -> anyhow::Result<Option<Self>> {
        let root = std::env::current_dir()?;
        let mut quick = false;
        let mut keep = false;
        let mut out = None;
        let mut bin_dir = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--keep" => keep = true,
                "--out" => out = Some(PathBuf::from(args.next().context("--out needs a path")?)),
                "--bin-dir" => {
                    bin_dir = Some(PathBuf::from(
                        args.next().context("--bin-dir needs a path")?,
                    ));
                }
                "-h" | "--help" => {
                    eprintln!("{USAGE}");
                    return Ok(None);
                }
                other => bail!("unknown argument {other:?}\n\n{USAGE}"),
            }
        }
        let env =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let invocation = std::env::var("BENCH_INVOCATION").unwrap_or_else(|_| {
            std::iter::once("bench".to_owned())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" ")
        });
        Ok(Some(Self {
            quick,
            out: out.unwrap_or_else(|| {
                if quick {
                    root.join("target/bench/benchmarks-quick.md")
                } else {
                    root.join("docs/benchmarks.md")
                }
            }),
            bin_dir: bin_dir.unwrap_or_else(|| root.join("target/release")),
            root,
            keep,
            postgres: env("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
            mysql: env("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306"),
            amqp: env("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            invocation,
        }))
    }
}

/// Sizes and durations of a run.
#[derive(Debug, Clone)]
struct Plan {
    timing: Timing,
    repeats: usize,
    clients: Vec<usize>,
    relay_batches: u64,
    relay_batch_accounts: u64,
    relay_events_per_account: u64,
    /// Length of one B2 or B3 run.
    side_run: Duration,
    lag_fractions: Vec<f64>,
    lag_run: Duration,
    long_streams: Vec<u64>,
    growth_timing: Timing,
    big_events_per_account: u64,
    append_clients: usize,
    peer_clients: Vec<usize>,
    peer_accounts: u64,
    /// Optional phases are skipped once the run has taken this long.
    budget: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                timing: Timing {
                    warmup: Duration::from_secs(1),
                    measure: Duration::from_secs(1),
                },
                repeats: 1,
                clients: vec![1, 4, 16, 64],
                relay_batches: 1,
                relay_batch_accounts: 2_000,
                relay_events_per_account: 5,
                side_run: Duration::from_secs(1),
                lag_fractions: vec![0.5, 0.9],
                lag_run: Duration::from_secs(2),
                long_streams: vec![10, 1_000, 10_000],
                growth_timing: Timing {
                    warmup: Duration::from_millis(300),
                    measure: Duration::from_secs(1),
                },
                big_events_per_account: 10,
                append_clients: 16,
                peer_clients: vec![4],
                peer_accounts: 2_000,
                budget: Duration::from_secs(4 * 60),
            }
        } else {
            Self {
                timing: Timing {
                    warmup: Duration::from_secs(1),
                    measure: Duration::from_secs(5),
                },
                repeats: 2,
                clients: vec![1, 4, 16, 64],
                relay_batches: 2,
                relay_batch_accounts: 5_000,
                relay_events_per_account: 5,
                side_run: Duration::from_secs(3),
                lag_fractions: vec![0.1, 0.5, 0.9],
                lag_run: Duration::from_secs(8),
                long_streams: vec![10, 10_000, 100_000],
                growth_timing: Timing {
                    warmup: Duration::from_millis(500),
                    measure: Duration::from_secs(3),
                },
                big_events_per_account: 100,
                append_clients: 16,
                peer_clients: vec![1, 4, 16],
                peer_accounts: 10_000,
                budget: Duration::from_secs(13 * 60),
            }
        }
    }

    fn accounts(&self) -> u64 {
        self.relay_batches * self.relay_batch_accounts
    }
}

/// Roles of the service processes.
const COMMAND: &str = "command-service";
const QUERY: &str = "query-service";
const SMALL: &str = "command-service on the small store";
const BIG: &str = "command-service on the big store";
const REBUILD: &str = "query-service rebuild";

/// The run's resources, so that they are cleaned up whatever happens.
struct Ctx {
    opts: Options,
    plan: Plan,
    run: String,
    dir: PathBuf,
    http: reqwest::Client,
    broker: Option<Broker>,
    pg_databases: Vec<String>,
    mysql_databases: Vec<String>,
    services: BTreeMap<&'static str, Service>,
    peaks: BTreeMap<&'static str, u64>,
    main_pool: Option<PgPool>,
    read_pool: Option<MySqlPool>,
    small_pool: Option<PgPool>,
    big_pool: Option<PgPool>,
    peer: Option<Peer>,
    has_query: bool,
}

impl Ctx {
    fn name(&self, suffix: &str) -> String {
        format!("bench_{}_{suffix}", self.run)
    }

    fn exchange(&self) -> String {
        format!("bench.{}.events", self.run)
    }

    fn growth_exchange(&self) -> String {
        format!("bench.{}.growth", self.run)
    }

    fn queue(&self) -> String {
        format!("bench.{}.projection", self.run)
    }

    fn sink(&self) -> String {
        format!("bench.{}.sink", self.run)
    }

    fn raw_exchange(&self) -> String {
        format!("bench.{}.raw", self.run)
    }

    fn raw_queue(&self) -> String {
        format!("bench.{}.raw", self.run)
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.opts.bin_dir.join(name)
    }

    fn broker(&self) -> anyhow::Result<&Broker> {
        self.broker.as_ref().context("not connected to RabbitMQ")
    }

    fn pool(pool: Option<&PgPool>) -> anyhow::Result<&PgPool> {
        pool.context("database not prepared (an earlier step failed)")
    }

    fn service(&self, role: &str) -> anyhow::Result<&Service> {
        self.services
            .get(role)
            .with_context(|| format!("{role} is not running (an earlier step failed)"))
    }

    async fn start_command(
        &mut self,
        role: &'static str,
        database: &str,
        exchange: &str,
    ) -> anyhow::Result<()> {
        let env = [
            (
                "DATABASE_URL",
                pg::database_url(&self.opts.postgres, database),
            ),
            ("AMQP_URL", self.opts.amqp.clone()),
            ("AMQP_EXCHANGE", exchange.to_owned()),
        ];
        let log = self.dir.join(format!("{}.log", role.replace(' ', "-")));
        let mut service = Service::start(role, &self.binary("command-service"), &[], &env, &log)?;
        service
            .wait_ready(&self.http, Duration::from_secs(60))
            .await?;
        self.services.insert(role, service);
        Ok(())
    }

    fn query_env(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        Ok(vec![
            (
                "DATABASE_URL",
                mariadb::database_url(&self.opts.mysql, &self.name("read")),
            ),
            ("AMQP_URL", self.opts.amqp.clone()),
            ("AMQP_EXCHANGE", self.exchange()),
            ("AMQP_QUEUE", self.queue()),
            ("COMMAND_SERVICE_URL", self.service(COMMAND)?.base_url()),
        ])
    }

    /// Starts the live query service without waiting for it.
    fn spawn_query(&mut self) -> anyhow::Result<()> {
        let env = self.query_env()?;
        let log = self.dir.join("query-service.log");
        let service = Service::start(QUERY, &self.binary("query-service"), &[], &env, &log)?;
        self.services.insert(QUERY, service);
        Ok(())
    }

    async fn wait_query(&mut self) -> anyhow::Result<()> {
        let queue = self.queue();
        let http = self.http.clone();
        let service = self
            .services
            .get_mut(QUERY)
            .context("query service not started")?;
        service.wait_ready(&http, Duration::from_secs(60)).await?;
        self.broker()?
            .wait_for_consumer(&queue, Duration::from_secs(30))
            .await
    }

    async fn stop(&mut self, role: &'static str) {
        if let Some(service) = self.services.remove(role) {
            let peak = service.stop().await;
            self.record_peak(role, peak);
        }
    }

    fn record_peak(&mut self, role: &'static str, kib: u64) {
        if kib > 0 {
            let entry = self.peaks.entry(role).or_default();
            *entry = (*entry).max(kib);
        }
    }

    async fn cleanup(&mut self) {
        let roles: Vec<&'static str> = self.services.keys().copied().collect();
        for role in roles {
            self.stop(role).await;
        }
        for pool in [
            self.main_pool.take(),
            self.small_pool.take(),
            self.big_pool.take(),
        ]
        .into_iter()
        .flatten()
        {
            pool.close().await;
        }
        if let Some(pool) = self.read_pool.take() {
            pool.close().await;
        }
        if self.opts.keep {
            progress!(
                "--keep: leaving databases bench_{}_* and broker objects bench.{}.*",
                self.run,
                self.run
            );
        } else {
            for name in std::mem::take(&mut self.pg_databases) {
                if let Err(error) = pg::drop_database(&self.opts.postgres, &name).await {
                    progress!("cannot drop Postgres database {name}: {error:#}");
                }
            }
            for name in std::mem::take(&mut self.mysql_databases) {
                if let Err(error) = mariadb::drop_database(&self.opts.mysql, &name).await {
                    progress!("cannot drop MariaDB database {name}: {error:#}");
                }
            }
            let exchange = self.exchange();
            let queues = [
                self.queue(),
                self.sink(),
                self.raw_queue(),
                format!("{exchange}.dlq"),
            ];
            let exchanges = [
                exchange.clone(),
                format!("{exchange}.dlx"),
                self.growth_exchange(),
                self.raw_exchange(),
            ];
            if let Some(broker) = &self.broker {
                broker.delete(&queues, &exchanges).await;
            }
        }
        if let Some(broker) = self.broker.take() {
            broker.close().await;
        }
    }
}

fn main() -> std::process::ExitCode {
    STARTED.get_or_init(Instant::now);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(Box::pin(run())) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("bench: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The whole run; `Ok(false)` when some measurement failed (the report says which).
async fn run() -> anyhow::Result<bool> {
    let Some(opts) = Options::parse()? else {
        return Ok(true);
    };
    let plan = Plan::new(opts.quick);
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let dir = opts.root.join("target/bench").join(&run);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    progress!(
        "run {run} ({} mode), logs in {}",
        if opts.quick { "quick" } else { "default" },
        dir.display()
    );
    let mut results = Results {
        quick: opts.quick,
        command_line: opts.invocation.clone(),
        started_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        accounts: plan.accounts(),
        repeats: plan.repeats,
        warmup: plan.timing.warmup,
        measure: plan.timing.measure,
        append_clients: plan.append_clients,
        ..Results::default()
    };
    results.machine = describe_machine(&opts).await;
    let mut ctx = Ctx {
        has_query: opts.bin_dir.join("query-service").is_file(),
        opts,
        plan,
        run,
        dir,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        broker: None,
        pg_databases: Vec::new(),
        mysql_databases: Vec::new(),
        services: BTreeMap::new(),
        peaks: BTreeMap::new(),
        main_pool: None,
        read_pool: None,
        small_pool: None,
        big_pool: None,
        peer: None,
    };
    let phases = Box::pin(run_phases(&mut ctx, &mut results));
    tokio::select! {
        () = phases => {}
        _ = tokio::signal::ctrl_c() => {
            results.failures.push("interrupted (Ctrl-C)".to_owned());
        }
    }
    progress!("cleaning up");
    ctx.cleanup().await;
    for (role, kib) in &ctx.peaks {
        results.rss.push(((*role).to_owned(), *kib));
    }
    results.machine.load_end = load_average();
    results.took = elapsed();
    let report = results.render();
    if let Some(parent) = ctx.opts.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&ctx.opts.out, report)
        .with_context(|| format!("cannot write {}", ctx.opts.out.display()))?;
    progress!(
        "done in {:.0} s; report: {}",
        results.took.as_secs_f64(),
        ctx.opts.out.display()
    );
    for failure in &results.failures {
        progress!("FAILED: {failure}");
    }
    Ok(results.failures.is_empty())
}

async fn run_phases(ctx: &mut Ctx, results: &mut Results) {
    if let Err(error) = Box::pin(prepare(ctx, results)).await {
        results.failures.push(format!("preparation: {error:#}"));
        return;
    }
    let phases: [(&str, bool); 7] = [
        ("relay vs B2", true),
        ("live projection vs B3", ctx.has_query),
        ("B1 vs service", true),
        ("rebuild vs B3", ctx.has_query),
        ("projection lag", ctx.has_query),
        ("cost growth", true),
        ("peer", true),
    ];
    for (index, (name, possible)) in phases.into_iter().enumerate() {
        if !possible {
            results.failures.push(format!(
                "{name}: skipped, the query-service binary is missing"
            ));
            continue;
        }
        if index > 2 && elapsed() > ctx.plan.budget {
            results.failures.push(format!(
                "{name}: skipped, the run already took {:.0} s",
                elapsed().as_secs_f64()
            ));
            continue;
        }
        progress!("== {name}");
        let outcome = match index {
            0 => Box::pin(relay_vs_b2(ctx, results)).await,
            1 => Box::pin(live_vs_b3(ctx, results)).await,
            2 => Box::pin(b1_vs_service(ctx, results)).await,
            3 => Box::pin(rebuild_vs_b3(ctx, results)).await,
            4 => Box::pin(projection_lag(ctx, results)).await,
            5 => Box::pin(cost_growth(ctx, results)).await,
            _ => Box::pin(peer_vs_service(ctx, results)).await,
        };
        if let Err(error) = outcome {
            progress!("{name} failed: {error:#}");
            results.failures.push(format!("{name}: {error:#}"));
        }
    }
}

async fn describe_machine(opts: &Options) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or("unknown".to_owned(), |kib| {
            format!("{:.1} GiB", kib / 1024.0 / 1024.0)
        });
    let postgres = pg::server_version(&opts.postgres)
        .await
        .unwrap_or_else(|e| format!("unreachable: {e:#}"));
    let postgres_settings = postgres_settings(&opts.postgres)
        .await
        .unwrap_or_else(|e| format!("settings unknown: {e:#}"));
    let mariadb = mariadb::server_version(&opts.mysql)
        .await
        .unwrap_or_else(|e| format!("unreachable: {e:#}"));
    Machine {
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".to_owned()),
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        memory,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".to_owned(), |k| format!("Linux {}", k.trim())),
        postgres,
        postgres_settings,
        mariadb,
        rabbitmq: rabbitmq_version().await,
        load_start: load_average(),
        load_end: String::new(),
        commit: commit(&opts.root).await,
    }
}

async fn postgres_settings(server: &str) -> anyhow::Result<String> {
    let pool = pg::connect(&pg::database_url(server, "postgres"), 1).await?;
    let mut parts = Vec::new();
    for setting in [
        "max_connections",
        "shared_buffers",
        "synchronous_commit",
        "wal_level",
    ] {
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&pool)
            .await?;
        parts.push(format!("{setting} {value}"));
    }
    pool.close().await;
    Ok(parts.join(", "))
}

async fn rabbitmq_version() -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("rabbitmqctl")
            .args(["-q", "version"])
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match output {
        Ok(Ok(output)) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        _ => "unknown (rabbitmqctl version did not answer)".to_owned(),
    }
}

async fn commit(root: &Path) -> String {
    let git = |args: &'static [&'static str]| {
        let root = root.to_owned();
        async move {
            tokio::process::Command::new("git")
                .args(args)
                .current_dir(root)
                .output()
                .await
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        }
    };
    match git(&["rev-parse", "--short", "HEAD"]).await {
        Some(head) => {
            let dirty = git(&["status", "--porcelain"])
                .await
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("`{head}` with uncommitted changes in the work tree")
            } else {
                format!("`{head}`")
            }
        }
        None => "unknown (not a git checkout)".to_owned(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Databases, the seeded accounts, the command service, the projection's queue and the peer.
async fn prepare(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    if which("pgbench").is_none() {
        bail!("pgbench is not installed (Debian: postgresql-client)");
    }
    for binary in ["command-service"] {
        if !ctx.binary(binary).is_file() {
            bail!(
                "{} is missing; build the release binaries first (bench/run.sh does)",
                ctx.binary(binary).display()
            );
        }
    }
    ctx.broker = Some(Broker::connect(&ctx.opts.amqp).await?);

    progress!(
        "installing the peer (pip install \"eventsourcing[postgres]\" into target/bench/venv)"
    );
    match Peer::install(&ctx.opts.root.join("target/bench")).await {
        Ok(peer) => {
            results.peer_version = Some(peer.version.clone());
            ctx.peer = Some(peer);
        }
        Err(error) => results
            .failures
            .push(format!("peer installation: {error:#}")),
    }

    progress!("B1 database with {} accounts", ctx.plan.accounts());
    let b1 = ctx.name("b1");
    ctx.pg_databases.push(b1.clone());
    let b1_url = pg::database_url(&ctx.opts.postgres, &b1);
    let store = event_store::EventStore::connect(&b1_url, 2)
        .await
        .context("cannot create the B1 database with the event store's schema")?;
    pg::seed_accounts(store.pool(), 1, ctx.plan.accounts(), 2, false).await?;
    pg::analyze(store.pool()).await?;
    store.pool().close().await;

    progress!("starting the command service");
    let main = ctx.name("main");
    ctx.pg_databases.push(main.clone());
    let exchange = ctx.exchange();
    ctx.start_command(COMMAND, &main, &exchange).await?;
    ctx.main_pool = Some(pg::connect(&pg::database_url(&ctx.opts.postgres, &main), 2).await?);

    if ctx.has_query {
        progress!("starting the query service once, for its queue");
        ctx.mysql_databases.push(ctx.name("read"));
        ctx.spawn_query()?;
        ctx.wait_query().await?;
        ctx.stop(QUERY).await;
        ctx.read_pool = Some(
            mariadb::connect(&mariadb::database_url(&ctx.opts.mysql, &ctx.name("read"))).await?,
        );
    } else {
        results.notes.push(format!(
            "{} is missing: the relay publishes into a queue of the benchmark's own instead of the projection's.",
            ctx.binary("query-service").display()
        ));
        ctx.broker()?.declare_sink(&exchange, &ctx.sink()).await?;
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// B2 and the relay, ABBA: each relay run drains a freshly seeded outbox.
async fn relay_vs_b2(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let (raw_exchange, raw_queue) = (ctx.raw_exchange(), ctx.raw_queue());
    ctx.broker()?
        .declare_sink(&raw_exchange, &raw_queue)
        .await?;
    for batch in 0..ctx.plan.relay_batches {
        if batch % 2 == 0 {
            b2(ctx, results).await?;
            relay(ctx, results, batch).await?;
        } else {
            relay(ctx, results, batch).await?;
            b2(ctx, results).await?;
        }
    }
    Ok(())
}

async fn b2(ctx: &Ctx, results: &mut Results) -> anyhow::Result<()> {
    let broker = ctx.broker()?;
    let rate = broker
        .raw_publish(&ctx.raw_exchange(), 500, ctx.plan.side_run)
        .await?;
    broker.purge(&ctx.raw_queue()).await?;
    progress!("B2 raw publish: {rate:.0} msg/s");
    results.b2.push(rate);
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
    results.relay.push(drain);
    Ok(())
}

/// B3, then the query service working off the relay runs' backlog, then B3 again.
async fn live_vs_b3(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let raw = ctx.name("raw");
    ctx.mysql_databases.push(raw.clone());
    let accounts = usize::try_from(ctx.plan.accounts())?;
    let mut store = mariadb::RawStore::create(&ctx.opts.mysql, &raw, accounts).await?;
    b3(&mut store, ctx, results).await?;
    let expected: u64 = results.relay.iter().map(|d| d.events).sum();
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
    results.live = Some(drain);
    ctx.wait_query().await?;
    ctx.stop(QUERY).await;
    b3(&mut store, ctx, results).await?;
    store.close().await;
    Ok(())
}

async fn b3(store: &mut mariadb::RawStore, ctx: &Ctx, results: &mut Results) -> anyhow::Result<()> {
    let rate = store.raw_apply(500, ctx.plan.side_run).await?;
    progress!("B3 raw MariaDB: {rate:.0} events/s");
    results.b3.push(rate);
    Ok(())
}

/// B1 (pgbench) and the service at each client count, alternating which goes first.
async fn b1_vs_service(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let script = ctx.dir.join("b1.sql");
    std::fs::write(&script, pgbench::script())?;
    let target = pgbench::Target::parse(&ctx.opts.postgres, &ctx.name("b1"))?;
    let accounts = seeded_accounts(1, ctx.plan.accounts())?;
    let timing = ctx.plan.timing;
    for (index, &clients) in ctx.plan.clients.clone().iter().enumerate() {
        let mut pair = Pair {
            clients,
            ..Pair::default()
        };
        for repeat in 0..ctx.plan.repeats {
            let b1_first = (index + repeat) % 2 == 0;
            for side in 0..2 {
                if (side == 0) == b1_first {
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
                    let service = ctx.service(COMMAND)?;
                    let cpu_before = service.cpu_time();
                    let sample = load::closed_loop(
                        service.addr(),
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
        results.pairs.push(pair);
    }
    Ok(())
}

fn seeded_accounts(first: u64, count: u64) -> anyhow::Result<Accounts> {
    Accounts::new((first..first + count).map(pg::account_id).collect())
}

/// B3, `query-service rebuild` over the whole store, B3; then a check of the result.
async fn rebuild_vs_b3(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
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
    results.rebuild = Some(drain);
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
    results.rebuild_check = Some(check);
    // Everything queued so far is in the rebuilt model.
    let purged = ctx.broker()?.purge(&ctx.queue()).await?;
    progress!("purged {purged} messages the rebuild covered");
    Ok(())
}

/// Open-loop credits at fractions of the peak with the query service live; probes
/// measure acknowledged → visible.
async fn projection_lag(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let peak = results
        .peak()
        .context("no service throughput measured, so no peak to take fractions of")?;
    ctx.spawn_query()?;
    ctx.wait_query().await?;
    let accounts = seeded_accounts(1, ctx.plan.accounts())?;
    let query_base = ctx.service(QUERY)?.base_url();
    for &fraction in &ctx.plan.lag_fractions.clone() {
        let rate = (peak * fraction).max(1.0);
        let probe = Probe {
            query_base: query_base.clone(),
            client: ctx.http.clone(),
            every: to_usize(rate / 40.0).max(1),
            timeout: Duration::from_secs(15),
        };
        let addr = ctx.service(COMMAND)?.addr();
        let outcome =
            load::open_loop(addr, &accounts, rate, ctx.plan.lag_run, 64, Some(probe)).await?;
        let lag = Lag {
            fraction,
            offered: rate,
            achieved: outcome.achieved_rate,
            ack: outcome.ack,
            lags_us: outcome.lags_us,
            timed_out: outcome.probes_timed_out,
        };
        progress!(
            "lag at {:.0}% of peak ({rate:.0} cmd/s): p50 {:.1} ms p99 {:.1} ms over {} probes, {} timed out",
            fraction * 100.0,
            stats::percentile(&lag.lags_us, 0.5) / 1000.0,
            stats::percentile(&lag.lags_us, 0.99) / 1000.0,
            lag.lags_us.len(),
            lag.timed_out
        );
        results.lag.push(lag);
        let pool = Ctx::pool(ctx.main_pool.as_ref())?;
        pg::wait_outbox_empty(pool, Instant::now(), Duration::from_secs(180)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ctx.stop(QUERY).await;
    Ok(())
}

/// A small store and a big one, each behind its own command service: append rate at
/// the same concurrency, and single-account latency on long streams.
async fn cost_growth(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
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
    let long_first = 10_000_000;
    for (offset, &length) in (0u64..).zip(&ctx.plan.long_streams) {
        pg::seed_accounts(&big_pool, long_first + offset, 1, length, false).await?;
    }
    for pool in [&small_pool, &big_pool] {
        for statement in ["VACUUM ANALYZE events", "VACUUM ANALYZE streams"] {
            sqlx::raw_sql(statement).execute(pool).await?;
        }
    }
    results.small_store_events = u64::try_from(pg::event_count(&small_pool).await?)?;
    results.big_store_events = u64::try_from(pg::event_count(&big_pool).await?)?;

    let all = seeded_accounts(1, accounts)?;
    let clients = ctx.plan.append_clients;
    let timing = ctx.plan.timing;
    for repeat in 0..ctx.plan.repeats {
        let order = if repeat % 2 == 0 {
            [SMALL, BIG]
        } else {
            [BIG, SMALL]
        };
        for role in order {
            let addr = ctx.service(role)?.addr();
            let sample =
                load::closed_loop(addr, &all, clients, timing.warmup, timing.measure).await?;
            progress!(
                "{role}: {:.0} cmd/s p50 {:.2} ms p99 {:.2} ms, {} errors",
                sample.throughput,
                sample.p50_ms,
                sample.p99_ms,
                sample.errors
            );
            if role == SMALL {
                results.small_store.push(sample);
            } else {
                results.big_store.push(sample);
            }
            let pool = if role == SMALL {
                &small_pool
            } else {
                &big_pool
            };
            pg::wait_outbox_empty(pool, Instant::now(), Duration::from_secs(120)).await?;
        }
    }

    let lengths = ctx.plan.long_streams.clone();
    let mut samples: Vec<Vec<stats::Sample>> = vec![Vec::new(); lengths.len()];
    let addr = ctx.service(BIG)?.addr();
    let growth = ctx.plan.growth_timing;
    for repeat in 0..ctx.plan.repeats {
        for step in 0..lengths.len() {
            let which = (step + repeat) % lengths.len();
            let account = Accounts::new(vec![pg::account_id(long_first + which as u64)])?;
            let sample =
                load::closed_loop(addr, &account, 1, growth.warmup, growth.measure).await?;
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
    results.long_streams = lengths.into_iter().zip(samples).collect();
    pg::wait_outbox_empty(&big_pool, Instant::now(), Duration::from_secs(120)).await?;
    ctx.stop(BIG).await;
    Ok(())
}

/// The Python peer and the small-store command service at the same client counts.
async fn peer_vs_service(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    let peer = ctx
        .peer
        .clone()
        .context("the peer is not installed (see above)")?;
    let database = ctx.name("peer");
    pg::create_database(&ctx.opts.postgres, &database).await?;
    ctx.pg_databases.push(database.clone());
    let target = pgbench::Target::parse(&ctx.opts.postgres, &database)?;
    let accounts = ctx.plan.peer_accounts.min(ctx.plan.accounts());
    progress!("peer setup: {accounts} accounts");
    peer.setup(&target, accounts).await?;
    let service_accounts = seeded_accounts(1, accounts)?;
    let timing = ctx.plan.timing;
    let small_pool = Ctx::pool(ctx.small_pool.as_ref())?.clone();
    for (index, &clients) in ctx.plan.peer_clients.clone().iter().enumerate() {
        let mut peer_samples = Vec::new();
        let mut service_samples = Vec::new();
        for repeat in 0..ctx.plan.repeats {
            let peer_first = (index + repeat) % 2 == 0;
            for side in 0..2 {
                if (side == 0) == peer_first {
                    let sample = peer.run(&target, clients, timing, accounts).await?;
                    progress!(
                        "peer {clients:>2} clients: {:.0} ops/s p50 {:.2} ms p99 {:.2} ms",
                        sample.throughput,
                        sample.p50_ms,
                        sample.p99_ms
                    );
                    peer_samples.push(sample);
                } else {
                    let addr = ctx.service(SMALL)?.addr();
                    let sample = load::closed_loop(
                        addr,
                        &service_accounts,
                        clients,
                        timing.warmup,
                        timing.measure,
                    )
                    .await?;
                    progress!(
                        "service {clients:>2} clients: {:.0} cmd/s p50 {:.2} ms p99 {:.2} ms",
                        sample.throughput,
                        sample.p50_ms,
                        sample.p99_ms
                    );
                    service_samples.push(sample);
                    pg::wait_outbox_empty(&small_pool, Instant::now(), Duration::from_secs(120))
                        .await?;
                }
            }
        }
        results.peer.push((clients, peer_samples, service_samples));
    }
    ctx.stop(SMALL).await;
    Ok(())
}
