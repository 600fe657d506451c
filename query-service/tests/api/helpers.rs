//! Test harness: a real command service (own Postgres database) and the query service
//! (own MySQL database, own exchange and queue) in-process on free ports, plus direct
//! access to the broker and the read model. How to reach the servers is `test_support`'s.

use std::time::Duration;

use query_service::source::ServiceToken;
use serde_json::{Value, json};
use service_kit::auth::{AuthSettings, JwtSecret};
use service_kit::settings::SecretUrl;
use sqlx::Connection as _;
use test_support::amqp::{correlation_header, json_properties, routing_key};
use test_support::auth::{TEST_JWT_SECRET, admin_token, token};
use test_support::servers::{Server, amqp_url, mysql_server, postgres_url, require};
use test_support::{Api, Broker, Leftovers, Reply, names};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

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
    /// Where the query service fills gaps and follows the feed, when not the test's
    /// command service (a stub that fails, say).
    pub command_service_url: Option<String>,
    /// `AMQP_PARTITIONS` (0: one shared queue).
    pub partitions: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            shared_exchange: true,
            follow_feed: true,
            feed_poll_ms: 1000,
            query_amqp_url: amqp_url(),
            query_mysql_server: mysql_server(),
            command_service_url: None,
            partitions: query_service::Settings::default().amqp_partitions,
        }
    }
}

/// A running pair of services.
pub(crate) struct TestApp {
    /// Base URL of the query service.
    pub query: String,
    pub command: String,
    /// A plain HTTP client (no token).
    pub client: reqwest::Client,
    /// The query service's settings (for `rebuild`).
    pub settings: query_service::Settings,
    pub mysql_url: String,
    /// The command service's event store.
    pub postgres_url: String,
    command_api: Api,
    query_api: Api,
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
            leftovers.remove_blocking();
        }
    }
}

/// Bearer tokens signed with the test secret, as every test service checks them.
pub(crate) fn test_auth() -> AuthSettings {
    AuthSettings {
        auth_jwt_secret: Some(JwtSecret::new(TEST_JWT_SECRET)),
        ..AuthSettings::default()
    }
}

/// The query service's own token for the command service.
pub(crate) fn query_service_token() -> String {
    token("query-service", "events:read")
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub(crate) async fn spawn_app_with(options: Options) -> TestApp {
    require(&Server::ALL);
    let id = names::fresh_id();
    let exchange = format!("qs_test.{id}");
    let command_exchange = if options.shared_exchange {
        exchange.clone()
    } else {
        format!("qs_test_cmd.{id}")
    };
    let command_settings = command_service::Settings {
        database_url: SecretUrl::new(postgres_url(&format!("qs_cmd_{id}"))),
        amqp_url: SecretUrl::new(amqp_url()),
        amqp_exchange: command_exchange.clone(),
        http_host: "127.0.0.1".into(),
        http_port: 0,
        database_max_connections: 4,
        auth: test_auth(),
        // The tests write transfers' events into the store themselves, stopped where each
        // test needs them: no process may drive them on.
        transfer_process_enabled: false,
        ..command_service::Settings::default()
    };
    let command_app = command_service::Application::build(command_settings)
        .await
        .unwrap_or_else(|error| panic!("cannot start the command service: {error:?}"));
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
        command_service_url: options
            .command_service_url
            .clone()
            .unwrap_or(command.clone()),
        amqp_partitions: options.partitions,
        // Fast enough for a test to see the dead-letter gauge move.
        dead_letter_poll_interval_ms: 200,
        feed_follow_enabled: options.follow_feed,
        feed_poll_interval_ms: options.feed_poll_ms,
        command_service_token: Some(ServiceToken::new(query_service_token())),
        auth: test_auth(),
        ..query_service::Settings::default()
    };
    let query_app = query_service::Application::build(settings.clone())
        .await
        .unwrap_or_else(|error| panic!("cannot start the query service: {error:?}"));
    let query = format!("http://127.0.0.1:{}", query_app.port());
    let query_stop = CancellationToken::new();
    let query_task = tokio::spawn(query_app.run_until_stopped(query_stop.clone()));
    let leftovers = Leftovers {
        queues: broker_queues(&settings),
        exchanges: [
            settings.amqp_exchange.clone(),
            settings.dead_letter_exchange(),
            command_exchange.clone(),
        ]
        .into_iter()
        .chain(settings.partition_exchange())
        .collect(),
        mysql_databases: vec![format!("qs_test_{id}")],
        postgres_databases: vec![format!("qs_cmd_{id}")],
    };
    let (command_api, query_api) = (
        Api::new(&command).with_token(admin_token()),
        Api::new(&query).with_token(admin_token()),
    );
    let app = TestApp {
        client: query_api.http().clone(),
        query,
        command,
        command_api,
        query_api,
        settings,
        mysql_url,
        postgres_url: postgres_url(&format!("qs_cmd_{id}")),
        command_stop,
        query_stop,
        query_task: Some(query_task),
        leftovers: Some(leftovers),
    };
    if options.query_amqp_url == amqp_url() {
        app.wait_for_broker().await;
    }
    app
}

