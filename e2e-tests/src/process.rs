//! A service binary run as a child process, configured only through its environment,
//! its output in a log file. Dropping it kills it and reaps it; a watchdog kills it too
//! should the test process itself be killed, so that no service outlives its test.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use test_support::servers::free_port;

use crate::binaries::Binary;
/// Environment variables of a service, exactly those it gets (nothing is inherited).
pub type Env = BTreeMap<String, String>;

/// How long a service may take to become ready (fresh database, migrations).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 3;

/// A running service.
#[derive(Debug)]
pub struct Service {
    pub binary: Binary,
    /// `http://127.0.0.1:<HTTP_PORT>`.
    pub url: String,
    pub env: Env,
    pub log: PathBuf,
    child: Option<Child>,
    watchdog: Option<(Child, ChildStdin)>,
}

impl Service {
    /// Starts `binary` with exactly `env` and waits until `GET /health/ready` answers 200.
    /// If it dies before that because its port was taken meanwhile (ports are picked
    /// free, then handed over), it is started again on another port.
    pub async fn start(binary: Binary, mut env: Env, log: &Path) -> Self {
        for attempt in 1..=START_ATTEMPTS {
            let started = Instant::now();
            let mut service = Self::spawn(binary, &[], env.clone(), log);
            match service.wait_ready(READY_TIMEOUT).await {
                Ok(()) => {
                    eprintln!(
                        "{} ready at {} in {:.1?}",
                        binary.name(),
                        service.url,
                        started.elapsed()
                    );
                    return service;
                }
                Err(Failure::Exited(status))
                    if attempt < START_ATTEMPTS && service.log_mentions_port_clash() =>
                {
                    eprintln!(
                        "{} exited ({status}): its port was taken; retrying on another",
                        binary.name()
                    );
                    env.insert("HTTP_PORT".into(), free_port().to_string());
                }
                Err(failure) => panic!(
                    "{} did not become ready at {}: {failure}\n--- last lines of {} ---\n{}",
                    binary.name(),
                    service.url,
                    service.log.display(),
                    service.log_tail(40)
                ),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Spawns `binary args...` with exactly `env`, appending its output to `log`.
    pub fn spawn(binary: Binary, args: &[&str], env: Env, log: &Path) -> Self {
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", log.display()));
        let errors = output
            .try_clone()
            .unwrap_or_else(|error| panic!("no second handle on {}: {error}", log.display()));
        let child = Command::new(binary.path())
            .args(args)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", binary.path().display()));
        let watchdog = watchdog(child.id());
        let port = env.get("HTTP_PORT").map_or("?", String::as_str);
        Self {
            binary,
            url: format!("http://127.0.0.1:{port}"),
            env,
            log: log.to_path_buf(),
            child: Some(child),
            watchdog,
        }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Failure> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_else(|error| panic!("an HTTP client: {error}"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(Failure::Exited(status));
            }
            if let Ok(response) = client
                .get(format!("{}/health/ready", self.url))
                .send()
                .await
                && response.status() == 200
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Failure::Timeout(timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status, once the process has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits for the process to end on its own, at most `timeout`; kills it past that.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        None
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some((mut watchdog, stdin)) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
            drop(stdin);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of the service's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    fn log_mentions_port_clash(&self) -> bool {
        let text = tail(&self.log, 20);
        text.contains("cannot listen") || text.contains("in use")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
enum Failure {
    Exited(ExitStatus),
    Timeout(Duration),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(status) => write!(f, "it exited ({status})"),
            Self::Timeout(timeout) => write!(f, "no 200 from /health/ready within {timeout:?}"),
        }
    }
}

/// A shell that waits for end-of-file on a pipe from this process and then kills
/// `pid`: the pipe closes when this process ends in any way, even by SIGKILL.
fn watchdog(pid: u32) -> Option<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("read _line; kill -9 {pid} 2>/dev/null"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdin = child.stdin.take()?;
    Some((child, stdin))
}

/// The last `lines` lines of a file (at most its last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = strip_ansi(&String::from_utf8_lossy(&bytes));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Removes terminal colour sequences (`ESC [ ... m`) from human-readable logs.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}
