//! A query service SIGKILLed in the middle of a burst of commands.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use e2e_tests::Stack;
use e2e_tests::model::{Expected, account_view, balance_sheet, served_balance_sheet};
use e2e_tests::stack::metric;
use serde_json::json;
use test_support::{Api, Broker};

const CLIENTS: usize = 8;
const COMMANDS_PER_CLIENT: usize = 30;
const TOTAL: usize = CLIENTS * COMMANDS_PER_CLIENT;

/// Active accounts of several currencies, with room for the burst's debits.
async fn accounts(stack: &Stack) -> Vec<String> {
    let mut ids = Vec::new();
    for (initial, currency) in [
        ("1000.00", "MAD"),
        ("1000.00", "EUR"),
        ("1000", "JPY"),
        ("1000.000", "KWD"),
        ("1000.00", "USD"),
        ("1000.00", "MAD"),
    ] {
        ids.push(stack.active_account(initial, currency).await.id);
    }
    stack.assert_read_model_exact(&ids).await;
    ids
}

/// 8 clients send credits and debits over `ids`, all of which must be accepted; once a
/// third of them are acknowledged, `midway` runs. Returns how many were acknowledged by
/// then.
#[expect(
    clippy::expect_used,
    reason = "a test helper: a failure here is the test's failure"
)]
async fn burst(command: &Api, ids: &[String], midway: impl FnOnce()) -> usize {
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let api = command.clone();
            let ids = ids.to_vec();
            let acknowledged = Arc::clone(&acknowledged);
            tokio::spawn(async move {
                for n in 0..COMMANDS_PER_CLIENT {
                    let id = &ids[(client + n) % ids.len()];
                    let (verb, amount) = if n % 3 == 2 {
                        ("debit", "2")
                    } else {
                        ("credit", "3")
                    };
                    let reply = api
                        .post(
                            &format!("/accounts/{id}/{verb}"),
                            &json!({"amount": amount}),
                        )
                        .await;
                    assert_eq!(reply.status, 200, "{verb} {id}: {}", reply.body);
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    while acknowledged.load(Ordering::SeqCst) < TOTAL / 3
        && !clients.iter().all(tokio::task::JoinHandle::is_finished)
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    midway();
    let at_midway = acknowledged.load(Ordering::SeqCst);
    for client in clients {
        client.await.expect("a client of the burst failed");
    }
    assert!(
        at_midway < TOTAL,
        "the kill came while commands were still being sent ({at_midway} of {TOTAL})"
    );
    at_midway
}

/// Every account, the listing and the balance sheet are exact, with one operation per
/// command of the burst.
async fn assert_exact(stack: &Stack, ids: &[String]) {
    let expected = stack.assert_read_model_exact(ids).await;
    let listed = stack.pages("/accounts?limit=500", "accounts").await;
    let mut listed: Vec<_> = listed.iter().flatten().map(account_view).collect();
    listed.sort_by_key(|account| account["id"].as_str().map(str::to_owned));
    let mut wanted: Vec<_> = expected.iter().map(|e| e.account.clone()).collect();
    wanted.sort_by_key(|account| account["id"].as_str().map(str::to_owned));
    assert_eq!(listed, wanted);
    let movements: usize = expected.iter().map(|e| e.operations.len()).sum();
    assert_eq!(movements, TOTAL, "one operation per acknowledged command");
    let sheet = stack
        .query()
        .get("/balance-sheet")
        .await
        .expect(200, "balance sheet");
    let all: Vec<&Expected> = expected.iter().collect();
    assert_eq!(served_balance_sheet(&sheet), balance_sheet(&all));
}

#[tokio::test]
async fn a_query_service_killed_mid_burst_catches_up_exactly_once_restarted() {
    let mut stack = Stack::start().await;
    let ids = accounts(&stack).await;
    let command = stack.command().clone();

    burst(&command, &ids, || stack.kill_query()).await;

    stack.restart_query().await;
    assert_exact(&stack, &ids).await;
}

#[tokio::test]
async fn of_two_query_replicas_the_one_left_after_the_active_one_is_killed_takes_over_its_partitions()
 {
    // Given the query service, active on every partition (it consumed them first), and a
    // replica waiting on each (single active consumer)
    let mut stack = Stack::start().await;
    let broker = Broker::connect().await;
    stack.wait_for_consumer(&broker).await;
    let (replica, replica_api) = stack.query_replica().await;
    let ids = accounts(&stack).await;
    let command = stack.command().clone();

    // When the active one is SIGKILLed mid-burst
    burst(&command, &ids, || stack.kill_query()).await;

    // Then the replica takes over its partitions and their unacknowledged messages, in
    // order: the read model is exact and no gap had to be filled from the broker's path
    stack.adopt_query(replica);
    assert_exact(&stack, &ids).await;
    assert_eq!(
        metric(
            &replica_api,
            "projection_gap_fills_total",
            &["path=\"broker\""]
        )
        .await,
        0.0,
        "events reached the replica out of order"
    );
}
