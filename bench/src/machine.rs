//! The machine and servers a run measured, for the report's first table.

use std::path::Path;
use std::time::Duration;

use crate::options::Options;
use crate::{mariadb, pg};

/// The machine and servers the run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) memory: String,
    pub(crate) kernel: String,
    pub(crate) postgres: String,
    pub(crate) postgres_settings: String,
    pub(crate) mariadb: String,
    /// The server's own `innodb_flush_log_at_trx_commit` (the run's is
    /// [`mariadb::DEPLOYED_LOG_FLUSH`]).
    pub(crate) mariadb_log_flush: Option<u8>,
    pub(crate) rabbitmq: String,
    pub(crate) load_start: String,
    pub(crate) load_end: String,
    pub(crate) commit: String,
}

/// Describes the machine and asks each server its version.
pub(crate) async fn describe_machine(opts: &Options) -> Machine {
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
        mariadb_log_flush: None,
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

/// The 1-minute load average.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}
