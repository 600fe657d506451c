//! The services as child processes: started from their release binaries with the
//! benchmark's own databases and broker names, watched for readiness and memory,
//! stopped with SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The variables a service could pick up from the benchmark's own environment.
const SCRUBBED: &[&str] = &[
    "CONFIG_FILE",
    "DATABASE_URL",
    "DATABASE_MAX_CONNECTIONS",
    "AMQP_URL",
    "AMQP_EXCHANGE",
    "AMQP_QUEUE",
    "HTTP_HOST",
    "HTTP_PORT",
    "COMMAND_SERVICE_URL",
    "LOG_FORMAT",
    "RUST_LOG",
];

/// A free TCP port on the loopback interface (free when asked).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A running service process.
#[derive(Debug)]
pub(crate) struct Service {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    child: Child,
    pid: u32,
    /// Highest VmHWM seen, in KiB.
    peak_kib: u64,
}

impl Service {
    /// Starts `binary` with `env` (plus HTTP_HOST/HTTP_PORT/LOG_FORMAT), logging to `log`.
    pub(crate) fn start(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = command(binary, args, env, log)?;
        command.env("HTTP_PORT", port.to_string());
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("the child exited at once")?;
        Ok(Self {
            name: name.to_owned(),
            port,
            log: log.to_owned(),
            child,
            pid,
            peak_kib: 0,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until `GET /health/ready` answers 200.
    pub(crate) async fn wait_ready(
        &mut self,
        client: &reqwest::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let url = format!("{}/health/ready", self.base_url());
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited during start-up ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "{} not ready after {} s; see {}",
                    self.name,
                    timeout.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub(crate) fn peak_kib(&mut self) -> u64 {
        if let Some(now) = vm_hwm_kib(self.pid) {
            self.peak_kib = self.peak_kib.max(now);
        }
        self.peak_kib
    }

    /// Resident memory now (VmRSS), in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        parse_kib(&status, "VmRSS:")
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// User + system CPU time the process used so far.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.pid)
    }

    /// SIGTERM, then waits up to 15 s (SIGKILL after). Returns the peak RSS in KiB.
    pub(crate) async fn stop(mut self) -> u64 {
        let peak = self.peak_kib();
        terminate(self.pid).await;
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        peak
    }
}

/// Runs a one-shot command of a service binary (e.g. `query-service rebuild`) to its
/// end; returns how long it took and its peak RSS in KiB (sampled every 20 ms).
pub(crate) async fn run_to_end(
    binary: &Path,
    args: &[&str],
    env: &[(&str, String)],
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut child = command(binary, args, env, log)?
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id().context("the child exited at once")?;
    let mut peak = 0;
    loop {
        if let Some(now) = vm_hwm_kib(pid) {
            peak = peak.max(now);
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!(
                    "{} {} failed ({status}); see {}",
                    binary.display(),
                    args.join(" "),
                    log.display()
                );
            }
            return Ok((started.elapsed(), peak));
        }
        if started.elapsed() > timeout {
            let _ = child.kill().await;
            bail!(
                "{} {} took over {} s",
                binary.display(),
                args.join(" "),
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn command(
    binary: &Path,
    args: &[&str],
    env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<Command> {
    if !binary.is_file() {
        bail!(
            "{} is missing: build it first (bench/run.sh does)",
            binary.display()
        );
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(binary);
    command.args(args);
    for name in SCRUBBED {
        command.env_remove(name);
    }
    command
        .env("HTTP_HOST", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    for (name, value) in env {
        command.env(name, value);
    }
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    Ok(command)
}

async fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

/// VmHWM (peak resident set) of a process, in KiB.
pub(crate) fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    parse_kib(status, "VmHWM:")
}

fn parse_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// User + system CPU time of a process (from /proc/<pid>/stat, at 100 ticks a second).
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| Duration::from_millis(ticks * 10))
}

/// User + system CPU time of every process whose command name (`comm`) is `name`
/// (the servers run as several processes: Postgres's backends, for instance).
pub(crate) fn cpu_time_of_named(name: &str) -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    let ticks: u64 = entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            (parse_comm(&stat)? == name)
                .then(|| parse_cpu_ticks(&stat))
                .flatten()
        })
        .sum();
    Duration::from_millis(ticks * 10)
}

fn parse_comm(stat: &str) -> Option<&str> {
    let start = stat.find('(')? + 1;
    let end = stat.rfind(')')?;
    stat.get(start..end)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peak_resident_set() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(12345));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        assert_eq!(parse_kib(status, "VmRSS:"), Some(1000));
        assert!(vm_hwm_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn reads_the_command_name_and_sums_the_cpu_of_processes_by_name() {
        assert_eq!(
            parse_comm("42 (my (odd) name) S 1 42 42 0"),
            Some("my (odd) name")
        );
        assert_eq!(parse_comm("42 no name"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let name = parse_comm(&own).unwrap().to_owned();
        let busy = std::time::Instant::now();
        while busy.elapsed() < Duration::from_millis(30) {}
        assert!(cpu_time_of_named(&name) >= Duration::from_millis(10));
        assert_eq!(cpu_time_of_named("no such process"), Duration::ZERO);
    }

    #[test]
    fn reads_cpu_ticks() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert!(cpu_time(std::process::id()).is_some());
    }
}
