//! Faults injected so that only the test's own stack feels them: a TCP proxy in front
//! of the broker, and command-service processes of the test's own.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::TcpProxy;
use test_support::servers::{Server, amqp_url};

use crate::helpers::{
    Process, TestApp, bind_queue, fresh_database_url, fresh_exchange, spawn_app_on, spawn_app_with,
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
async fn a_command_service_killed_mid_load_loses_no_acknowledged_command() {
    let database_url = fresh_database_url();
    let exchange = fresh_exchange();
    let mut queue = bind_queue(&exchange).await;
    let mut first = Process::start(&database_url, &exchange).await;
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("{}/accounts", first.address))
        .json(&json!({"initial_balance": "0", "currency": "EUR"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    client
        .post(format!("{}/accounts/{id}/activate", first.address))
        .send()
        .await
        .unwrap();

    let credit_url = format!("{}/accounts/{id}/credit", first.address);
    let load: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            let url = credit_url.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for _ in 0..200 {
                    match client
                        .post(&url)
                        .json(&json!({"amount": "1.00"}))
                        .send()
                        .await
                    {
                        Ok(response) if response.status() == 200 => {
                            let body: Value = response.json().await.unwrap_or(Value::Null);
                            if body.is_object() {
                                acknowledged.push(body);
                            }
                        }
                        Ok(response) => {
                            assert!(response.status().is_server_error(), "{}", response.status())
                        }
                        Err(_) => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let acknowledged: Vec<Value> = futures::future::join_all(load)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    assert!(!acknowledged.is_empty(), "the load ran before the kill");

    let second = Process::start(&database_url, &exchange).await;
    let stream: Value = client
        .get(format!("{}/accounts/{id}/events", second.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = stream["events"].as_array().unwrap();
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

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly_within_ten_seconds() {
    let process = Process::start(&fresh_database_url(), &fresh_exchange()).await;
    let pid = process.child.id().to_string();
    let mut process = process;
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let started = std::time::Instant::now();
    loop {
        if let Some(exit) = process.child.try_wait().unwrap() {
            assert!(exit.success(), "exit status {exit}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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
