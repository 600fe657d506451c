//! The binary: configured by its environment, stops on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{AMQP_URL, mysql_server, require_servers};

#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    require_servers().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_query-service"))
        .env("DATABASE_URL", format!("{}/qs_test_{id}", mysql_server()))
        .env("AMQP_URL", AMQP_URL)
        .env("AMQP_EXCHANGE", format!("qs_test.{id}"))
        .env("AMQP_QUEUE", format!("qs_test.{id}.projection"))
        .env("HTTP_HOST", "127.0.0.1")
        .env("HTTP_PORT", port.to_string())
        .env("COMMAND_SERVICE_URL", "http://127.0.0.1:9")
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
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
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

    let connection = crate::helpers::broker().await;
    let channel = connection.create_channel().await.unwrap();
    for queue in [
        format!("qs_test.{id}.projection"),
        format!("qs_test.{id}.dlq"),
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    for exchange in [format!("qs_test.{id}"), format!("qs_test.{id}.dlx")] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await;
    }
    use sqlx::{Connection, Executor};
    if let Ok(mut mysql) = sqlx::MySqlConnection::connect(&mysql_server()).await {
        let _ = mysql
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `qs_test_{id}`"
            )))
            .await;
    }
}
