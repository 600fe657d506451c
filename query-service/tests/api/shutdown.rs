//! The binary: configured by its environment, stops on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::Leftovers;
use test_support::servers::{Server, amqp_url, free_port, mysql_url, require};

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    require(&Server::ALL);
    let id = test_support::names::fresh_id();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_query-service"))
        .env("DATABASE_URL", mysql_url(&format!("qs_test_{id}")))
        .env("AMQP_URL", amqp_url())
        .env("AMQP_EXCHANGE", format!("qs_test.{id}"))
        .env("AMQP_QUEUE", format!("qs_test.{id}.projection"))
        .env("HTTP_HOST", "127.0.0.1")
        .env("HTTP_PORT", port.to_string())
        .env("COMMAND_SERVICE_URL", "http://127.0.0.1:9")
        .env("AUTH_JWT_SECRET", test_support::auth::TEST_JWT_SECRET)
        .env(
            "COMMAND_SERVICE_TOKEN",
            crate::helpers::query_service_token(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let address = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(response) = client.get(format!("{address}/health/ready")).send().await
            && response.status() == 200
        {
            let body: serde_json::Value = response.json().await.unwrap();
            if body["broker"] == "up" {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        let _ = child.kill();
        panic!("query-service did not become ready on {address}");
    }
    let waiting = tokio::spawn({
        let url = format!(
            "{address}/accounts/{}?min_version=1&wait_ms=10000",
            uuid::Uuid::new_v4()
        );
        async move {
            client
                .get(url)
                .bearer_auth(test_support::auth::admin_token())
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("query-service did not exit within 10 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        504,
        "a waiting read is answered on shutdown"
    );

    let settings = query_service::Settings {
        amqp_exchange: format!("qs_test.{id}"),
        amqp_queue: format!("qs_test.{id}.projection"),
        ..query_service::Settings::default()
    };
    Leftovers {
        queues: crate::helpers::broker_queues(&settings),
        exchanges: [
            settings.amqp_exchange.clone(),
            settings.dead_letter_exchange(),
        ]
        .into_iter()
        .chain(settings.partition_exchange())
        .collect(),
        mysql_databases: vec![format!("qs_test_{id}")],
        ..Leftovers::default()
    }
    .remove()
    .await;
}
