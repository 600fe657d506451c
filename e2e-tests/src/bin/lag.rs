//! Projection lag probe: how long after the command service acknowledges a command the
//! query service shows it. Starts a stack like the tests do (local servers, own
//! databases), then `CLIENTS` clients (default 8) each credit their own account in a
//! loop for `SECONDS` seconds (default 5), and time, per command, from the
//! acknowledgement to the read that shows it:
//!
//! - `wait`: `GET /accounts/{id}?min_version=<acknowledged>&wait_ms=10000` (the way a
//!   client reads its own write; the service answers when the projection gets there);
//! - `poll`: `GET /accounts/{id}` again and again until the version shows.
//!
//! ```sh
//! cargo run --release -p e2e-tests --bin lag -- [CLIENTS] [SECONDS]
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

#[derive(Debug, Clone, Copy)]
enum Mode {
    Wait,
    Poll,
}

#[derive(Debug, Default)]
struct Samples {
    lags: Vec<Duration>,
    acks: Vec<Duration>,
}

async fn client(command: Api, query: Api, id: String, mode: Mode, until: Instant) -> Samples {
    let mut samples = Samples::default();
    while Instant::now() < until {
        let sent = Instant::now();
        let ack = command
            .post(
                &format!("/accounts/{id}/credit"),
                &json!({"amount": "1.00"}),
            )
            .await
            .expect(200, "credit");
        let acknowledged = Instant::now();
        let version = ack["version"].as_u64().expect("a version");
        match mode {
            Mode::Wait => {
                query
                    .get(&format!(
                        "/accounts/{id}?min_version={version}&wait_ms=10000"
                    ))
                    .await
                    .expect(200, "read at the acknowledged version");
            }
            Mode::Poll => loop {
                let account = query
                    .get(&format!("/accounts/{id}"))
                    .await
                    .expect(200, "read");
                if account["version"].as_u64() >= Some(version) {
                    break;
                }
            },
        }
        samples.lags.push(acknowledged.elapsed());
        samples.acks.push(acknowledged - sent);
    }
    samples
}

/// Nearest-rank percentile of sorted samples (`percent` in 1..=100).
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (percent * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

async fn measure(stack: &Stack, ids: &[String], mode: Mode, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let runs: Vec<_> = ids
        .iter()
        .map(|id| {
            tokio::spawn(client(
                stack.command().clone(),
                stack.query().clone(),
                id.clone(),
                mode,
                until,
            ))
        })
        .collect();
    let mut lags = Vec::new();
    let mut acks = Vec::new();
    for run in runs {
        let samples = run.await.expect("a client");
        lags.extend(samples.lags);
        acks.extend(samples.acks);
    }
    lags.sort();
    acks.sort();
    println!(
        "{mode:?}: {} commands in {seconds} s ({:.0}/s) from {} clients",
        lags.len(),
        lags.len() as f64 / seconds as f64,
        ids.len()
    );
    println!(
        "  projection lag (ack -> visible): p50 {}  p90 {}  p99 {}  max {}",
        millis(percentile(&lags, 50)),
        millis(percentile(&lags, 90)),
        millis(percentile(&lags, 99)),
        millis(percentile(&lags, 100)),
    );
    println!(
        "  command latency (send -> ack):    p50 {}  p90 {}  p99 {}  max {}",
        millis(percentile(&acks, 50)),
        millis(percentile(&acks, 90)),
        millis(percentile(&acks, 99)),
        millis(percentile(&acks, 100)),
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().map_or(8, |a| a.parse().expect("CLIENTS"));
    let seconds: u64 = args.next().map_or(5, |a| a.parse().expect("SECONDS"));
    let stack = Stack::start().await;
    let mut ids = Vec::new();
    for _ in 0..clients {
        let account = stack.active_account("0.00", "MAD").await;
        stack.read(&account.id, account.version).await;
        ids.push(account.id);
    }
    for mode in [Mode::Wait, Mode::Poll] {
        measure(&stack, &ids, mode, seconds).await;
    }
}
