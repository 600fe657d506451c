//! Test harness: the command service on a free port with its own database and its own
//! exchange, its binary as a process of the test's own, and a queue bound to its
//! exchange. How to reach the servers is `test_support`'s.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use command_service::{Application, Settings};
use serde_json::{Value, json};
use service_kit::settings::SecretUrl;
use test_support::servers::{Server, amqp_url, free_port, postgres_url, require};
use test_support::{Api, Broker, Subscription, names};
use tokio_util::sync::CancellationToken;

pub(crate) fn fresh_database_url() -> String {
    postgres_url(&names::fresh_database("cs_test"))
}

pub(crate) fn fresh_exchange() -> String {
    names::fresh_exchange("test")
}

/// A running command service.
pub(crate) struct TestApp {
    pub address: String,
    pub exchange: String,
    pub client: reqwest::Client,
    api: Api,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(&amqp_url()).await
}

pub(crate) async fn spawn_app_with(amqp_url: &str) -> TestApp {
    spawn_app_on(&fresh_database_url(), &fresh_exchange(), amqp_url).await
}

/// A command service on a given database and exchange (several can share them, as
/// replicas do).
pub(crate) async fn spawn_app_on(database_url: &str, exchange: &str, amqp_url: &str) -> TestApp {
    require(&[Server::Postgres]);
    let settings = Settings {
        database_url: SecretUrl::new(database_url),
        amqp_url: SecretUrl::new(amqp_url),
        amqp_exchange: exchange.to_owned(),
        http_host: "127.0.0.1".into(),
        http_port: 0,
        database_max_connections: 4,
        ..Settings::default()
    };
    let app = Application::build(settings)
        .await
        .unwrap_or_else(|error| panic!("cannot start the command service: {error:?}"));
    let api = Api::new(&format!("http://127.0.0.1:{}", app.port()));
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        address: api.base.clone(),
        exchange: exchange.to_owned(),
        client: api.http().clone(),
        api,
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
        let reply = self.api.post_with_headers(path, &body, headers).await;
        (reply.status, reply.body)
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let reply = self.api.get(path).await;
        (reply.status, reply.body)
    }

    /// Posts and checks that the answer is a problem document with this status and code.
    pub(crate) async fn expect_problem(&self, path: &str, body: Value, status: u16, code: &str) {
        self.api
            .post(path, &body)
            .await
            .assert_problem(status, code);
    }

    /// Creates and activates an account; returns its id.
    pub(crate) async fn active_account(&self, balance: &str, currency: &str) -> String {
        let created = self
            .api
            .post(
                "/accounts",
                &json!({"initial_balance": balance, "currency": currency}),
            )
            .await
            .expect(201, "create");
        let Some(id) = created["id"].as_str() else {
            panic!("no id in {created}");
        };
        self.api
            .post(&format!("/accounts/{id}/activate"), &json!({}))
            .await
            .expect(200, "activate");
        id.to_owned()
    }

    /// Every event of the global feed.
    pub(crate) async fn all_events(&self) -> Vec<Value> {
        self.api.feed().await
    }
}

/// A queue of the test's own bound to every account event of `exchange` (declared as
/// the service declares it).
pub(crate) async fn bind_queue(exchange: &str) -> Subscription {
    let broker = Broker::connect().await;
    service_kit::amqp::declare_events_exchange(&broker.channel().await, exchange)
        .await
        .unwrap_or_else(|error| panic!("cannot declare {exchange}: {error}"));
    broker.subscribe(exchange, "account.*").await
}

/// The command-service binary, configured only through its environment.
pub(crate) struct Process {
    pub child: Child,
    pub address: String,
}

impl Process {
    pub(crate) async fn start(database_url: &str, exchange: &str) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_command-service"))
            .env("DATABASE_URL", database_url)
            .env("AMQP_URL", amqp_url())
            .env("AMQP_EXCHANGE", exchange)
            .env("HTTP_HOST", "127.0.0.1")
            .env("HTTP_PORT", port.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start command-service: {error}"));
        let mut process = Self {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = client
                .get(format!("{}/health/ready", process.address))
                .send()
                .await
                && response.status() == 200
            {
                return process;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process.stop();
        panic!(
            "command-service did not become ready on {}",
            process.address
        );
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}
