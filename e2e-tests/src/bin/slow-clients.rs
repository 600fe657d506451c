//! Abusive clients probe: what a replica costs while thousands of clients hold
//! connections open with half a request header. Starts a stack like the tests do, then
//! measures the command service's RSS and the latency of a normal credit (200 in a row)
//! before, while `CONNECTIONS` (default 10,000) such connections are held, and after
//! the service's header timeout has closed them.
//!
//! ```sh
//! cargo run --release -p e2e-tests --bin slow-clients -- [CONNECTIONS]
//! ```
//!
//! Prints figures only: no thresholds, these machines are noisy.

#![expect(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a probe run by hand: it prints its figures and stops at the first failure"
)]

use std::time::{Duration, Instant};

use e2e_tests::Stack;
use serde_json::json;
use test_support::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Credits timed per phase.
const REQUESTS: usize = 200;
/// The service's default header timeout (`HTTP_HEADER_TIMEOUT_SECS`) and a margin.
const HEADER_TIMEOUT: Duration = Duration::from_secs(12);

#[tokio::main]
async fn main() {
    let connections: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(10_000);
    let stack = Stack::start().await;
    let service = stack.command_service();
    let pid = service.pid().expect("the command service runs");
    let address = service.url.trim_start_matches("http://").to_owned();
    let id = stack.active_account("1000.00", "MAD").await.id;
    let api = stack.command().clone();

    let (quiet_p50, quiet_p99) = credit_latencies(&api, &id).await;
    let quiet_rss = rss_mib(pid);

    let started = Instant::now();
    let mut held = Vec::with_capacity(connections);
    let mut refused = 0;
    for _ in 0..connections {
        match TcpStream::connect(&address).await {
            Ok(mut stream) => {
                if stream
                    .write_all(b"POST /accounts HTTP/1.1\r\nHost: bank\r\nContent-Ty")
                    .await
                    .is_ok()
                {
                    held.push(stream);
                }
            }
            Err(_) => refused += 1,
        }
    }
    let opened_in = started.elapsed();
    let (held_p50, held_p99) = credit_latencies(&api, &id).await;
    let held_rss = rss_mib(pid);

    tokio::time::sleep(HEADER_TIMEOUT.saturating_sub(started.elapsed())).await;
    let mut closed = 0;
    for stream in &mut held {
        let mut byte = [0_u8; 1];
        if matches!(
            tokio::time::timeout(Duration::from_millis(5), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        ) {
            closed += 1;
        }
    }
    let (after_p50, after_p99) = credit_latencies(&api, &id).await;
    let after_rss = rss_mib(pid);

    println!(
        "slow clients: {} held ({refused} refused at connect), opened in {opened_in:.1?}",
        held.len()
    );
    println!("| phase | command-service RSS (MiB) | credit p50 | credit p99 |");
    println!("|---|---:|---:|---:|");
    println!("| quiet | {quiet_rss:.1} | {quiet_p50:.2?} | {quiet_p99:.2?} |");
    println!(
        "| {} half-header connections held | {held_rss:.1} | {held_p50:.2?} | {held_p99:.2?} |",
        held.len()
    );
    println!(
        "| {HEADER_TIMEOUT:?} later ({closed} closed by the service) | {after_rss:.1} | {after_p50:.2?} | {after_p99:.2?} |"
    );
}

/// p50 and p99 of `REQUESTS` credits in a row.
async fn credit_latencies(api: &Api, id: &str) -> (Duration, Duration) {
    let mut latencies = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        api.post(
            &format!("/accounts/{id}/credit"),
            &json!({"amount": "0.01"}),
        )
        .await
        .expect(200, "credit");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    (latencies[REQUESTS / 2], latencies[REQUESTS * 99 / 100])
}

/// Resident set size of process `pid`, from `/proc`.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib / 1024.0
}
