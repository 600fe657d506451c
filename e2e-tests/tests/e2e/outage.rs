//! A broker outage for this stack alone: both services reach RabbitMQ through a proxy
//! the test cuts. The shared broker itself never stops.

use std::time::{Duration, Instant};

use e2e_tests::StackConfig;
use serde_json::json;
use test_support::servers::Server;
use test_support::{Api, Broker, TcpProxy};

/// Waits until `/health/ready` reports the broker `state`, checking on the way that the
/// service stays ready (a broker outage alone never makes it unready).
async fn wait_broker_reported(api: &Api, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = api.get("/health/ready").await;
        assert_eq!(
            ready.status, 200,
            "{}: ready whatever the broker: {}",
            api.base, ready.body
        );
        if ready.body["broker"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never reported the broker {state}: {}",
            api.base,
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn commands_accepted_during_a_broker_outage_reach_the_read_model_through_the_broker_after_it()
{
    // The feed follower is off: the read model can only catch up through the broker.
    outage(
        StackConfig::default().query_setting("FEED_FOLLOW_ENABLED", "false"),
        true,
    )
    .await;
}

#[tokio::test]
async fn commands_accepted_during_a_broker_outage_reach_the_read_model_with_the_default_settings() {
    outage(StackConfig::default(), false).await;
}

/// Cuts the broker off from both services, sends commands, restores it, and checks
/// that the read model shows them all. `broker_only`: nothing but the broker can carry
/// events to the read model, so it must not have seen them during the outage.
async fn outage(config: StackConfig, broker_only: bool) {
    let proxy = TcpProxy::to(Server::RabbitMq).await;
    let stack = config.broker(&proxy.url()).start().await;
    let broker = Broker::connect().await;
    stack.wait_for_consumer(&broker).await;
    let first = stack.active_account("10.00", "EUR").await;
    stack.read(&first.id, first.version).await;

    // When the broker is cut off from both services...
    proxy.cut();
    wait_broker_reported(stack.query(), "down").await;
    // ...commands are still accepted...
    let mut ids = vec![first.id.clone()];
    let mut last = first.clone();
    for _ in 0..10 {
        last = stack
            .act(&first.id, "credit", json!({"amount": "1.10"}))
            .await;
    }
    for (initial, currency) in [("5", "JPY"), ("0.500", "KWD"), ("7.00", "MAD")] {
        let account = stack.active_account(initial, currency).await;
        stack
            .act(&account.id, "credit", json!({"amount": "1"}))
            .await;
        ids.push(account.id);
    }
    // The command service notices when it next publishes: idle, it keeps reporting
    // the last outcome.
    wait_broker_reported(stack.command(), "down").await;
    if broker_only {
        // ...and, with nothing to carry them meanwhile, the read model has not seen them.
        stack
            .query()
            .get(&format!(
                "/accounts/{}?min_version={}&wait_ms=300",
                first.id, last.version
            ))
            .await
            .assert_problem(504, "not_yet_projected");
    }

    // Then once the broker is back, everything reaches the read model.
    proxy.restore();
    let account = stack.read(&first.id, last.version).await;
    assert_eq!(account["balance"], "21.00");
    stack.assert_read_model_exact(&ids).await;
    wait_broker_reported(stack.command(), "up").await;
    wait_broker_reported(stack.query(), "up").await;
    broker.close().await;
}
