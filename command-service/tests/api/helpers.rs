//! Test harness: the command service on a free port with its own database and its own
//! exchange, its binary as a process of the test's own, and a queue bound to its
//! exchange. How to reach the servers is `test_support`'s.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use command_service::{Application, Settings};
use serde_json::{Value, json};
use service_kit::auth::{AuthSettings, JwtSecret};
use service_kit::settings::SecretUrl;
use test_support::auth::{TEST_JWT_SECRET, admin_token};
use test_support::servers::{Server, amqp_url, free_port, postgres_url, require};
use test_support::{Api, Broker, Subscription, names};
use tokio_util::sync::CancellationToken;

pub(crate) fn fresh_database_url() -> String {
    postgres_url(&names::fresh_database("cs_test"))
}

pub(crate) fn fresh_exchange() -> String {
    names::fresh_exchange("test")
}

/// A running command service. `client` and the request helpers act as an admin
/// holding every scope; [`TestApp::as_caller`] acts with another token.
pub(crate) struct TestApp {
    pub address: String,
    pub exchange: String,
    pub client: reqwest::Client,
    api: Api,
    shutdown: CancellationToken,
}

/// An HTTP client that sends an admin's bearer token (every scope) with each request.
pub(crate) fn admin_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", admin_token()))
        .unwrap_or_else(|error| panic!("a bearer header: {error}"));
    headers.insert(reqwest::header::AUTHORIZATION, bearer);
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_else(|error| panic!("an HTTP client: {error}"))
}

/// The settings of a test's command service: its database and exchange, the test
/// suite's token secret.
pub(crate) fn test_settings(database_url: &str, exchange: &str, amqp_url: &str) -> Settings {
    Settings {
        database_url: SecretUrl::new(database_url),
        amqp_url: SecretUrl::new(amqp_url),
        amqp_exchange: exchange.to_owned(),
        http_host: "127.0.0.1".into(),
        http_port: 0,
        database_max_connections: 4,
        auth: AuthSettings {
            auth_jwt_secret: Some(JwtSecret::new(TEST_JWT_SECRET)),
            ..AuthSettings::default()
        },
        ..Settings::default()
    }
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
    spawn_app_with_settings(test_settings(database_url, exchange, amqp_url)).await
}

/// A command service built from `settings`.
pub(crate) async fn spawn_app_with_settings(settings: Settings) -> TestApp {
    require(&[Server::Postgres]);
    let exchange = settings.amqp_exchange.clone();
    let app = Application::build(settings)
        .await
        .unwrap_or_else(|error| panic!("cannot start the command service: {error:?}"));
    let address = format!("http://127.0.0.1:{}", app.port());
    let api = Api::new(&address).with_token(admin_token());
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        address,
        exchange,
        client: admin_client(),
        api,
        shutdown,
    }
}

impl TestApp {
    /// A client of this service sending `token` (none: no `Authorization` header).
    pub(crate) fn as_caller(&self, token: Option<&str>) -> Api {
        let api = Api::new(&self.address);
        match token {
            Some(token) => api.with_token(token),
            None => api,
        }
    }

    /// The admin's client of this service.
    pub(crate) fn admin(&self) -> &Api {
        &self.api
    }

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
            .env("AUTH_JWT_SECRET", TEST_JWT_SECRET)
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