/// Every queue a query service with `settings` declares: its projection queues (the
/// partitions or the shared one) and the dead-letter queue.
pub(crate) fn broker_queues(settings: &query_service::Settings) -> Vec<String> {
    let mut queues = settings.projection_queues();
    queues.push(settings.dead_letter_queue());
    queues
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

    /// Posts to the command service, which must answer with a success.
    pub(crate) async fn command_post(&self, path: &str, body: Value) -> Value {
        self.command_api
            .post(path, &body)
            .await
            .expect_success(&format!("POST {path}"))
    }

    pub(crate) async fn command_get(&self, path: &str) -> Value {
        self.command_api
            .get(path)
            .await
            .expect(200, &format!("GET {path}"))
    }

    /// A read of the query service as an admin.
    pub(crate) async fn query_get(&self, path: &str) -> Reply {
        self.query_api.get(path).await
    }

    /// A read of the query service with `token` (`None`: no `Authorization` header).
    pub(crate) async fn query_as(&self, token: Option<&str>, path: &str) -> Reply {
        let api = Api::new(&self.query);
        match token {
            Some(token) => api.with_token(token).get(path).await,
            None => api.get(path).await,
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
        let Some(id) = created["id"].as_str() else {
            panic!("no id in {created}");
        };
        id.to_owned()
    }

    /// Runs a command on an account; returns the version it reached.
    pub(crate) async fn command(&self, id: &str, command: &str, body: Value) -> u64 {
        let reply = self
            .command_post(&format!("/accounts/{id}/{command}"), body)
            .await;
        let Some(version) = reply["version"].as_u64() else {
            panic!("no version in {reply}");
        };
        version
    }

    /// Creates and activates an account; returns its id.
    pub(crate) async fn active_account(&self, balance: &str, currency: &str) -> String {
        let id = self.create(balance, currency).await;
        self.command(&id, "activate", json!({})).await;
        id
    }

    /// The events of one account, from the command service, page after page.
    pub(crate) async fn stream(&self, id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from = Some(1);
        while let Some(version) = from {
            let page = self
                .command_get(&format!("/accounts/{id}/events?from_version={version}"))
                .await;
            events.extend(page["events"].as_array().cloned().unwrap_or_default());
            from = page["next_from_version"].as_u64();
        }
        events
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
            accounts.extend(
                reply.body["accounts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
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
            let id = account["id"].as_str().unwrap_or_default();
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
        Publisher {
            exchange: self.settings.amqp_exchange.clone(),
            broker: Broker::connect().await,
        }
    }

    /// Takes every message currently in the dead-letter queue.
    pub(crate) async fn dead_letters(&self) -> Vec<Vec<u8>> {
        let broker = Broker::connect().await;
        let bodies = broker.drain(&self.settings.dead_letter_queue()).await;
        broker.close().await;
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
            let Ok(stopped) = tokio::time::timeout(Duration::from_secs(10), task).await else {
                panic!("the query service did not stop within 10 s");
            };
            match stopped {
                Ok(Ok(())) => {}
                Ok(Err(error)) => panic!("the query service stopped with {error:?}"),
                Err(error) => panic!("the query service's task failed: {error}"),
            }
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
            .unwrap_or_else(|error| panic!("cannot reach {}: {error}", self.mysql_url))
    }
}

/// Publishes straight to the query service's exchange.
pub(crate) struct Publisher {
    exchange: String,
    broker: Broker,
}

impl Publisher {
    /// Publishes a body with a routing key, waiting for the broker's confirm.
    pub(crate) async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        correlation_id: Option<&str>,
    ) {
        let properties = json_properties()
            .with_headers(correlation_id.map(correlation_header).unwrap_or_default());
        self.broker
            .publish(&self.exchange, routing_key, body, properties)
            .await;
    }

    /// Publishes an event (a feed or stream item) as the relay does, `user_id`
    /// included (the test's broker user, whom the query service trusts).
    pub(crate) async fn publish_event(&self, event: &Value) {
        self.publish_event_as(Some(&broker_user()), event).await;
    }

    /// Publishes an event as the relay would, but with the `user_id` given (the
    /// broker refuses one that is not the connection's user).
    pub(crate) async fn publish_event_as(&self, user_id: Option<&str>, event: &Value) {
        let kind = event["type"].as_str().unwrap_or("Unknown");
        let mut properties = json_properties()
            .with_message_id(event["event_id"].as_str().unwrap_or_default().into())
            .with_type(kind.into());
        if let Some(user_id) = user_id {
            properties = properties.with_user_id(user_id.into());
        }
        // The relay's headers: the stream (which the partitions hash on) and the
        // correlation id when there is one.
        let mut headers = event["metadata"]["correlation_id"]
            .as_str()
            .map(correlation_header)
            .unwrap_or_default();
        if let Some(stream) = event["account_id"].as_str() {
            headers.insert(
                "account_id".into(),
                lapin::types::AMQPValue::LongString(stream.into()),
            );
        }
        properties = properties.with_headers(headers);
        let body = serde_json::to_vec(event).unwrap_or_else(|error| panic!("{error}"));
        // The relay's routing key (`account.<kind>` or `transfer.<kind>`); a made-up
        // type gets the `account.` one the junk tests expect.
        let routing_key = kind.parse::<shared_events::EventType>().map_or_else(
            |_| routing_key(kind),
            |known| known.routing_key().to_owned(),
        );
        self.broker
            .publish(&self.exchange, &routing_key, &body, properties)
            .await;
    }
}

/// The broker user of the test's AMQP URL: the query service's default publisher user.
pub(crate) fn broker_user() -> String {
    amqp_url()
        .parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|error| panic!("{} is not an AMQP URL: {error}", amqp_url()))
}

/// Opens an account by publishing its `AccountCreated` (schema version 2 with an
/// owner, or version 1 without) and a credit, as the relay would; waits until both
/// are projected and returns its id.
pub(crate) async fn seed(app: &TestApp, owner: Option<&str>, currency: &str) -> String {
    let id = uuid::Uuid::now_v7().to_string();
    let (schema_version, data) = match owner {
        Some(owner) => (
            2,
            json!({"initial_balance": "10.00", "currency": currency, "owner": owner}),
        ),
        None => (1, json!({"initial_balance": "10.00", "currency": currency})),
    };
    let event = |version, kind, schema_version, data| {
        synthetic_event(&id, version, kind, schema_version, data)
    };
    let publisher = app.publisher().await;
    publisher
        .publish_event(&event(1, "AccountCreated", schema_version, data))
        .await;
    publisher
        .publish_event(&event(2, "AccountActivated", 1, json!({})))
        .await;
    publisher
        .publish_event(&event(
            3,
            "AccountCredited",
            1,
            json!({"amount": "5.00", "currency": currency, "balance": "15.00"}),
        ))
        .await;
    app.account_at(&id, 3).await;
    id
}

/// An event of `account` as the command service would publish it.
pub(crate) fn synthetic_event(
    account: &str,
    version: u64,
    kind: &str,
    schema_version: i32,
    data: Value,
) -> Value {
    json!({
        "event_id": uuid::Uuid::new_v4(),
        "account_id": account,
        "version": version,
        "position": version,
        "type": kind,
        "schema_version": schema_version,
        "occurred_at": "2026-12-01T10:00:00.000001Z",
        "data": data,
        "metadata": {},
    })
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
