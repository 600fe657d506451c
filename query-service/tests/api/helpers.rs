//! Test harness: a real command service (own Postgres database) and the query service
//! (own MySQL database, own exchange and queue) in-process on free ports, plus direct
//! access to the broker and the read model.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test harness: a failure here is the test's failure"
)]

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde_json::{Value, json};
use service_kit::settings::SecretUrl;
use sqlx::{Connection as _, Executor};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub(crate) const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub(crate) fn mysql_server() -> String {
    std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

pub(crate) fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Fails the test with instructions when a server it needs is not running.
pub(crate) async fn require_servers() {
    if let Err(error) = sqlx::MySqlConnection::connect(&mysql_server()).await {
        panic!(
            "cannot reach MySQL/MariaDB at {} ({error}). Start it with \
             `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd` \
             (as root) or set TEST_MYSQL_URL.",
            mysql_server()
        );
    }
    if let Err(error) =
        sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server())).await
    {
        panic!(
            "cannot reach Postgres at {} ({error}). Start it with \
             `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
             (as root) or set TEST_POSTGRES_URL.",
            postgres_server()
        );
    }
    if let Err(error) = service_kit::amqp::connect(AMQP_URL, "query-service test").await {
        panic!(
            "cannot reach RabbitMQ at {AMQP_URL} ({error}). Start it with \
             `rabbitmq-server -detached && rabbitmqctl await_startup` (as root)."
        );
    }
}

/// How to wire a test's services.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Whether the command service publishes to the query service's exchange; when
    /// not, the query service only gets what the test publishes (and the feed).
    pub shared_exchange: bool,
    pub follow_feed: bool,
    pub feed_poll_ms: u64,
    /// AMQP URL of the query service (a proxy, to cut its broker link).
    pub query_amqp_url: String,
    /// MySQL server of the query service (a proxy, to cut its database link).
    pub query_mysql_server: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            shared_exchange: true,
            follow_feed: true,
            feed_poll_ms: 1000,
            query_amqp_url: AMQP_URL.to_owned(),
            query_mysql_server: mysql_server(),
        }
    }
}

/// A running pair of services.
pub(crate) struct TestApp {
    pub query: String,
    pub command: String,
    pub client: reqwest::Client,
    /// The query service's settings (for `rebuild`).
    pub settings: query_service::Settings,
    pub mysql_url: String,
    command_stop: CancellationToken,
    query_stop: CancellationToken,
    query_task: Option<JoinHandle<anyhow::Result<()>>>,
    leftovers: Option<Leftovers>,
}

impl Drop for TestApp {
    /// A test that failed before `stop` still removes what it created.
    fn drop(&mut self) {
        self.query_stop.cancel();
        self.command_stop.cancel();
        if let Some(leftovers) = self.leftovers.take() {
            let cleanup = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(leftovers.remove());
            });
            let _ = cleanup.join();
        }
    }
}

/// What a test creates on the shared servers.
struct Leftovers {
    queues: Vec<String>,
    exchanges: Vec<String>,
    mysql_database: String,
    postgres_database: String,
}

