//! Query-service replicas on the projection's partitions: each account's events reach
//! one replica, in order, whichever replica that is.

use e2e_tests::Stack;
use e2e_tests::stack::metric;
use futures::StreamExt;
use serde_json::json;

const ACCOUNTS: usize = 12;
const CREDITS: usize = 240;

#[tokio::test]
async fn two_replicas_that_subscribed_together_share_the_partitions_and_apply_each_account_in_order()
 {
    // Given accounts, and two query service replicas that subscribed to the partitions
    // together once the first query service was gone
    let mut stack = Stack::start().await;
    let mut ids = Vec::new();
    for _ in 0..ACCOUNTS {
        ids.push(stack.active_account("100.00", "MAD").await.id);
    }
    stack.assert_read_model_exact(&ids).await;
    stack.kill_query();
    let ((first, first_api), (second, second_api)) =
        tokio::join!(stack.query_replica(), stack.query_replica());
    stack.adopt_query(first);

    // When 8 clients credit the accounts at once
    let command = stack.customer_command().clone();
    let credits = futures::stream::iter(0..CREDITS)
        .map(|n| {
            let command = command.clone();
            let id = ids[n % ids.len()].clone();
            async move {
                command
                    .post(
                        &format!("/accounts/{id}/credit"),
                        &json!({"amount": "1.00"}),
                    )
                    .await
                    .expect(200, "credit");
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>();
    credits.await;

    // Then every account shows exactly its events
    stack.assert_read_model_exact(&ids).await;
    // And no event reached a replica ahead of an earlier one of its account: neither
    // had a gap to fill on the broker's path
    let mut applied = Vec::new();
    for api in [&first_api, &second_api] {
        assert_eq!(
            metric(api, "projection_gap_fills_total", &["path=\"broker\""]).await,
            0.0,
            "a replica received an account's events out of order"
        );
        applied.push(
            metric(
                api,
                "projection_events_total",
                &["outcome=\"applied\"", "path=\"broker\""],
            )
            .await,
        );
    }
    // (How the partitions fell to the replicas is the broker's choice: reported only.)
    eprintln!("events applied from the broker by each replica: {applied:?}");
    drop(second);
}
