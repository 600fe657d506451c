//! B1: raw Postgres doing the work of one append, with pgbench. Two scripts:
//! [`minimal_script`], the least any Postgres event store must do (read the stream's
//! version, insert one event under a unique (stream, version), commit), and
//! [`store_script`], the event store's own statements for one credit (B1s).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::pg::{APPEND_GATE_LOCK, sql_account_id};
use crate::stats::{Sample, Timing, to_u64};

/// The minimal event store's one table.
pub(crate) const MINIMAL_SCHEMA: &str = "CREATE TABLE events (
    position bigserial PRIMARY KEY,
    stream_id uuid NOT NULL,
    version bigint NOT NULL,
    payload jsonb NOT NULL,
    UNIQUE (stream_id, version)
)";

/// An event's payload in the minimal store: the credit's data and metadata, about the
/// size of what the service stores.
pub(crate) const MINIMAL_PAYLOAD: &str = r#"{"type": "AccountCredited", "data": {"amount": "1.00", "currency": "MAD", "balance": "1001.00"}, "metadata": {"correlation_id": "0b0e4d7e-4a4e-4b8f-9a57-2f1d3c5b6a79", "causation_id": "019a0000-0000-7000-8000-000000000000", "idempotency_key": null}}"#;

/// B1: per transaction, read the stream's current version, insert the next event,
/// commit. Each client credits its own share of the accounts (`client_id + 1 +
/// clients × k`), so that two clients never race for a version, which pgbench could
/// not retry.
pub(crate) fn minimal_script() -> String {
    let id = sql_account_id("CAST(:n AS bigint)");
    format!(
        "\\set n :client_id + 1 + :clients * random(0, :per_client - 1)
BEGIN;
SELECT version AS v FROM events WHERE stream_id = {id} ORDER BY version DESC LIMIT 1 \\gset
INSERT INTO events (stream_id, version, payload) VALUES ({id}, :v + 1, '{MINIMAL_PAYLOAD}');
COMMIT;
"
    )
}

/// B1s: the store's own statements for one credit, with the outbox row where the store
/// still writes one (`outbox`). The relay's wake-up is left out: the store sends one for
/// every burst of appends, from a connection that does not wait for the WAL flush. The
/// version check is the `UPDATE` of the stream row; it bumps the version it finds (under
/// the row lock) instead of comparing with the version read first, because pgbench
/// cannot retry a conflict and would abort the client.
pub(crate) fn store_script(outbox: bool) -> String {
    let id = sql_account_id("CAST(:n AS bigint)");
    let outbox = if outbox {
        "INSERT INTO outbox (position) VALUES (:p);\n"
    } else {
        ""
    };
    format!(
        "\\set n random(1, :accounts)
SELECT stream_id AS sid, version AS loaded, snapshot FROM streams WHERE stream_id = {id} \\gset
BEGIN;
UPDATE streams SET version = version + 1, snapshot_version = version + 1, snapshot_schema = 1, snapshot = '{{\"status\": \"ACTIVE\", \"balance\": {{\"amount\": \"1001.00\", \"currency\": \"MAD\"}}, \"version\": 3}}'::jsonb, updated_at = now() WHERE stream_id = :sid RETURNING version AS v \\gset
{APPEND_GATE_LOCK};
INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at) VALUES (gen_random_uuid(), :sid, :v, 'AccountCredited', 1, '{{\"amount\": \"1.00\", \"currency\": \"MAD\", \"balance\": \"1001.00\"}}', '{{\"correlation_id\": \"0b0e4d7e-4a4e-4b8f-9a57-2f1d3c5b6a79\", \"causation_id\": \"019a0000-0000-7000-8000-000000000000\", \"idempotency_key\": null}}', now()) RETURNING position AS p \\gset
{outbox}COMMIT;
"
    )
}

/// Connection of pgbench to one database.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl Target {
    /// From `postgres://user[:password]@host:port` and a database name.
    pub(crate) fn parse(server: &str, database: &str) -> anyhow::Result<Self> {
        let rest = server
            .strip_prefix("postgres://")
            .or_else(|| server.strip_prefix("postgresql://"))
            .context("the Postgres URL must start with postgres://")?;
        let rest = rest.trim_end_matches('/');
        let (credentials, host_port) = match rest.rsplit_once('@') {
            Some((credentials, host)) => (credentials, host),
            None => ("postgres", rest),
        };
        let (user, password) = match credentials.split_once(':') {
            Some((user, password)) => (user, Some(password.to_owned())),
            None => (credentials, None),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().context("bad Postgres port")?),
            None => (host_port, 5432),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            password,
            database: database.to_owned(),
        })
    }
}

