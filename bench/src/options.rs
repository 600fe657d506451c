//! The command line and the servers' addresses from the environment.

use std::path::PathBuf;

use anyhow::{Context, bail};

pub(crate) const USAGE: &str = "usage: bench [--quick] [--only PHASE]... [--out FILE] [--bin-dir DIR] [--keep]

Measures the command and query services against raw Postgres (pgbench), RabbitMQ and
MariaDB baselines and the Python eventsourcing library, in one interleaved run, and
writes a Markdown report. Normally run through bench/run.sh, which builds the release
binaries first.

  --quick        smoke run of about a minute (small data, short runs)
  --out FILE     report path (default docs/benchmarks.md; target/bench/benchmarks-quick.md with --quick)
  --bin-dir DIR  where the service binaries are (default target/release)
  --keep         keep the databases, queues and exchanges it made
  --only PHASE   run only the phases whose name contains PHASE (repeatable; e.g.
                 `--only growth --only time`); the others are listed as not run

Servers (environment): BENCH_POSTGRES_URL (postgres://postgres@127.0.0.1:5432),
BENCH_MYSQL_URL (mysql://root@127.0.0.1:3306), BENCH_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f)";

/// What the command line and the environment asked for.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) out: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) bin_dir: PathBuf,
    pub(crate) keep: bool,
    /// Runs only the phases whose name contains one of these (all when empty).
    pub(crate) only: Vec<String>,
    pub(crate) postgres: String,
    pub(crate) mysql: String,
    pub(crate) amqp: String,
    pub(crate) invocation: String,
}

impl Options {
    /// `None` when only the usage was asked for.
    pub(crate) fn parse() -> anyhow::Result<Option<Self>> {
        let root = std::env::current_dir()?;
        let mut quick = false;
        let mut keep = false;
        let mut out = None;
        let mut bin_dir = None;
        let mut only = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--keep" => keep = true,
                "--only" => only.push(args.next().context("--only needs a phase name")?),
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
            only,
            postgres: env("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
            mysql: env("BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306"),
            amqp: env("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            invocation,
        }))
    }
}
