//! One test's whole platform: the command service and the query service as processes,
//! on their own Postgres database, MySQL database, exchange and queue, on free ports.
//!
//! Dropped, it kills both services; after a passing test it also drops its databases,
//! queues, exchanges and logs. After a failing one it keeps them and prints where they
//! are, with the last lines of each service's log.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use test_support::auth::{TEST_JWT_SECRET, admin_token, customer_token, token};
use test_support::servers::{Server, amqp_url, free_port, mysql_url, postgres_url, require};
use test_support::{Api, Broker, Leftovers, names};

use crate::binaries::{Binary, ensure_built, profile_dir};
use crate::model::{Expected, account_view, operation_view};
use crate::process::{Env, Service};

/// Longest wait asked of `GET /accounts/{id}?min_version=` (the contract's maximum).
pub const WAIT_MS: u64 = 10_000;
/// How long a test waits at most for the projection to reach a version.
pub const CATCH_UP: Duration = Duration::from_secs(30);
/// The `sub` of the customer who opens and moves the accounts of a stack's helpers.
pub const CUSTOMER: &str = "e2e-customer";
/// The query service's default `AMQP_PARTITIONS`.
pub const DEFAULT_PARTITIONS: u16 = 8;
/// The `sub` of the query service's token at the command service.
pub const QUERY_SERVICE_SUB: &str = "query-service";

/// The query service's `COMMAND_SERVICE_TOKEN`: `events:read`, as operators mint it.
pub fn query_service_token() -> String {
    token(QUERY_SERVICE_SUB, "events:read")
}

/// The names that isolate one stack on the shared servers.
#[derive(Debug, Clone)]
pub struct Names {
    pub id: String,
    pub postgres_db: String,
    pub mysql_db: String,
    pub exchange: String,
    /// `AMQP_QUEUE`: the partitions' prefix (or the shared queue, without partitions).
    pub queue: String,
    /// `AMQP_PARTITIONS` of the query service (the service's default unless a test
    /// sets it with [`StackConfig::query_setting`]).
    pub partitions: u16,
}

impl Names {
    pub fn fresh() -> Self {
        let id = names::fresh_id();
        Self {
            postgres_db: format!("e2e_test_{id}"),
            mysql_db: format!("e2e_read_{id}"),
            exchange: format!("e2e.{id}"),
            queue: format!("e2e.{id}.projection"),
            partitions: DEFAULT_PARTITIONS,
            id,
        }
    }

    /// The queues the query service consumes: its partitions, or the shared queue.
    pub fn projection_queues(&self) -> Vec<String> {
        if self.partitions == 0 {
            vec![self.queue.clone()]
        } else {
            service_kit::amqp::partition_queues(&self.queue, self.partitions)
        }
    }

    /// Every queue the query service declares.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = self.projection_queues();
        queues.push(self.dead_letter_queue());
        queues
    }

    /// Every exchange the services declare.
    pub fn exchanges(&self) -> Vec<String> {
        vec![
            self.exchange.clone(),
            self.dead_letter_exchange(),
            service_kit::amqp::partition_exchange(&self.queue),
        ]
    }

    /// Where the query service dead-letters (`{exchange}.dlx`, kept in `{exchange}.dlq`).
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.exchange)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.exchange)
    }
}

/// How a stack is configured beyond its isolation.
#[derive(Debug, Clone)]
pub struct StackConfig {
    amqp_url: String,
    query_extra: Env,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            amqp_url: amqp_url(),
            query_extra: Env::new(),
        }
    }
}

impl StackConfig {
    /// Both services reach the broker at `url` (a proxy, for instance).
    pub fn broker(mut self, url: &str) -> Self {
        url.clone_into(&mut self.amqp_url);
        self
    }

    /// One more variable for the query service.
    pub fn query_setting(mut self, name: &str, value: &str) -> Self {
        self.query_extra.insert(name.to_owned(), value.to_owned());
        self
    }

