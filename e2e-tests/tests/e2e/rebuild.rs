//! `query-service rebuild` against live projection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e_tests::Stack;
use e2e_tests::workload::run_mix;
use serde_json::{Value, json};

/// Everything a client can read: every listing page, every account's operations, the
/// balance sheet, exactly as served.
#[derive(Debug, PartialEq)]
struct Snapshot {
    accounts: Vec<Vec<Value>>,
    operations: Vec<(String, Vec<Vec<Value>>)>,
    balance_sheet: Value,
}

#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure here is the test's failure"
)]
async fn snapshot(stack: &Stack) -> Snapshot {
    let accounts = stack.pages("/accounts?limit=7", "accounts").await;
    let mut operations = Vec::new();
    for account in accounts.iter().flatten() {
        let id = account["id"].as_str().unwrap().to_owned();
        let pages = stack
            .pages(&format!("/accounts/{id}/operations?limit=2"), "operations")
            .await;
        operations.push((id, pages));
    }
    let balance_sheet = stack
        .query()
        .get("/balance-sheet")
        .await
        .expect(200, "balance sheet");
    Snapshot {
        accounts,
        operations,
        balance_sheet,
    }
}

#[tokio::test]
async fn a_rebuild_from_the_feed_reproduces_the_live_read_model_exactly() {
    let stack = Stack::start().await;
    let mut ids: Vec<String> = run_mix(&stack, 20, 8)
        .await
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    let busy = stack.active_account("0.00", "EUR").await;
    for n in 1..=12 {
        let verb = if n % 4 == 0 { "debit" } else { "credit" };
        stack
            .act(&busy.id, verb, json!({"amount": format!("{n}.{n:02}")}))
            .await;
    }
    ids.push(busy.id.clone());
    stack.assert_read_model_exact(&ids).await;
    let live = snapshot(&stack).await;

    let status = stack.rebuild().await;
    assert!(
        status.success(),
        "query-service rebuild exited {status}\n{}",
        stack.rebuild_log_tail()
    );
    let rebuilt = snapshot(&stack).await;
    assert_eq!(
        rebuilt, live,
        "the rebuilt read model differs from the live one"
    );

    // The live projection carries on into the rebuilt tables.
    let credited = stack
        .act(&busy.id, "credit", json!({"amount": "0.01"}))
        .await;
    let account = stack.read(&busy.id, credited.version).await;
    assert_eq!(
        Some(account["balance"].as_str().unwrap()),
        credited.balance.as_deref()
    );
    stack.assert_read_model_exact(&ids).await;
}

#[tokio::test]
async fn a_rebuild_while_commands_flow_ends_exact_once_the_projection_caught_up() {
    let stack = Stack::start().await;
    let mut ids = Vec::new();
    for (initial, currency) in [("100.00", "MAD"), ("100", "JPY"), ("100.000", "KWD")] {
        ids.push(stack.active_account(initial, currency).await.id);
    }
    stack.assert_read_model_exact(&ids).await;

    // When commands keep coming before, during and after the rebuild...
    let command = stack.command().clone();
    let accounts = ids.clone();
    let rebuilt = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&rebuilt);
    let traffic = tokio::spawn(async move {
        let mut after_rebuild = 0;
        for n in 0..5_000 {
            let id = &accounts[n % accounts.len()];
            let verb = if n % 4 == 3 { "debit" } else { "credit" };
            let reply = command
                .post(&format!("/accounts/{id}/{verb}"), &json!({"amount": "1"}))
                .await;
            assert_eq!(reply.status, 200, "{verb}: {}", reply.body);
            if done.load(Ordering::SeqCst) {
                after_rebuild += 1;
                if after_rebuild == 30 {
                    return n + 1;
                }
            }
        }
        panic!("the rebuild never finished");
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = stack.rebuild().await;
    rebuilt.store(true, Ordering::SeqCst);
    assert!(
        status.success(),
        "query-service rebuild exited {status}\n{}",
        stack.rebuild_log_tail()
    );
    let sent = traffic.await.expect("the traffic was accepted");
    eprintln!("{sent} commands around the rebuild");

    // ...then no event is lost or doubled by the swap.
    stack.assert_read_model_exact(&ids).await;
}
