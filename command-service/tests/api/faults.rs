//! Faults injected so that only the test's own stack feels them: a TCP proxy in front
//! of the broker, and command-service processes of the test's own.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use test_support::TcpProxy;
use test_support::servers::{Server, amqp_url};

use crate::helpers::{
    Process, TestApp, admin_client, bind_queue, fresh_database_url, fresh_exchange, spawn_app_on,
    spawn_app_with, spawn_app_with_settings, test_settings,
};

#[tokio::test]
async fn events_committed_while_the_broker_is_unreachable_are_all_published_once_it_is_back() {
    let proxy = TcpProxy::to(Server::RabbitMq).await;
    let app = spawn_app_with(&proxy.url()).await;
    let mut queue = bind_queue(&app.exchange).await;
    let id = app.active_account("10.00", "EUR").await;
    assert_eq!(queue.receive(2, Duration::from_secs(10)).await.len(), 2);

    proxy.cut();
    wait_for_broker(&app, "down").await;
    for _ in 0..10 {
        let (status, _) = app
            .post(&format!("/accounts/{id}/credit"), json!({"amount": "1.00"}))
            .await;
        assert_eq!(status, 200, "commands are accepted during a broker outage");
    }
    let other = app.active_account("5.00", "EUR").await;
    assert!(
        queue
            .receive(1, Duration::from_millis(500))
            .await
            .is_empty()
    );

    proxy.restore();
    wait_for_broker(&app, "up").await;
    let received = queue.receive(12, Duration::from_secs(30)).await;
    let versions: Vec<(String, u64)> = received
        .iter()
        .map(|m| {
            (
                m.body["account_id"].as_str().unwrap().to_owned(),
                m.body["version"].as_u64().unwrap(),
            )
        })
        .collect();
    let credits: Vec<u64> = versions
        .iter()
        .filter(|(account, _)| *account == id)
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(credits, (3..=12).collect::<Vec<_>>());
    assert_eq!(
        versions
            .iter()
            .filter(|(account, _)| *account == other)
            .count(),
        2
    );
}

#[tokio::test]
async fn a_broker_that_stalls_is_reported_down_and_left_and_nothing_is_lost() {
    // Given a relay publishing through a proxy, with a short broker timeout
    let proxy = TcpProxy::to(Server::RabbitMq).await;
    let mut settings = test_settings(&fresh_database_url(), &fresh_exchange(), &proxy.url());
    settings.relay_broker_timeout_ms = 500;
    let app = spawn_app_with_settings(settings).await;
    let mut queue = bind_queue(&app.exchange).await;
    let id = app.active_account("10.00", "EUR").await;
    assert_eq!(queue.receive(2, Duration::from_secs(10)).await.len(), 2);

    // When the broker stops answering without hanging up, and commands go on
    proxy.stall();
    for _ in 0..3 {
        let (status, _) = app
            .post(&format!("/accounts/{id}/credit"), json!({"amount": "1.00"}))
            .await;
        assert_eq!(status, 200, "commands are accepted while the broker stalls");
    }

    // Then readiness reports the broker down (the service stays ready), and once the
    // broker answers again every event is published
    wait_for_broker(&app, "down").await;
    proxy.restore();
    wait_for_broker(&app, "up").await;
    let versions: Vec<u64> = queue
        .receive(3, Duration::from_secs(30))
        .await
        .iter()
        .filter_map(|m| m.body["version"].as_u64())
        .collect();
    assert!(
        [3, 4, 5].iter().all(|v| versions.contains(v)),
        "every credit was published: {versions:?}"
    );
}

/// Waits until readiness reports the broker in `state`; the service stays ready throughout.
async fn wait_for_broker(app: &TestApp, state: &str) {
    for _ in 0..100 {
        let (status, ready) = app.get("/health/ready").await;
        assert_eq!(status, 200, "a broker outage alone keeps the service ready");
        if ready["broker"] == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("readiness never reported the broker {state}");
}

#[tokio::test]
async fn replicas_racing_on_one_account_resolve_to_success_or_insufficient_funds() {
    let database_url = fresh_database_url();
    let exchange = fresh_exchange();
    let replicas = [
        spawn_app_on(&database_url, &exchange, &amqp_url()).await,
        spawn_app_on(&database_url, &exchange, &amqp_url()).await,
    ];
    let id = replicas[0].active_account("37.00", "MAD").await;
    let path = format!("/accounts/{id}/debit");
    let debits = (0..100).map(|n| replicas[n % 2].post(&path, json!({"amount": "1.00"})));
    let results = futures::future::join_all(debits).await;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (status, body) in &results {
        *outcomes
            .entry(format!(
                "{status} {}",
                body["code"].as_str().unwrap_or("ok")
            ))
            .or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("200 ok".to_owned(), 37),
            ("422 insufficient_funds".to_owned(), 63)
        ])
    );
}