    pub async fn start(self) -> Stack {
        let mut names = Names::fresh();
        if let Some(partitions) = self.query_extra.get("AMQP_PARTITIONS") {
            names.partitions = partitions
                .parse()
                .unwrap_or_else(|error| panic!("AMQP_PARTITIONS={partitions}: {error}"));
        }
        let rust_log = std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".to_owned());
        let command_env = Env::from([
            ("DATABASE_URL".into(), postgres_url(&names.postgres_db)),
            ("AMQP_URL".into(), self.amqp_url.clone()),
            ("AMQP_EXCHANGE".into(), names.exchange.clone()),
            ("HTTP_HOST".into(), "127.0.0.1".into()),
            ("HTTP_PORT".into(), free_port().to_string()),
            // The suite runs many stacks beside other crates' tests on one Postgres.
            ("DATABASE_MAX_CONNECTIONS".into(), "8".into()),
            ("AUTH_JWT_SECRET".into(), TEST_JWT_SECRET.into()),
            ("RUST_LOG".into(), rust_log.clone()),
        ]);
        let query_names = names.clone();
        let query_env = move |command_url: &str| {
            let mut env = Env::from([
                ("DATABASE_URL".into(), mysql_url(&query_names.mysql_db)),
                ("AMQP_URL".into(), self.amqp_url.clone()),
                ("AMQP_EXCHANGE".into(), query_names.exchange.clone()),
                ("AMQP_QUEUE".into(), query_names.queue.clone()),
                ("HTTP_HOST".into(), "127.0.0.1".into()),
                ("HTTP_PORT".into(), free_port().to_string()),
                ("COMMAND_SERVICE_URL".into(), command_url.to_owned()),
                ("COMMAND_SERVICE_TOKEN".into(), query_service_token()),
                ("AUTH_JWT_SECRET".into(), TEST_JWT_SECRET.into()),
                ("RUST_LOG".into(), rust_log),
            ]);
            env.extend(self.query_extra);
            env
        };
        Stack::launch(names, command_env, query_env).await
    }
}

/// A running platform, with two clients of each service: an operator's (every scope,
/// `sub` `admin`) and a customer's ([`CUSTOMER`], `accounts:read accounts:write`).
#[derive(Debug)]
pub struct Stack {
    pub names: Names,
    command: Service,
    query: Option<Service>,
    query_env: Env,
    logs: PathBuf,
    command_api: Api,
    query_api: Api,
    customer_command_api: Api,
    customer_query_api: Api,
}

/// A client of the service at `url` sending the admin token.
fn admin_client(url: &str) -> Api {
    Api::new(url).with_token(admin_token())
}

/// A client of the service at `url` sending the token of [`CUSTOMER`].
fn customer_client(url: &str) -> Api {
    Api::new(url).with_token(customer_token(CUSTOMER))
}

impl Stack {
    /// Both services on the shared servers, each test's own names, default settings.
    pub async fn start() -> Self {
        StackConfig::default().start().await
    }

    /// Starts the command service with `command_env`, then the query service with the
    /// environment `query_env` gives for the command service's URL.
    pub async fn launch(
        names: Names,
        command_env: Env,
        query_env: impl FnOnce(&str) -> Env,
    ) -> Self {
        require(&Server::ALL);
        ensure_built();
        let logs = profile_dir().join("e2e-logs").join(&names.id);
        std::fs::create_dir_all(&logs)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", logs.display()));
        let command = Service::start(
            Binary::CommandService,
            command_env,
            &logs.join("command-service.log"),
        )
        .await;
        let query = Service::start(
            Binary::QueryService,
            query_env(&command.url),
            &logs.join("query-service.log"),
        )
        .await;
        Self {
            command_api: admin_client(&command.url),
            query_api: admin_client(&query.url),
            customer_command_api: customer_client(&command.url),
            customer_query_api: customer_client(&query.url),
            query_env: query.env.clone(),
            names,
            command,
            query: Some(query),
            logs,
        }
    }

    /// The command service, as an operator (every scope).
    pub fn command(&self) -> &Api {
        &self.command_api
    }

    /// The query service, as an operator (every scope).
    pub fn query(&self) -> &Api {
        assert!(self.query.is_some(), "the query service is not running");
        &self.query_api
    }

    /// The command service, as [`CUSTOMER`], who opens the helpers' accounts.
    pub fn customer_command(&self) -> &Api {
        &self.customer_command_api
    }

    /// The query service, as [`CUSTOMER`].
    pub fn customer_query(&self) -> &Api {
        assert!(self.query.is_some(), "the query service is not running");
        &self.customer_query_api
    }

