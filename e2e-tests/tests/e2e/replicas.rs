//! Two command services and two query services on one platform, under load; one of
//! each SIGKILLed in the middle and started again. Nothing is lost or doubled, the read
//! model equals the event store, and at no moment do two relays lead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e_tests::Stack;
use e2e_tests::process::Service;
use serde_json::{Value, json};
use test_support::Api;

const CLIENTS: usize = 8;
const COMMANDS_PER_CLIENT: usize = 40;
const TOTAL: usize = CLIENTS * COMMANDS_PER_CLIENT;

/// Posts to the first replica that answers, starting with `first`: the same
/// `Idempotency-Key` each time, so a command a killed replica did commit is answered,
/// not applied again.
async fn post_to_any(apis: &[Api], first: usize, path: &str, body: &Value, key: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        let api = &apis[(first + attempt) % apis.len()];
        let sent = api
            .http()
            .post(api.url(path))
            .bearer_auth(test_support::auth::admin_token())
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        if let Ok(response) = sent
            && response.status().as_u16() < 500
        {
            return response.status().as_u16();
        }
        assert!(Instant::now() < deadline, "POST {path} never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!("the loop returns or panics")
}

/// `relay_leading` of the command service at `url`, if it answers.
async fn leading(http: &reqwest::Client, url: &str) -> Option<f64> {
    let text = http
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("relay_leading "))
        .and_then(|value| value.trim().parse().ok())
}

#[tokio::test]
async fn two_replicas_of_each_service_lose_one_each_mid_load_and_nothing_is_lost_or_doubled() {
    // Given two replicas of each service
    let stack = Stack::start().await;
    let (mut command_b, command_b_api) = stack.command_replica().await;
    let (mut query_b, _) = stack.query_replica().await;
    let mut ids = Vec::new();
    for currency in ["MAD", "EUR", "MAD", "USD", "MAD", "EUR"] {
        ids.push(stack.active_account("500.00", currency).await.id);
    }
    let command_urls = [stack.command_service().url.clone(), command_b.url.clone()];

    // Watch, all along, that at most one relay leads
    let watching = Arc::new(AtomicBool::new(true));
    let most_leaders = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (watching, most_leaders) = (Arc::clone(&watching), Arc::clone(&most_leaders));
        let urls = command_urls.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while watching.load(Ordering::SeqCst) {
                let mut leaders = 0;
                for url in &urls {
                    if leading(&http, url).await == Some(1.0) {
                        leaders += 1;
                    }
                }
                most_leaders.fetch_max(leaders, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // When 8 clients spread credits and debits over both command replicas...
    let apis = vec![stack.command().clone(), command_b_api];
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let run = stack.names.id.clone();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (apis, ids, acknowledged, run) = (
                apis.clone(),
                ids.clone(),
                Arc::clone(&acknowledged),
                run.clone(),
            );
            tokio::spawn(async move {
                for n in 0..COMMANDS_PER_CLIENT {
                    let id = &ids[(client + n) % ids.len()];
                    let (verb, amount) = if n % 3 == 2 {
                        ("debit", "2")
                    } else {
                        ("credit", "3")
                    };
                    let path = format!("/accounts/{id}/{verb}");
                    let key = format!("{run}-{client}-{n}");
                    let status =
                        post_to_any(&apis, client + n, &path, &json!({"amount": amount}), &key)
                            .await;
                    assert_eq!(status, 200, "{verb} {id}");
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();

    // ...and a third of the way one command service and one query service are killed
    while acknowledged.load(Ordering::SeqCst) < TOTAL / 3 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    command_b.kill();
    query_b.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let command_b = Service::start(command_b.binary, command_b.env.clone(), &command_b.log).await;
    let query_b = Service::start(query_b.binary, query_b.env.clone(), &query_b.log).await;
    assert!(
        acknowledged.load(Ordering::SeqCst) < TOTAL,
        "the kill came while commands were still being sent"
    );
    for client in clients {
        if let Err(error) = client.await {
            panic!("a client failed: {error}");
        }
    }

    // Then every command is in the read model exactly once, equal to the event store
    let expected = stack.assert_read_model_exact(&ids).await;
    let movements: usize = expected.iter().map(|e| e.operations.len()).sum();
    assert_eq!(movements, TOTAL, "one operation per acknowledged command");
    watching.store(false, Ordering::SeqCst);
    if let Err(error) = watcher.await {
        panic!("the leader watch failed: {error}");
    }
    assert!(
        most_leaders.load(Ordering::SeqCst) <= 1,
        "two relays led at once"
    );
    drop((command_b, query_b));
}