#[tokio::test]
async fn an_account_a_replica_keeps_in_memory_is_decided_afresh_once_another_replica_wrote_it() {
    // Given two replicas on one store, and an account the first has just debited
    let database_url = fresh_database_url();
    let exchange = fresh_exchange();
    let first = spawn_app_on(&database_url, &exchange, &amqp_url()).await;
    let second = spawn_app_on(&database_url, &exchange, &amqp_url()).await;
    let id = first.active_account("10.00", "MAD").await;
    let debit = format!("/accounts/{id}/debit");
    let (status, body) = first.post(&debit, json!({"amount": "6.00"})).await;
    assert_eq!((status, body["balance"].as_str()), (200, Some("4.00")));

    // When the second replica debits what is left
    let (status, body) = second.post(&debit, json!({"amount": "4.00"})).await;
    assert_eq!((status, body["balance"].as_str()), (200, Some("0.00")));

    // Then the first, which last left the account at 4.00, decides on the balance of 0.00
    first
        .expect_problem(&debit, json!({"amount": "3.00"}), 422, "insufficient_funds")
        .await;
    let (status, body) = first
        .post(&format!("/accounts/{id}/credit"), json!({"amount": "1.00"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["balance"], "1.00");
    assert_eq!(body["version"], 5);
}

#[tokio::test]
async fn a_refusal_is_never_decided_on_what_a_replica_keeps_in_memory() {
    // Given two replicas on one store, and an account the first has just emptied
    let database_url = fresh_database_url();
    let exchange = fresh_exchange();
    let first = spawn_app_on(&database_url, &exchange, &amqp_url()).await;
    let second = spawn_app_on(&database_url, &exchange, &amqp_url()).await;
    let id = first.active_account("5.00", "MAD").await;
    let debit = format!("/accounts/{id}/debit");
    let (status, body) = first.post(&debit, json!({"amount": "5.00"})).await;
    assert_eq!((status, body["balance"].as_str()), (200, Some("0.00")));

    // When the second replica credits it
    let (status, body) = second
        .post(&format!("/accounts/{id}/credit"), json!({"amount": "8.00"}))
        .await;
    assert_eq!((status, body["balance"].as_str()), (200, Some("8.00")));

    // Then a debit on the first, which last left the account at 0.00, is not refused
    let (status, body) = first.post(&debit, json!({"amount": "3.00"})).await;
    assert_eq!(
        (status, body["balance"].as_str()),
        (200, Some("5.00")),
        "{body}"
    );
    assert_eq!(body["version"], 5);
}

/// Creates and activates an account on a command-service process; returns its id.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn active_account_on(client: &reqwest::Client, address: &str) -> String {
    let response = client
        .post(format!("{address}/accounts"))
        .json(&json!({"initial_balance": "0", "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let response = client
        .post(format!("{address}/accounts/{id}/activate"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    id
}

const LOAD_CLIENTS: usize = 16;
const CREDITS_PER_CLIENT: usize = 200;
const LOAD: usize = LOAD_CLIENTS * CREDITS_PER_CLIENT;

#[tokio::test]
async fn a_command_service_killed_mid_load_loses_no_acknowledged_command() {
    let database_url = fresh_database_url();
    let exchange = fresh_exchange();
    let mut queue = bind_queue(&exchange).await;
    let mut first = Process::start(&database_url, &exchange).await;
    let client = admin_client();
    let id = active_account_on(&client, &first.address).await;

    let credit_url = format!("{}/accounts/{id}/credit", first.address);
    let acknowledged_count = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..LOAD_CLIENTS)
        .map(|_| {
            let client = client.clone();
            let url = credit_url.clone();
            let acknowledged_count = Arc::clone(&acknowledged_count);
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for _ in 0..CREDITS_PER_CLIENT {
                    match client
                        .post(&url)
                        .json(&json!({"amount": "1.00"}))
                        .send()
                        .await
                    {
                        Ok(response) if response.status() == 200 => {
                            let Ok(body) = response.json::<Value>().await else {
                                return (acknowledged, true);
                            };
                            acknowledged.push(body);
                            acknowledged_count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(response) => {
                            assert!(response.status().is_server_error(), "{}", response.status())
                        }
                        Err(_) => return (acknowledged, true),
                    }
                }
                (acknowledged, false)
            })
        })
        .collect();
    while acknowledged_count.load(Ordering::SeqCst) < LOAD / 3
        && !load.iter().all(tokio::task::JoinHandle::is_finished)
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let at_kill = acknowledged_count.load(Ordering::SeqCst);
    let mut acknowledged: Vec<Value> = Vec::new();
    let mut dropped = 0;
    for client in futures::future::join_all(load).await {
        let (acks, connection_dropped) = client.unwrap();
        acknowledged.extend(acks);
        dropped += usize::from(connection_dropped);
    }
    assert!(
        at_kill < LOAD,
        "the kill came while credits were still being sent ({at_kill} of {LOAD})"
    );
    assert!(dropped > 0, "no client saw its connection drop");

    let second = Process::start(&database_url, &exchange).await;
    let mut events: Vec<Value> = Vec::new();
    let mut from = Some(1);
    while let Some(version) = from {
        let page: Value = client
            .get(format!(
                "{}/accounts/{id}/events?from_version={version}",
                second.address
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        from = page["next_from_version"].as_u64();
    }
    let events = &events;
    let by_version: BTreeMap<u64, &Value> = events
        .iter()
        .map(|e| (e["version"].as_u64().unwrap(), e))
        .collect();
    for ack in &acknowledged {
        let event = by_version[&ack["version"].as_u64().unwrap()];
        assert_eq!(event["type"], "AccountCredited");
        assert_eq!(
            event["data"]["balance"], ack["balance"],
            "acknowledged credit lost"
        );
    }
    let credits = events.len() - 2;
    assert!(credits >= acknowledged.len());
    assert_eq!(
        events.last().unwrap()["data"]["balance"],
        format!("{credits}.00")
    );

    let received = queue
        .receive(events.len() + 1_000, Duration::from_secs(5))
        .await;
    let published: HashSet<&str> = received
        .iter()
        .map(|m| m.body["event_id"].as_str().unwrap())
        .collect();
    for event in events {
        assert!(
            published.contains(event["event_id"].as_str().unwrap()),
            "event never published: {event}"
        );
    }
}

/// Requests in flight when SIGTERM comes: their commits are held back by a lock on
/// the account's stream row, which the test releases only after the signal.
const IN_FLIGHT: usize = 24;

#[tokio::test]
async fn sigterm_answers_every_request_in_flight_and_exits_cleanly_within_ten_seconds() {
    let database_url = fresh_database_url();
    let mut process = Process::start(&database_url, &fresh_exchange()).await;
    let client = admin_client();
    let id = active_account_on(&client, &process.address).await;

    let mut holder = sqlx::PgConnection::connect(&database_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM streams WHERE stream_id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut holder)
        .await
        .unwrap();
    let credit_url = format!("{}/accounts/{id}/credit", process.address);
    let burst: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let request = client.post(&credit_url).json(&json!({"amount": "1.00"}));
            tokio::spawn(async move {
                let response = request.send().await?;
                let status = response.status().as_u16();
                Ok::<_, reqwest::Error>((status, response.json::<Value>().await?))
            })
        })
        .collect();
    let mut observer = sqlx::PgConnection::connect(&database_url).await.unwrap();
    for attempt in 0.. {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut observer)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(attempt < 200, "the burst never reached the event store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first commit waits on the lock; give the server time to read the rest.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = process.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let signalled = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        process.child.try_wait().unwrap().is_none(),
        "the process exited with requests in flight"
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    let mut acknowledged = Vec::new();
    for request in futures::future::join_all(burst).await {
        let (status, body) = request
            .unwrap()
            .expect("a request in flight at SIGTERM got no answer");
        assert_eq!(status, 200, "{body}");
        acknowledged.push(body);
    }
    loop {
        if let Some(exit) = process.child.try_wait().unwrap() {
            assert!(exit.success(), "exit status {exit}");
            break;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let store = event_store::EventStore::connect(&database_url, 1)
        .await
        .unwrap();
    let stored = store
        .read_stream(id.parse().unwrap(), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.len(),
        2 + IN_FLIGHT,
        "one event per acknowledged credit"
    );
    for ack in &acknowledged {
        let version = i64::try_from(ack["version"].as_u64().unwrap()).unwrap();
        let event = stored.iter().find(|e| e.version == version).unwrap();
        assert_eq!(event.event_type, "AccountCredited");
        assert_eq!(
            event.data["balance"], ack["balance"],
            "acknowledged credit lost"
        );
    }
}

#[tokio::test]
async fn an_unreachable_broker_at_start_does_not_stop_commands() {
    let app = spawn_app_with("amqp://guest:guest@127.0.0.1:1/%2f").await;
    let id = app.active_account("1.00", "USD").await;
    let (status, _) = app
        .post(&format!("/accounts/{id}/credit"), json!({"amount": "1"}))
        .await;
    assert_eq!(status, 200);
}