/// Runs the script with `clients` clients for `warmup + measure` (whole seconds, plus one
/// so that the window is whole even when connecting the clients took part of the run and
/// the window's last transactions end after it) and returns what the transactions
/// started in the window after `warmup` (from the first transaction) did.
pub(crate) async fn run(
    target: &Target,
    script_path: &Path,
    work_dir: &Path,
    accounts: u64,
    clients: usize,
    timing: Timing,
    label: &str,
) -> anyhow::Result<Sample> {
    let Timing { warmup, measure } = timing;
    let seconds = to_u64((warmup + measure).as_secs_f64().ceil()) + 1;
    let prefix = work_dir.join(label);
    let threads = clients.clamp(1, 2);
    let mut command = Command::new("pgbench");
    if let Some(password) = &target.password {
        command.env("PGPASSWORD", password);
    }
    let output = command
        .args(["-n", "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg("-f")
        .arg(script_path)
        .args(["-D", &format!("accounts={accounts}")])
        .args(["-D", &format!("clients={clients}")])
        .args([
            "-D",
            &format!("per_client={}", (accounts / clients.max(1) as u64).max(1)),
        ])
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .args(["-T", &seconds.to_string()])
        .args(["-h", &target.host, "-p", &target.port.to_string()])
        .args(["-U", &target.user])
        .arg(&target.database)
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run pgbench (is it installed? it comes with postgresql-client)")?;
    let logs = log_files(work_dir, label)?;
    if logs.is_empty() {
        bail!(
            "pgbench wrote no log ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let mut transactions = Vec::new();
    for log in &logs {
        let text = std::fs::read_to_string(log)?;
        transactions.extend(text.lines().filter_map(parse_log_line));
        let _ = std::fs::remove_file(log);
    }
    let mut sample = window(&transactions, warmup, measure);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if sample.count == 0 {
        bail!(
            "pgbench completed no transaction ({}): {}",
            output.status,
            stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
        );
    }
    let aborted = stderr.lines().filter(|l| l.contains("aborted")).count();
    if !output.status.success() || aborted > 0 {
        sample.note = Some(format!(
            "pgbench {}: {}",
            output.status,
            stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
        ));
        sample.errors += aborted;
    }
    Ok(sample)
}

/// One transaction from pgbench's per-transaction log: (start µs since epoch, latency µs).
/// Lines: `client_id transaction_no time script_no time_epoch time_us [...]`, where
/// `time` is the latency and `time_epoch.time_us` the completion.
fn parse_log_line(line: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let latency: u64 = fields.get(2)?.parse().ok()?;
    let seconds: u64 = fields.get(4)?.parse().ok()?;
    let micros: u64 = fields.get(5)?.parse().ok()?;
    let done = seconds.checked_mul(1_000_000)?.checked_add(micros)?;
    Some((done.checked_sub(latency)?, latency))
}

fn window(transactions: &[(u64, u64)], warmup: Duration, measure: Duration) -> Sample {
    let Some(first) = transactions.iter().map(|(start, _)| *start).min() else {
        return Sample::default();
    };
    let from = first + to_u64(warmup.as_secs_f64() * 1e6);
    let to = from + to_u64(measure.as_secs_f64() * 1e6);
    let latencies = transactions
        .iter()
        .filter(|(start, _)| (from..to).contains(start))
        .map(|(_, latency)| *latency)
        .collect();
    Sample::from_latencies(latencies, measure, 0)
}

fn log_files(dir: &Path, label: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{label}.")))
        {
            files.push(path);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_give_start_and_latency() {
        assert_eq!(
            parse_log_line("3 17 2500 0 1700000000 500000"),
            Some((1_700_000_000_500_000 - 2500, 2500))
        );
        assert_eq!(parse_log_line("garbage"), None);
    }

    #[test]
    fn only_transactions_started_in_the_window_count() {
        let base = 1_000_000_000;
        let transactions = [
            (base, 100),
            (base + 500_000, 200),
            (base + 1_000_000, 300),
            (base + 1_999_999, 400),
            (base + 2_000_000, 500),
        ];
        let sample = window(
            &transactions,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!(sample.count, 2);
        assert_eq!(sample.p50_ms, 0.3);
    }

    #[test]
    fn targets_parse_from_server_urls() {
        let t = Target::parse("postgres://postgres@127.0.0.1:5432", "db").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str()),
            ("127.0.0.1", 5432, "postgres")
        );
        let t = Target::parse("postgres://me:secret@db.local", "db").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str()),
            ("db.local", 5432, "me")
        );
    }

    #[test]
    fn the_store_script_uses_the_store_statements() {
        assert!(!store_script(false).contains("INSERT INTO outbox"));
        let script = store_script(true);
        for statement in [
            "UPDATE streams",
            "pg_advisory_xact_lock",
            "INSERT INTO events",
            "INSERT INTO outbox",
            "COMMIT",
        ] {
            assert!(script.contains(statement), "{statement}");
        }
    }

    #[test]
    fn the_minimal_script_reads_the_version_then_inserts() {
        let script = minimal_script();
        let read = script.find("SELECT version").unwrap();
        let insert = script.find("INSERT INTO events").unwrap();
        assert!(read < insert && script.contains("COMMIT"));
        assert!(script.starts_with("\\set n :client_id + 1"));
        assert!(!script.contains("pg_advisory") && !script.contains("outbox"));
    }
}