    /// From now on the stack's own clients send these tokens: `admin`'s for the
    /// operator's calls, `customer`'s (whose `sub` must be [`CUSTOMER`]) for the owner's.
    /// For services started with another secret than the tests' own.
    pub fn use_tokens(&mut self, admin: &str, customer: &str) {
        self.command_api = Api::new(&self.command.url).with_token(admin);
        self.customer_command_api = Api::new(&self.command.url).with_token(customer);
        let query_url = self.query_api.base.clone();
        self.query_api = Api::new(&query_url).with_token(admin);
        self.customer_query_api = Api::new(&query_url).with_token(customer);
    }

    /// A client of the command service sending `token` (none when `None`).
    pub fn command_with(&self, token: Option<&str>) -> Api {
        with_token(&self.command.url, token)
    }

    /// A client of the query service sending `token` (none when `None`).
    pub fn query_with(&self, token: Option<&str>) -> Api {
        with_token(&self.query().base, token)
    }

    pub fn command_service(&self) -> &Service {
        &self.command
    }

    /// Where the services' logs go (`command-service.log`, `query-service.log`, ...).
    pub fn logs_dir(&self) -> &std::path::Path {
        &self.logs
    }

    /// SIGKILLs the command service and starts it again with the same environment, on
    /// the same port (so the query service still reaches it at its URL).
    pub async fn restart_command_killed(&mut self) {
        self.command.kill();
        let env = self.command.env.clone();
        self.command = Service::start(
            Binary::CommandService,
            env,
            &self.logs.join("command-service-restarted.log"),
        )
        .await;
    }

    /// SIGKILLs the query service.
    pub fn kill_query(&mut self) {
        if let Some(mut query) = self.query.take() {
            query.kill();
        }
    }

    /// Starts the query service again with the same environment (on another port).
    pub async fn restart_query(&mut self) {
        self.kill_query();
        let mut env = self.query_env.clone();
        env.insert("HTTP_PORT".into(), free_port().to_string());
        let query = Service::start(
            Binary::QueryService,
            env,
            &self.logs.join("query-service.log"),
        )
        .await;
        self.query_api = admin_client(&query.url);
        self.customer_query_api = customer_client(&query.url);
        self.query_env = query.env.clone();
        self.query = Some(query);
    }

    /// Another query service replica on the same database and queues (its own port
    /// and log), with its client; it stops when dropped. It consumes every partition;
    /// the broker makes it active on those that have no active consumer yet.
    pub async fn query_replica(&self) -> (Service, Api) {
        let port = free_port();
        let mut env = self.query_env.clone();
        env.insert("HTTP_PORT".into(), port.to_string());
        let replica = Service::start(
            Binary::QueryService,
            env,
            &self.logs.join(format!("query-service-replica-{port}.log")),
        )
        .await;
        let api = admin_client(&replica.url);
        (replica, api)
    }

    /// Another command service replica on the same event store and exchange (its own
    /// port), with an operator's client; it stops when dropped.
    pub async fn command_replica(&self) -> (Service, Api) {
        let mut env = self.command.env.clone();
        env.insert("HTTP_PORT".into(), free_port().to_string());
        let replica = Service::start(
            Binary::CommandService,
            env,
            &self.logs.join("command-service-replica.log"),
        )
        .await;
        let api = admin_client(&replica.url);
        (replica, api)
    }

    /// From now on `replica` is the stack's query service (the one its helpers read
    /// from); the query service it had, if still running, is SIGKILLed.
    pub fn adopt_query(&mut self, replica: Service) {
        self.kill_query();
        self.query_api = admin_client(&replica.url);
        self.customer_query_api = customer_client(&replica.url);
        self.query_env = replica.env.clone();
        self.query = Some(replica);
    }

    /// Runs `query-service rebuild` with the query service's environment, to its end.
    pub async fn rebuild(&self) -> ExitStatus {
        self.run_query_binary(&["rebuild"], self.query_env.clone())
            .await
    }

    /// Runs the query service's binary with these arguments and exactly this
    /// environment, to its end (at most 60 s), its output in `rebuild.log`.
    pub async fn run_query_binary(&self, args: &[&str], env: Env) -> ExitStatus {
        let log = self.logs.join("rebuild.log");
        let mut run = Service::spawn(Binary::QueryService, args, env, &log);
        let status = run.wait_exit(Duration::from_secs(60)).await;
        status.unwrap_or_else(|| {
            panic!(
                "`query-service {}` did not finish within 60 s\n--- last lines of {} ---\n{}",
                args.join(" "),
                log.display(),
                run.log_tail(30)
            )
        })
    }

