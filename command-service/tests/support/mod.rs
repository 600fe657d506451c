//! Test harness: the command service on a free port with its own database and its
//! own exchange, a queue bound to that exchange, and a TCP proxy to cut the broker.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub(crate) mod proxy;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use command_service::{Application, Settings};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use service_kit::settings::SecretUrl;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub(crate) const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub(crate) fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub(crate) fn fresh_database_url() -> String {
    format!("{}/cs_test_{}", postgres_server(), Uuid::new_v4().simple())
}

pub(crate) fn fresh_exchange() -> String {
    format!("test.{}", Uuid::new_v4().simple())
}

/// A running command service.
pub(crate) struct TestApp {
    pub address: String,
    pub database_url: String,
    pub exchange: String,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(AMQP_URL).await
}

pub(crate) async fn spawn_app_with(amqp_url: &str) -> TestApp {
    spawn_app_on(&fresh_database_url(), &fresh_exchange(), amqp_url).await
}

/// A command service on a given database and exchange (several can share them, as
/// replicas do).
pub(crate) async fn spawn_app_on(database_url: &str, exchange: &str, amqp_url: &str) -> TestApp {
    let (database_url, exchange) = (database_url.to_owned(), exchange.to_owned());
    let settings = Settings {
        database_url: SecretUrl::new(database_url.clone()),
        amqp_url: SecretUrl::new(amqp_url),
        amqp_exchange: exchange.clone(),
        http_host: "127.0.0.1".into(),
        http_port: 0,
        database_max_connections: 4,
        ..Settings::default()
    };
    let app = Application::build(settings).await.unwrap_or_else(|error| {
        panic!(
            "cannot start the command service against Postgres at {} ({error:?}). Start Postgres with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or set TEST_POSTGRES_URL.",
            postgres_server()
        )
    });
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        database_url,
        exchange,
        client: reqwest::Client::new(),
        shutdown,
    }
}

impl TestApp {
    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_with(path, body, &[]).await
    }

    pub(crate) async fn post_with(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("command service unreachable");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("command service unreachable");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Posts and checks that the answer is a problem document with this status and code.
    pub(crate) async fn expect_problem(&self, path: &str, body: Value, status: u16, code: &str) {
        let (got, problem) = self.post(path, body).await;
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{path}: {problem}"
        );
        assert_eq!(problem["status"], status);
        assert!(
            problem["type"].is_string()
                && problem["title"].is_string()
                && problem["detail"].is_string()
        );
    }

    /// Creates and activates an account; returns its id.
    pub(crate) async fn active_account(&self, balance: &str, currency: &str) -> String {
        let (status, created) = self
            .post(
                "/accounts",
                json!({"initial_balance": balance, "currency": currency}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let (status, _) = self
            .post(&format!("/accounts/{id}/activate"), json!({}))
            .await;
        assert_eq!(status, 200);
        id
    }

    /// Every event of the global feed.
    pub(crate) async fn all_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) = self.get(&format!("/events?after={after}&limit=1000")).await;
            assert_eq!(status, 200);
            let batch = page["events"].as_array().unwrap().clone();
            if batch.is_empty() {
                return events;
            }
            after = page["next_after"].as_u64().unwrap();
            events.extend(batch);
        }
    }
}

/// A server-named queue bound to every account event of `exchange`.
pub(crate) struct BoundQueue {
    consumer: lapin::Consumer,
    _connection: lapin::Connection,
}

pub(crate) async fn bind_queue(exchange: &str) -> BoundQueue {
    let connection = service_kit::amqp::connect(AMQP_URL, "test").await.unwrap_or_else(|error| {
        panic!("cannot reach RabbitMQ at {AMQP_URL} ({error}). Start it with `rabbitmq-server -detached`.")
    });
    let channel = connection.create_channel().await.unwrap();
    service_kit::amqp::declare_events_exchange(&channel, exchange)
        .await
        .unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "account.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    BoundQueue {
        consumer,
        _connection: connection,
    }
}

/// A message as received: its body and the properties the contract fixes.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub body: Value,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub traceparent: Option<String>,
}

impl BoundQueue {
    /// Receives until `count` messages arrived or `within` passed.
    pub(crate) async fn receive(&mut self, count: usize, within: Duration) -> Vec<Received> {
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while received.len() < count {
            let Ok(Some(Ok(delivery))) =
                tokio::time::timeout_at(deadline, self.consumer.next()).await
            else {
                break;
            };
            let properties = &delivery.properties;
            received.push(Received {
                body: serde_json::from_slice(&delivery.data).unwrap(),
                routing_key: delivery.routing_key.to_string(),
                message_id: properties.message_id().as_ref().map(|v| v.to_string()),
                kind: properties.kind().as_ref().map(|v| v.to_string()),
                content_type: properties.content_type().as_ref().map(|v| v.to_string()),
                delivery_mode: *properties.delivery_mode(),
                traceparent: properties
                    .headers()
                    .as_ref()
                    .and_then(|headers| headers.inner().get("traceparent").cloned())
                    .and_then(|value| match value {
                        lapin::types::AMQPValue::LongString(text) => Some(text.to_string()),
                        _ => None,
                    }),
            });
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        received
    }
}

/// The command-service binary, configured only through its environment.
pub(crate) struct Process {
    pub child: Child,
    pub address: String,
}

impl Process {
    pub(crate) async fn start(database_url: &str, exchange: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_command-service"))
            .env("DATABASE_URL", database_url)
            .env("AMQP_URL", AMQP_URL)
            .env("AMQP_EXCHANGE", exchange)
            .env("HTTP_HOST", "127.0.0.1")
            .env("HTTP_PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let address = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = client.get(format!("{address}/health/ready")).send().await
                && response.status() == 200
            {
                return Self { child, address };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        panic!("command-service did not become ready on {address}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
