//! The Python peer: the `eventsourcing` library (PyPI, `postgres` extra) on the same
//! Postgres server and workload, in a virtual environment the benchmark makes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tokio::process::Command;

use crate::pgbench::Target;
use crate::stats::{Sample, Timing};

const SCRIPT: &str = include_str!("../../peer/peer.py");
const REQUIREMENT: &str = "eventsourcing[postgres]";

/// A virtual environment with the library, and the peer script.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    python: PathBuf,
    script: PathBuf,
    pub version: String,
}

#[derive(Deserialize)]
struct RunOutput {
    ops: usize,
    errors: usize,
    conflicts: usize,
    latencies_us: Vec<u64>,
}

impl Peer {
    /// Creates (or reuses) the virtual environment under `dir` and installs the library.
    pub(crate) async fn install(dir: &Path) -> anyhow::Result<Self> {
        let venv = dir.join("venv");
        let python = venv.join("bin").join("python");
        if !python.is_file() {
            let interpreter = ["python3", "python"]
                .into_iter()
                .find(|name| {
                    std::process::Command::new(name)
                        .arg("--version")
                        .output()
                        .is_ok()
                })
                .context("Python 3 is needed for the peer benchmark")?;
            run_quiet(Command::new(interpreter).args(["-m", "venv"]).arg(&venv))
                .await
                .context("cannot create the virtual environment (python3-venv)")?;
        }
        run_quiet(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .arg(REQUIREMENT),
        )
        .await
        .with_context(|| format!("pip install {REQUIREMENT} failed"))?;
        let version = String::from_utf8_lossy(
            &Command::new(&python)
                .args(["-c", "import importlib.metadata as m; print(m.version('eventsourcing'), 'with psycopg', m.version('psycopg'))"])
                .output()
                .await?
                .stdout,
        )
        .trim()
        .to_owned();
        let script = dir.join("peer.py");
        std::fs::write(&script, SCRIPT)?;
        Ok(Self {
            python,
            script,
            version,
        })
    }

    fn command(&self, target: &Target) -> Command {
        let mut command = Command::new(&self.python);
        command
            .arg(&self.script)
            .env("POSTGRES_HOST", &target.host)
            .env("POSTGRES_PORT", target.port.to_string())
            .env("POSTGRES_USER", &target.user)
            .env(
                "POSTGRES_PASSWORD",
                target.password.clone().unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Creates `accounts` active accounts in the peer's database.
    pub(crate) async fn setup(&self, target: &Target, accounts: u64) -> anyhow::Result<()> {
        let mut command = self.command(target);
        command.args(["setup", &target.database, &accounts.to_string()]);
        run_quiet(&mut command).await.context("peer setup failed")
    }

    /// `threads` threads each loading an account and appending a credit, in a loop.
    pub(crate) async fn run(
        &self,
        target: &Target,
        threads: usize,
        timing: Timing,
        accounts: u64,
    ) -> anyhow::Result<Sample> {
        let mut command = self.command(target);
        command.args([
            "run",
            &target.database,
            &threads.to_string(),
            &timing.warmup.as_secs_f64().to_string(),
            &timing.measure.as_secs_f64().to_string(),
            &accounts.to_string(),
        ]);
        let output = tokio::time::timeout(
            timing.warmup + timing.measure + Duration::from_secs(60),
            command.output(),
        )
        .await
        .context("the peer did not finish")??;
        if !output.status.success() {
            bail!(
                "the peer failed ({}): {}",
                output.status,
                tail(&String::from_utf8_lossy(&output.stderr))
            );
        }
        let result: RunOutput = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "unreadable peer output: {}",
                tail(&String::from_utf8_lossy(&output.stdout))
            )
        })?;
        let mut sample = Sample::from_latencies(result.latencies_us, timing.measure, result.errors);
        if result.ops != sample.count {
            bail!(
                "the peer reported {} operations but {} latencies",
                result.ops,
                sample.count
            );
        }
        if result.conflicts > 0 {
            sample.note = Some(format!("{} version conflicts retried", result.conflicts));
        }
        Ok(sample)
    }
}

async fn run_quiet(command: &mut Command) -> anyhow::Result<()> {
    let output = command.stdin(Stdio::null()).output().await?;
    if !output.status.success() {
        bail!(
            "{}: {}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr))
        );
    }
    Ok(())
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
