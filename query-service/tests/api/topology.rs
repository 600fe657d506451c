//! The projection's queues on the broker: the delivery limit that dead-letters a
//! message which keeps failing, the bounded dead-letter queue and its gauge, the shared
//! queue without partitions, and a topology the broker refuses.

use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use query_service::source::ServiceToken;
use serde_json::{Value, json};
use service_kit::settings::SecretUrl;
use test_support::servers::{Server, amqp_url, mysql_server, require};
use test_support::{Broker, Leftovers, names};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    Options, TestApp, broker_queues, eventually, query_service_token, seed, spawn_app_with,
    synthetic_event, test_auth,
};

/// A dead letter as the broker keeps it: the body and the headers it added.
struct DeadLetter {
    body: Value,
    headers: FieldTable,
}

impl DeadLetter {
    fn header(&self, name: &str) -> Option<String> {
        match self.headers.inner().get(name)? {
            AMQPValue::LongString(value) => Some(value.to_string()),
            AMQPValue::ShortString(value) => Some(value.to_string()),
            _ => None,
        }
    }
}

/// Takes what the dead-letter queue holds, headers included.
async fn take_dead_letters(app: &TestApp) -> Vec<DeadLetter> {
    let broker = Broker::connect().await;
    let channel = broker.channel().await;
    let queue = app.settings.dead_letter_queue();
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap_or_else(|error| panic!("cannot read {queue}: {error}"))
    {
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .unwrap_or_else(|error| panic!("cannot acknowledge a dead letter: {error}"));
        taken.push(DeadLetter {
            body: serde_json::from_slice(&message.delivery.data).unwrap_or(Value::Null),
            headers: message
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default(),
        });
    }
    broker.close().await;
    taken
}

/// The gauge of the test's own dead-letter queue.
async fn dead_letter_gauge(app: &TestApp) -> f64 {
    let label = format!("queue=\"{}\"", app.settings.dead_letter_queue());
    app.metric("dead_letter_queue_messages", &[&label]).await
}

/// A command service that fails every request with a 500: each gap fill fails, as it
/// would for a stream the command service cannot serve.
async fn failing_command_service() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|error| panic!("cannot bind the stub: {error}"));
    let address = listener
        .local_addr()
        .unwrap_or_else(|error| panic!("no stub address: {error}"));
    let router = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "this stream cannot be served",
        )
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

