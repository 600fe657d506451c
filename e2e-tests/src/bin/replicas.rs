//! Replica probe: the query service's queue designs, with one and with two replicas,
//! under the same load on this machine. For each design (`shared classic queue`: one
//! queue all replicas compete for, `AMQP_PARTITIONS=0`, today's; `8 quorum partitions`:
//! the default, a single active consumer each; `8 classic partitions`: the same on
//! classic queues, to tell partitioning from the quorum queues' cost) and each replica
//! count (1, 2) it starts a stack
//! like the tests do, opens `ACCOUNTS` accounts (default 50), makes the replicas
//! subscribe together (the first query service is SIGKILLed, then the replicas start at
//! once), and:
//!
//! - **live**: `CLIENTS` clients (default 16) credit random accounts for `SECONDS`
//!   seconds (default 15) while a probe credits its own account and times, from the
//!   acknowledgement, until a replica shows it (`min_version` read): the lag;
//! - **backlog**: the replicas are SIGKILLed, the clients credit for `SECONDS / 2`
//!   seconds into the queues, then the replicas start together again and work the
//!   backlog off: the apply rate is the backlog's events over the time until every
//!   account is projected to its last acknowledged version.
//!
//! For both it prints the gaps filled on the broker's path (`projection_gap_fills_total`,
//! with the broker healthy: an event that overtook an earlier one of its account), the
//! events fetched to fill them (`projection_backfilled_events_total`), and the events
//! each replica applied from the broker.
//!
//! ```sh
//! cargo run -p e2e-tests --bin replicas -- [CLIENTS] [ACCOUNTS] [SECONDS] [ONLY]
//! ```
//!
//! `ONLY` keeps the runs whose `<design> x<replicas>` contains it (`partitions x2`).
//! The feed follower is off (`FEED_FOLLOW_ENABLED=false`): only the broker's path is
//! measured. Prints figures only: no thresholds, these machines are noisy.

#![expect(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a probe run by hand: it prints its figures and stops at the first failure"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::stack::metric;
use e2e_tests::{Stack, StackConfig};
use futures::StreamExt;
use rand::Rng;
use serde_json::json;
use test_support::Api;

/// The last acknowledged version of each account.
type Versions = Arc<Mutex<HashMap<String, u64>>>;

#[derive(Debug, Default)]
struct Broker {
    gap_fills: f64,
    backfilled: f64,
    applied: Vec<f64>,
    /// Messages whose projection failed and was tried again.
    retried: f64,
    /// Batches that fell back to stream-by-stream transactions.
    fallbacks: f64,
}

impl Broker {
    async fn read(replicas: &[Api]) -> Self {
        let mut figures = Self::default();
        for api in replicas {
            let broker = ["path=\"broker\""];
            figures.gap_fills += metric(api, "projection_gap_fills_total", &broker).await;
            figures.backfilled += metric(api, "projection_backfilled_events_total", &broker).await;
            figures.retried += metric(api, "projection_retries_total", &[]).await;
            figures.fallbacks += metric(api, "projection_batch_fallbacks_total", &broker).await;
            figures.applied.push(
                metric(
                    api,
                    "projection_events_total",
                    &["path=\"broker\"", "outcome=\"applied\""],
                )
                .await,
            );
        }
        figures
    }

    fn describe(&self, events: usize) -> String {
        // (`+ 0.0`: an empty sum is -0.)
        let applied: Vec<String> = self
            .applied
            .iter()
            .map(|a| format!("{:.0}", a + 0.0))
            .collect();
        format!(
            "gap fills {:.0}, events backfilled {:.0} ({:.1}% of {events}), applied per replica [{}], messages retried {:.0}, batch fallbacks {:.0}",
            self.gap_fills,
            self.backfilled,
            100.0 * self.backfilled / events.max(1) as f64,
            applied.join(", "),
            self.retried,
            self.fallbacks
        )
    }
}