    pub fn rebuild_log_tail(&self) -> String {
        crate::process::tail(&self.logs.join("rebuild.log"), 30)
    }

    /// Waits until the query service consumes its queues, so that what is published
    /// from now on reaches it.
    pub async fn wait_for_consumer(&self, broker: &Broker) {
        for _ in 0..200 {
            let mut consumed = true;
            for queue in self.names.projection_queues() {
                consumed &= broker
                    .depth(&queue)
                    .await
                    .is_some_and(|depth| depth.consumers > 0);
            }
            if consumed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the query service never consumed {:?}\n{}",
            self.names.projection_queues(),
            self.log_tails()
        );
    }

    /// Messages waiting in the query service's projection queues (`None` while one
    /// of them does not exist).
    pub async fn projection_backlog(&self, broker: &Broker) -> Option<u32> {
        let mut backlog = 0;
        for queue in self.names.projection_queues() {
            backlog += broker.depth(&queue).await?.messages;
        }
        Some(backlog)
    }

    // ---- the command service, as a client uses it ----

    /// `POST /accounts` as [`CUSTOMER`], who owns the account; returns the id and
    /// version of the acknowledged creation.
    pub async fn create(&self, initial_balance: &str, currency: &str) -> Ack {
        let body = json!({"initial_balance": initial_balance, "currency": currency});
        let reply = self.customer_command_api.post("/accounts", &body).await;
        Ack::from(reply.expect(201, "create"))
    }

    /// `POST /accounts/{id}/{verb}`, which must succeed: credits and debits as the
    /// owner, [`CUSTOMER`]; the lifecycle (activate, suspend, ...) as an operator.
    pub async fn act(&self, id: &str, verb: &str, body: Value) -> Ack {
        let client = match verb {
            "credit" | "debit" => &self.customer_command_api,
            _ => &self.command_api,
        };
        let reply = client.post(&format!("/accounts/{id}/{verb}"), &body).await;
        Ack::from(reply.expect(200, verb))
    }

    /// A created and activated account.
    pub async fn active_account(&self, initial_balance: &str, currency: &str) -> Ack {
        let created = self.create(initial_balance, currency).await;
        self.act(&created.id, "activate", json!({})).await
    }