fn created(account: &str) -> Value {
    synthetic_event(
        account,
        1,
        "AccountCreated",
        1,
        json!({"initial_balance": "10.00", "currency": "MAD"}),
    )
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_dead_lettered_after_the_delivery_limit_while_the_good_ones_flow()
 {
    // Given a query service whose gap fills always fail (its command service answers 500)
    let app = spawn_app_with(Options {
        shared_exchange: false,
        follow_feed: false,
        command_service_url: Some(failing_command_service().await),
        ..Options::default()
    })
    .await;
    let publisher = app.publisher().await;

    // When an event arrives ahead of its stream (version 2 of an unknown account: a gap
    // that cannot be filled), and good events keep arriving around it
    let stuck = uuid::Uuid::now_v7().to_string();
    let poison = synthetic_event(&stuck, 2, "AccountActivated", 1, json!({}));
    let early = uuid::Uuid::now_v7().to_string();
    publisher.publish_event(&created(&early)).await;
    publisher.publish_event(&poison).await;
    let mut good = Vec::new();
    for _ in 0..5 {
        let account = uuid::Uuid::now_v7().to_string();
        publisher.publish_event(&created(&account)).await;
        good.push(account);
    }

    // Then the good ones are applied while it is retried
    app.account_at(&early, 1).await;
    for account in &good {
        app.account_at(account, 1).await;
    }
    // And after the delivery limit the broker dead-letters it, saying why
    let gauge_counts_it = eventually(Duration::from_secs(30), || async {
        dead_letter_gauge(&app).await >= 1.0
    })
    .await;
    assert!(
        gauge_counts_it,
        "the dead-letter gauge never showed the message"
    );
    let dead = take_dead_letters(&app).await;
    assert_eq!(
        dead.len(),
        1,
        "exactly the failing message is dead-lettered"
    );
    assert_eq!(dead[0].body["event_id"], poison["event_id"]);
    assert_eq!(
        dead[0].header("x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
    let queue = dead[0].header("x-first-death-queue").unwrap_or_default();
    assert!(
        app.settings.projection_queues().contains(&queue),
        "dead-lettered from {queue:?}, one of the projection's queues"
    );
    // And the account stays unknown rather than half-projected
    let reply = app.query_get(&format!("/accounts/{stuck}")).await;
    assert_eq!(reply.status, 404, "{:?}", reply.body);
    // And events published after it still flow, and the gauge follows the queue
    let late = uuid::Uuid::now_v7().to_string();
    publisher.publish_event(&created(&late)).await;
    app.account_at(&late, 1).await;
    let emptied = eventually(Duration::from_secs(10), || async {
        dead_letter_gauge(&app).await == 0.0
    })
    .await;
    assert!(emptied, "the gauge returns to 0 once the queue is emptied");
    app.stop().await;
}

#[tokio::test]
async fn one_shared_classic_queue_projects_without_partitions() {
    // Given a query service on one shared queue (a broker without the plugin)
    let app = spawn_app_with(Options {
        shared_exchange: false,
        follow_feed: false,
        partitions: 0,
        ..Options::default()
    })
    .await;
    assert_eq!(
        app.settings.projection_queues(),
        vec![app.settings.amqp_queue.clone()]
    );
    // When an account's events are published, Then they are projected from it
    let id = seed(&app, None, "MAD").await;
    let account = app.account_at(&id, 3).await;
    assert_eq!(account["balance"], "15.00");
    // And the queue it consumes is the shared one
    let broker = Broker::connect().await;
    let depth = broker.depth(&app.settings.amqp_queue).await;
    broker.close().await;
    assert!(depth.is_some_and(|depth| depth.consumers == 1), "{depth:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_classic_queue_in_the_way_of_a_quorum_one_stops_the_service_with_what_to_do() {
    require(&Server::ALL);
    let id = names::fresh_id();
    let settings = query_service::Settings {
        database_url: SecretUrl::new(format!("{}/qs_test_{id}", mysql_server())),
        database_max_connections: 2,
        amqp_url: SecretUrl::new(amqp_url()),
        amqp_exchange: format!("qs_test.{id}"),
        amqp_queue: format!("qs_test.{id}.projection"),
        http_host: "127.0.0.1".into(),
        http_port: 0,
        command_service_url: "http://127.0.0.1:9".into(),
        feed_follow_enabled: false,
        command_service_token: Some(ServiceToken::new(query_service_token())),
        auth: test_auth(),
        ..query_service::Settings::default()
    };
    let leftovers = Leftovers {
        queues: broker_queues(&settings),
        exchanges: [
            settings.amqp_exchange.clone(),
            settings.dead_letter_exchange(),
        ]
        .into_iter()
        .chain(settings.partition_exchange())
        .collect(),
        mysql_databases: vec![format!("qs_test_{id}")],
        ..Leftovers::default()
    };
    // Given the dead-letter queue exists as a classic queue (an older deployment's)
    let broker = Broker::connect().await;
    broker
        .channel()
        .await
        .queue_declare(
            settings.dead_letter_queue().as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|error| panic!("cannot declare the classic queue: {error}"));
    broker.close().await;

    // When the query service starts with quorum queues (the default)
    let app = query_service::Application::build(settings.clone())
        .await
        .unwrap_or_else(|error| panic!("cannot build the query service: {error:?}"));
    let stopped = tokio::time::timeout(
        Duration::from_secs(15),
        app.run_until_stopped(CancellationToken::new()),
    )
    .await;
    leftovers.remove().await;

    // Then it stops by itself, saying what is in the way and what to do
    let Ok(Err(error)) = stopped else {
        panic!("the query service did not stop with an error: {stopped:?}");
    };
    let reason = format!("{error:#}");
    for expected in [
        "PRECONDITION_FAILED",
        &settings.dead_letter_queue(),
        "AMQP_QUEUE_TYPE=classic",
        "docs/operations.md",
    ] {
        assert!(reason.contains(expected), "{expected:?} is not in {reason}");
    }
}