/// Clients crediting random accounts until `until`; returns the commands acknowledged.
async fn load(
    command: &Api,
    ids: &[String],
    clients: usize,
    until: Instant,
    versions: &Versions,
) -> usize {
    let runs: Vec<_> = (0..clients)
        .map(|_| {
            let command = command.clone();
            let ids = ids.to_vec();
            let versions = Arc::clone(versions);
            tokio::spawn(async move {
                let mut done = 0;
                while Instant::now() < until {
                    let id = &ids[rand::rng().random_range(0..ids.len())];
                    let ack = command
                        .post(
                            &format!("/accounts/{id}/credit"),
                            &json!({"amount": "1.00"}),
                        )
                        .await
                        .expect(200, "credit");
                    let version = ack["version"].as_u64().expect("a version");
                    let mut versions = versions.lock().expect("versions");
                    let last = versions.entry(id.clone()).or_default();
                    *last = (*last).max(version);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for run in runs {
        total += run.await.expect("a client");
    }
    total
}

/// Credits its own account in a loop until `until`, timing each until the query service
/// shows it.
async fn probe(command: Api, query: Api, id: String, until: Instant) -> Vec<Duration> {
    let mut lags = Vec::new();
    while Instant::now() < until {
        let ack = command
            .post(
                &format!("/accounts/{id}/credit"),
                &json!({"amount": "1.00"}),
            )
            .await
            .expect(200, "probe credit");
        let acknowledged = Instant::now();
        let version = ack["version"].as_u64().expect("a version");
        query
            .get(&format!(
                "/accounts/{id}?min_version={version}&wait_ms=10000"
            ))
            .await
            .expect(200, "probe read");
        lags.push(acknowledged.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lags
}

/// Waits until every account shows its last acknowledged version; returns when.
async fn caught_up(stack: &Stack, versions: &Versions) -> Instant {
    let wanted: Vec<(String, u64)> = versions
        .lock()
        .expect("versions")
        .iter()
        .map(|(id, version)| (id.clone(), *version))
        .collect();
    futures::stream::iter(wanted)
        .map(|(id, version)| async move { stack.read(&id, version).await })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    Instant::now()
}

/// Starts `count` replicas together and makes the first the stack's query service;
/// returns the others (kept running) and every replica's client.
async fn subscribe_together(
    stack: &mut Stack,
    count: usize,
) -> (Vec<e2e_tests::process::Service>, Vec<Api>) {
    stack.kill_query();
    let started = futures::future::join_all((0..count).map(|_| stack.query_replica())).await;
    let mut services = Vec::new();
    let mut apis = Vec::new();
    for (service, api) in started {
        services.push(service);
        apis.push(api);
    }
    let first = services.remove(0);
    stack.adopt_query(first);
    (services, apis)
}

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

async fn measure(
    (design, partitions, queue_type): (&str, &str, &str),
    replicas: usize,
    clients: usize,
    accounts: usize,
    seconds: u64,
) {
    let mut stack = StackConfig::default()
        .query_setting("AMQP_PARTITIONS", partitions)
        .query_setting("AMQP_QUEUE_TYPE", queue_type)
        // Only the broker's path is measured: the feed follower would apply the same
        // events beside it.
        .query_setting("FEED_FOLLOW_ENABLED", "false")
        .start()
        .await;
    // Events published before the query service declared its queues would reach no
    // queue (and the feed follower, which would catch them, is off).
    let broker = test_support::Broker::connect().await;
    stack.wait_for_consumer(&broker).await;
    broker.close().await;
    let created: Vec<String> = futures::stream::iter(0..accounts)
        .map(|_| async { stack.active_account("0.00", "MAD").await.id })
        .buffer_unordered(8)
        .collect()
        .await;
    let probe_account = stack.active_account("0.00", "MAD").await;
    stack.read(&probe_account.id, probe_account.version).await;
    let versions: Versions = Arc::default();
    for id in &created {
        versions.lock().expect("versions").insert(id.clone(), 2);
    }
    caught_up(&stack, &versions).await;
    println!("{design}, {replicas} replica(s):");

    // Live: the replicas consume while the clients write.
    let (others, apis) = subscribe_together(&mut stack, replicas).await;
    let command = stack.customer_command().clone();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let probing = tokio::spawn(probe(
        command.clone(),
        stack.customer_query().clone(),
        probe_account.id.clone(),
        until,
    ));
    let commands = load(&command, &created, clients, until, &versions).await;
    let mut lags = probing.await.expect("the probe");
    let elapsed = started.elapsed();
    let done = caught_up(&stack, &versions).await;
    lags.sort();
    let live = Broker::read(&apis).await;
    println!(
        "  live: {commands} credits in {:.1} s ({:.0}/s) from {clients} clients; caught up {} after the load; lag p50 {} p90 {} p99 {} max {} ({} probes)",
        elapsed.as_secs_f64(),
        commands as f64 / elapsed.as_secs_f64(),
        millis(done.saturating_duration_since(until)),
        millis(percentile(&lags, 50)),
        millis(percentile(&lags, 90)),
        millis(percentile(&lags, 99)),
        millis(percentile(&lags, 100)),
        lags.len(),
    );
    println!("        {}", live.describe(commands));

    // Backlog: the replicas are gone while the clients write; then they work it off.
    stack.kill_query();
    drop(others);
    let until = Instant::now() + Duration::from_secs(seconds.div_ceil(2));
    let backlog = load(&command, &created, clients, until, &versions).await;
    let restarted = Instant::now();
    let (others, apis) = subscribe_together(&mut stack, replicas).await;
    let subscribed = restarted.elapsed();
    let done = caught_up(&stack, &versions).await;
    let drain = done - restarted;
    let drained = Broker::read(&apis).await;
    println!(
        "  backlog: {backlog} credits worked off in {:.2} s from the replicas' start ({:.2} s of it starting): {:.0} events/s",
        drain.as_secs_f64(),
        subscribed.as_secs_f64(),
        backlog as f64 / drain.as_secs_f64(),
    );
    println!("        {}", drained.describe(backlog));
    drop(others);
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().map_or(16, |a| a.parse().expect("CLIENTS"));
    let accounts: usize = args.next().map_or(50, |a| a.parse().expect("ACCOUNTS"));
    let seconds: u64 = args.next().map_or(15, |a| a.parse().expect("SECONDS"));
    // An optional filter: only the runs whose "<design> x<replicas>" contains it.
    let only = args.next().unwrap_or_default();
    println!(
        "{clients} clients crediting {accounts} accounts, {seconds} s live then {} s into a backlog, per design and replica count",
        seconds.div_ceil(2)
    );
    // Today's design (one classic queue the replicas compete for) against the default.
    for design in [
        ("shared classic queue", "0", "classic"),
        ("8 quorum partitions", "8", "quorum"),
        // The partitions without the quorum queues' cost, to tell the two apart.
        ("8 classic partitions", "8", "classic"),
    ] {
        for replicas in [1, 2] {
            if !format!("{} x{replicas}", design.0).contains(&only) {
                continue;
            }
            measure(design, replicas, clients, accounts, seconds).await;
        }
    }
}