    /// The account's full stream at the command service, as read by its owner, page
    /// after page.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut from = Some(1);
        while let Some(version) = from {
            let mut page = self
                .customer_command_api
                .get(&format!("/accounts/{id}/events?from_version={version}"))
                .await
                .expect(200, "account events");
            match page["events"].take() {
                Value::Array(batch) => events.extend(batch),
                other => panic!("no events array: {other}"),
            }
            from = page["next_from_version"].as_u64();
        }
        events
    }

    /// The whole global feed of the command service (`events:read`, the operator's).
    pub async fn feed(&self) -> Vec<Value> {
        self.command_api.feed().await
    }

    // ---- the query service, as a client uses it ----

    /// `GET /accounts/{id}?min_version=..&wait_ms=10000` as the owner, [`CUSTOMER`],
    /// which must answer 200. A
    /// `504 not_yet_projected` is asked again until [`CATCH_UP`] has passed, so that a
    /// slow machine does not fail a test that only needs the projection to catch up.
    pub async fn read(&self, id: &str, min_version: u64) -> Value {
        let path = format!("/accounts/{id}?min_version={min_version}&wait_ms={WAIT_MS}");
        let deadline = Instant::now() + CATCH_UP;
        loop {
            let reply = self.customer_query().get(&path).await;
            match reply.status {
                200 => return reply.body,
                504 if Instant::now() < deadline => continue,
                status => panic!(
                    "GET {path} answered {status}: {}\n{}",
                    reply.body,
                    self.log_tails()
                ),
            }
        }
    }

    /// Every operation of an account as its owner sees them, following `next` with
    /// pages of `limit`.
    pub async fn operations(&self, id: &str, limit: u32) -> Vec<Value> {
        self.pages_of(
            self.customer_query(),
            &format!("/accounts/{id}/operations?limit={limit}"),
            "operations",
        )
        .await
        .into_iter()
        .flatten()
        .collect()
    }

    /// Every page of a listing as an operator sees it (`path` has a query string),
    /// following `next` to null.
    pub async fn pages(&self, path: &str, items: &str) -> Vec<Vec<Value>> {
        self.pages_of(self.query(), path, items).await
    }

    /// Every page of a listing as `client` sees it, following `next` to null.
    pub async fn pages_of(&self, client: &Api, path: &str, items: &str) -> Vec<Vec<Value>> {
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(after) => format!("{path}&after={after}"),
                None => path.to_owned(),
            };
            let mut page = client.get(&url).await.expect(200, &url);
            let batch = match page[items].take() {
                Value::Array(batch) => batch,
                other => panic!("GET {url}: no {items} array: {other}"),
            };
            pages.push(batch);
            match page["next"].take() {
                Value::Null => return pages,
                Value::String(next) => cursor = Some(next),
                other => panic!("GET {url}: next is neither a cursor nor null: {other}"),
            }
            assert!(pages.len() < 10_000, "GET {path}: paging never ends");
        }
    }

    /// Reads every account back once it reached its latest version at the command
    /// service, and checks that it shows exactly what its events say, operations too.
    pub async fn assert_read_model_exact(&self, ids: &[String]) -> Vec<Expected> {
        let checks = ids.iter().map(|id| async move {
            let expected = Expected::from_events(&self.events(id).await);
            let account = self.read(id, expected.version()).await;
            assert_eq!(
                account_view(&account),
                expected.account,
                "account {id} in the read model"
            );
            let operations: Vec<Value> = self
                .operations(id, 50)
                .await
                .iter()
                .map(operation_view)
                .collect();
            assert_eq!(
                operations, expected.operations,
                "operations of account {id} in the read model"
            );
            expected
        });
        futures::stream::iter(checks).buffered(8).collect().await
    }

    /// The last lines of each service's log.
    pub fn log_tails(&self) -> String {
        let mut text = format!(
            "--- last lines of {} ---\n{}",
            self.command.log.display(),
            self.command.log_tail(25)
        );
        let query_log = self.logs.join("query-service.log");
        text.push_str(&format!(
            "\n--- last lines of {} ---\n{}",
            query_log.display(),
            crate::process::tail(&query_log, 25)
        ));
        text
    }
}

/// A Prometheus sample of the service behind `api` (its `/metrics`), summed over the
/// label sets that contain every one of `labels` (`name="value"`).
pub async fn metric(api: &Api, name: &str, labels: &[&str]) -> f64 {
    let reply = api.get("/metrics").await;
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.body);
    let text = reply.body.as_str().unwrap_or_default().to_owned();
    text.lines()
        .filter(|line| {
            line.split(['{', ' ']).next() == Some(name)
                && labels.iter().all(|label| line.contains(label))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn with_token(url: &str, token: Option<&str>) -> Api {
    match token {
        Some(token) => Api::new(url).with_token(token),
        None => Api::new(url),
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.kill_query();
        self.command.kill();
        if std::thread::panicking() {
            eprintln!(
                "kept for inspection: Postgres database {}, MySQL database {}, exchange {}, queue {}, logs in {}\n{}",
                self.names.postgres_db,
                self.names.mysql_db,
                self.names.exchange,
                self.names.queue,
                self.logs.display(),
                self.log_tails()
            );
            return;
        }
        remove(&self.names);
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

/// Drops a stack's databases, queues and exchanges (best effort, bounded in time).
pub fn remove(names: &Names) {
    Leftovers {
        postgres_databases: vec![names.postgres_db.clone()],
        mysql_databases: vec![names.mysql_db.clone()],
        queues: names.queues(),
        exchanges: names.exchanges(),
    }
    .remove_blocking();
}

/// A command's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub id: String,
    pub version: u64,
    /// Present for credits and debits.
    pub balance: Option<String>,
}

impl From<Value> for Ack {
    fn from(body: Value) -> Self {
        Self {
            id: body["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no id in {body}"))
                .to_owned(),
            version: body["version"]
                .as_u64()
                .unwrap_or_else(|| panic!("no version in {body}")),
            balance: body["balance"].as_str().map(str::to_owned),
        }
    }
}