impl Leftovers {
    async fn remove(self) {
        if let Ok(connection) = service_kit::amqp::connect(AMQP_URL, "query-service test").await
            && let Ok(channel) = connection.create_channel().await
        {
            for queue in &self.queues {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in &self.exchanges {
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
            let _ = connection.close(200, "done".into()).await;
        }
        if let Ok(mut mysql) = sqlx::MySqlConnection::connect(&mysql_server()).await {
            let _ = mysql
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{}`",
                    self.mysql_database
                )))
                .await;
        }
        if let Ok(mut postgres) =
            sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server())).await
        {
            let _ = postgres
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.postgres_database
                )))
                .await;
        }
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub(crate) async fn spawn_app_with(options: Options) -> TestApp {
    require_servers().await;
    let id = Uuid::new_v4().simple().to_string();
    let exchange = format!("qs_test.{id}");
    let command_exchange = if options.shared_exchange {
        exchange.clone()
    } else {
        format!("qs_test_cmd.{id}")
    };
    let command_settings = command_service::Settings {
        database_url: SecretUrl::new(format!("{}/qs_cmd_{id}", postgres_server())),
        amqp_url: SecretUrl::new(AMQP_URL),
        amqp_exchange: command_exchange.clone(),
        http_host: "127.0.0.1".into(),
        http_port: 0,
        database_max_connections: 4,
        ..command_service::Settings::default()
    };
    let command_app = command_service::Application::build(command_settings)
        .await
        .expect("cannot start the command service");
    let command = format!("http://127.0.0.1:{}", command_app.port());
    let command_stop = CancellationToken::new();
    tokio::spawn(command_app.run_until_stopped(command_stop.clone()));

    let mysql_url = format!("{}/qs_test_{id}", options.query_mysql_server);
    let settings = query_service::Settings {
        database_url: SecretUrl::new(mysql_url.clone()),
        database_max_connections: 6,
        amqp_url: SecretUrl::new(options.query_amqp_url.clone()),
        amqp_exchange: exchange.clone(),
        amqp_queue: format!("qs_test.{id}.projection"),
        http_host: "127.0.0.1".into(),
        http_port: 0,
        command_service_url: command.clone(),
        feed_follow_enabled: options.follow_feed,
        feed_poll_interval_ms: options.feed_poll_ms,
        ..query_service::Settings::default()
    };
    let query_app = query_service::Application::build(settings.clone())
        .await
        .expect("cannot start the query service");
    let query = format!("http://127.0.0.1:{}", query_app.port());
    let query_stop = CancellationToken::new();
    let query_task = tokio::spawn(query_app.run_until_stopped(query_stop.clone()));
    let leftovers = Leftovers {
        queues: vec![settings.amqp_queue.clone(), settings.dead_letter_queue()],
        exchanges: vec![
            settings.amqp_exchange.clone(),
            settings.dead_letter_exchange(),
            command_exchange.clone(),
        ],
        mysql_database: format!("qs_test_{id}"),
        postgres_database: format!("qs_cmd_{id}"),
    };
    let app = TestApp {
        query,
        command,
        client: reqwest::Client::new(),
        settings,
        mysql_url,
        command_stop,
        query_stop,
        query_task: Some(query_task),
        leftovers: Some(leftovers),
    };
    if options.query_amqp_url == AMQP_URL {
        app.wait_for_broker().await;
    }
    app
}

pub(crate) async fn broker() -> Connection {
    service_kit::amqp::connect(AMQP_URL, "query-service test")
        .await
        .expect("RabbitMQ unreachable")
}

/// A response: status and JSON body.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl TestApp {
    /// Waits until the query service's consumer is connected (its queue then exists).
    pub(crate) async fn wait_for_broker(&self) {
        for _ in 0..200 {
            let ready = self.query_get("/health/ready").await;
            if ready.body["broker"] == "up" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the query service never connected to the broker");
    }

    pub(crate) async fn command_post(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.command))
            .json(&body)
            .send()
            .await
            .expect("command service unreachable");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!((200..300).contains(&status), "POST {path}: {status} {body}");
        body
    }

    pub(crate) async fn command_get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.command))
            .send()
            .await
            .expect("command service unreachable");
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    pub(crate) async fn query_get(&self, path: &str) -> Reply {
        let response = self
            .client
            .get(format!("{}{path}", self.query))
            .send()
            .await
            .expect("query service unreachable");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            content_type,
            body,
        }
    }

    /// The account once projected up to `version` (fails the test otherwise).
    pub(crate) async fn account_at(&self, id: &str, version: u64) -> Value {
        let reply = self
            .query_get(&format!(
                "/accounts/{id}?min_version={version}&wait_ms=10000"
            ))
            .await;
        assert_eq!(
            reply.status, 200,
            "account {id} at {version}: {:?}",
            reply.body
        );
        reply.body
    }

    /// Creates an account through the command service; returns its id.
    pub(crate) async fn create(&self, balance: &str, currency: &str) -> String {
        let created = self
            .command_post(
                "/accounts",
                json!({"initial_balance": balance, "currency": currency}),
            )
            .await;
        created["id"].as_str().unwrap().to_owned()
    }

    /// Runs a command on an account; returns the version it reached.
    pub(crate) async fn command(&self, id: &str, command: &str, body: Value) -> u64 {
        let reply = self
            .command_post(&format!("/accounts/{id}/{command}"), body)
            .await;
        reply["version"].as_u64().unwrap()
    }

    /// Creates and activates an account; returns its id.
    pub(crate) async fn active_account(&self, balance: &str, currency: &str) -> String {
        let id = self.create(balance, currency).await;
        self.command(&id, "activate", json!({})).await;
        id
    }

    /// The events of one account, from the command service.
    pub(crate) async fn stream(&self, id: &str) -> Vec<Value> {
        self.command_get(&format!("/accounts/{id}/events")).await["events"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Every account of the listing, all pages.
    pub(crate) async fn all_accounts(&self, filter: &str) -> Vec<Value> {
        let mut accounts = Vec::new();
        let mut after = String::new();
        loop {
            let reply = self
                .query_get(&format!("/accounts?limit=3{filter}{after}"))
                .await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            accounts.extend(reply.body["accounts"].as_array().unwrap().iter().cloned());
            match reply.body["next"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => return accounts,
            }
        }
    }

    /// Everything the REST API shows, for comparisons.
    pub(crate) async fn snapshot(&self) -> Value {
        let accounts = self.all_accounts("").await;
        let mut details = Vec::new();
        for account in &accounts {
            let id = account["id"].as_str().unwrap();
            let one = self.query_get(&format!("/accounts/{id}")).await.body;
            let operations = self
                .query_get(&format!("/accounts/{id}/operations?limit=500"))
                .await
                .body;
            details.push(json!({"account": one, "operations": operations}));
        }
        let sheet = self.query_get("/balance-sheet").await.body;
        json!({"accounts": accounts, "details": details, "balance_sheet": sheet})
    }

    /// A publisher on the query service's exchange, with confirms.
    pub(crate) async fn publisher(&self) -> Publisher {
        let connection = broker().await;
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Publisher {
            exchange: self.settings.amqp_exchange.clone(),
            channel,
            _connection: connection,
        }
    }

    /// Takes every message currently in the dead-letter queue.
    pub(crate) async fn dead_letters(&self) -> Vec<Vec<u8>> {
        let connection = broker().await;
        let channel = connection.create_channel().await.unwrap();
        let mut bodies = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.settings.dead_letter_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            bodies.push(message.delivery.data.clone());
        }
        let _ = connection.close(200, "done".into()).await;
        bodies
    }

    /// Waits (at most 10 s) until `count` messages were dead-lettered, and takes them.
    pub(crate) async fn await_dead_letters(&self, count: usize) -> Vec<Vec<u8>> {
        let mut dead = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while dead.len() < count && tokio::time::Instant::now() < deadline {
            dead.extend(self.dead_letters().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        dead
    }

    /// A Prometheus sample of the query service, summed over its label sets.
    pub(crate) async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self.query_get("/metrics").await.body;
        let text = text.as_str().unwrap_or_default().to_owned();
        text.lines()
            .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Stops both services (the query service must stop cleanly within 10 s) and
    /// drops the test's databases, queues and exchanges.
    pub(crate) async fn stop(mut self) {
        self.query_stop.cancel();
        if let Some(task) = self.query_task.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the query service did not stop within 10 s");
            stopped.unwrap().unwrap();
        }
        self.command_stop.cancel();
        if let Some(leftovers) = self.leftovers.take() {
            leftovers.remove().await;
        }
    }

    /// A direct connection to the test's read model.
    pub(crate) async fn mysql(&self) -> sqlx::MySqlConnection {
        sqlx::MySqlConnection::connect(&self.mysql_url)
            .await
            .unwrap()
    }
}

/// Publishes straight to the query service's exchange.
pub(crate) struct Publisher {
    exchange: String,
    channel: Channel,
    _connection: Connection,
}

impl Publisher {
    /// Publishes a body with a routing key, waiting for the broker's confirm.
    pub(crate) async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        correlation_id: Option<&str>,
    ) {
        let mut headers = FieldTable::default();
        if let Some(id) = correlation_id {
            headers.insert(
                ShortString::from("correlation_id"),
                AMQPValue::LongString(LongString::from(id)),
            );
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }

    /// Publishes an event (a feed or stream item) as the relay would.
    pub(crate) async fn publish_event(&self, event: &Value) {
        let kind = event["type"].as_str().unwrap_or("AccountUnknown");
        let routing_key = format!(
            "account.{}",
            kind.trim_start_matches("Account").to_ascii_lowercase()
        );
        self.publish(
            &routing_key,
            &serde_json::to_vec(event).unwrap(),
            event["metadata"]["correlation_id"].as_str(),
        )
        .await;
    }
}

/// Retries `check` until it holds or `within` passes.
pub(crate) async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
