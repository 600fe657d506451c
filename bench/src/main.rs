//! `bench`: one run that measures the platform against raw baselines, each pair
//! interleaved so that a drifting machine hurts both sides alike, and writes the figures
//! to `docs/benchmarks.md`. Run it with `bench/run.sh [--quick]`, which builds the
//! release binaries first.
//!
//! Layout:
//! - `options`, `plan`: what to run (command line, sizes and durations);
//! - `context`: the run's resources (service processes, databases, broker objects);
//! - `phases`: one module per measured pair, each with its figures and its part of the
//!   report (B1, B2, B3, lag, cost growth, peak RSS, the peer), run in the order of
//!   `phases::Phase::ALL`;
//! - `report`: the Markdown report from those figures, `machine`: its first table;
//! - drivers the phases use: `pg`, `pgbench`, `mariadb`, `broker`, `load` (HTTP load
//!   generators), `procs` (service processes), `prom` (the services' `/metrics`),
//!   `peers` (the peer libraries), `stats`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Time since the run started.
fn elapsed() -> Duration {
    STARTED.get_or_init(Instant::now).elapsed()
}

/// A progress line on stderr, stamped with the run's elapsed time.
macro_rules! progress {
    ($($arg:tt)*) => {
        eprintln!("[bench {:>6.1}s] {}", crate::elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

mod broker;
mod context;
mod load;
mod machine;
mod mariadb;
mod options;
mod peers;
mod pg;
mod pgbench;
mod phases;
mod plan;
mod procs;
mod prom;
mod report;
mod stats;
mod tokens;

use crate::context::Ctx;
use crate::options::Options;
use crate::plan::Plan;
use crate::report::Results;

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
        machine: machine::describe_machine(&opts).await,
        ..Results::default()
    };
    results.growth.append_clients = plan.append_clients;
    let mysql = opts.mysql.clone();
    let server_log_flush = mariadb::log_flush(&mysql).await?;
    mariadb::set_log_flush(&mysql, mariadb::DEPLOYED_LOG_FLUSH).await?;
    results.machine.mariadb_log_flush = Some(server_log_flush);
    let mut ctx = Ctx::new(opts, plan, run, dir)?;
    let phases = Box::pin(phases::run_all(&mut ctx, &mut results));
    tokio::select! {
        () = phases => {}
        _ = tokio::signal::ctrl_c() => {
            results.failures.push("interrupted (Ctrl-C)".to_owned());
        }
    }
    progress!("cleaning up");
    ctx.cleanup().await;
    if let Err(error) = mariadb::set_log_flush(&mysql, server_log_flush).await {
        results.failures.push(format!(
            "MariaDB's innodb_flush_log_at_trx_commit not set back to {server_log_flush}: {error:#}"
        ));
    }
    results.rss = ctx.peaks.figures();
    results.machine.load_end = machine::load_average();
    results.took = elapsed();
    write_report(&results, &ctx)?;
    for failure in &results.failures {
        progress!("FAILED: {failure}");
    }
    Ok(results.failures.is_empty())
}

fn write_report(results: &Results, ctx: &Ctx) -> anyhow::Result<()> {
    let out = &ctx.opts.out;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, results.render())
        .with_context(|| format!("cannot write {}", out.display()))?;
    progress!(
        "done in {:.0} s; report: {}",
        results.took.as_secs_f64(),
        out.display()
    );
    Ok(())
}
