//! The configuration operators deploy with, run here. No Docker engine runs on these
//! machines, so this test reads `docker-compose.yml` as Compose would (anchors, merge
//! keys, `${VAR:-default}` with the defaults), takes the `environment` of the
//! command-service, query-service and rebuild services exactly as written, changes
//! only what the local servers require, starts both binaries with it, and runs a smoke
//! scenario. It fails when the file stops passing a variable the services need.
//!
//! What is changed, and why (`localize` applies exactly this, and prints it):
//! - the compose host names `postgres`, `mysql`, `rabbitmq`, `command-service` become
//!   127.0.0.1: each service runs here as a process, not in a compose network;
//! - Postgres: user `bank` becomes `postgres` (the local server knows only `root` and
//!   `postgres`, trust auth); the password stays (trust auth never asks for it);
//! - MariaDB: user `bank` with password `bank` becomes `root` without a password (the
//!   local server's only account);
//! - RabbitMQ: the per-service users (`command-service`, `query-service`) become
//!   `guest`/`guest` (the local broker's only user, allowed from loopback), and so does
//!   `AMQP_PUBLISHER_USER`, once checked to name the command service's broker user;
//! - `AUTH_JWT_SECRET_FILE` (a compose secret under `/run/secrets/`) becomes a file this
//!   test writes with 48 random bytes (hex), and `COMMAND_SERVICE_TOKEN_FILE` a file
//!   holding the token the compose `token` tool mints with it (the command service's
//!   binary, run with the tool's arguments and the command service's environment);
//! - the database names become this test's own (`e2e_test_<id>`, `e2e_read_<id>`): the
//!   local servers are shared with the developers' own `bank_events`/`bank_read` and with
//!   tests running in parallel;
//! - `HTTP_PORT` 8081/8082 become free ports, and `COMMAND_SERVICE_URL` follows the
//!   command service's: those ports may be taken here, where no container has its own
//!   network namespace.
//!
//! The smoke scenario's calls carry bearer tokens signed with that secret.
//!
//! Added, because the compose file leaves them to their defaults and several stacks
//! share one broker here: `AMQP_EXCHANGE` and `AMQP_QUEUE` (this test's own names), and
//! `HTTP_HOST=127.0.0.1` (listen on loopback only). The test checks that the file does
//! not set them, so that nothing it writes is overridden.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e_tests::Stack;
use e2e_tests::binaries::{Binary, ensure_built, profile_dir};
use e2e_tests::compose::ComposeFile;
use e2e_tests::process::Env;
use e2e_tests::stack::Names;
use reqwest::Url;
use serde_json::{Value, json};
use sqlx::Connection;
use test_support::Api;
use test_support::servers::{free_port, mysql_server, postgres_server};

/// A key source: the services refuse to start without one.
const KEY_SOURCE: &[&str] = &["AUTH_JWT_SECRET", "AUTH_JWT_SECRET_FILE", "AUTH_JWKS_FILE"];
/// The query service's token at the command service (`GET /events` needs it).
const COMMAND_SERVICE_TOKEN: &[&str] = &["COMMAND_SERVICE_TOKEN", "COMMAND_SERVICE_TOKEN_FILE"];

/// What each service cannot do without, per the contract and `docs/operations.md`:
/// every entry is a set of alternatives, one of which must be set.
const REQUIRED: [(&str, &[&[&str]]); 4] = [
    (
        "command-service",
        &[&["DATABASE_URL"], &["AMQP_URL"], &["HTTP_PORT"], KEY_SOURCE],
    ),
    (
        "query-service",
        &[
            &["DATABASE_URL"],
            &["AMQP_URL"],
            &["HTTP_PORT"],
            &["COMMAND_SERVICE_URL"],
            &["AMQP_PUBLISHER_USER"],
            KEY_SOURCE,
            COMMAND_SERVICE_TOKEN,
        ],
    ),
    (
        "rebuild",
        &[
            &["DATABASE_URL"],
            &["COMMAND_SERVICE_URL"],
            COMMAND_SERVICE_TOKEN,
        ],
    ),
    ("token", &[&["AUTH_JWT_SECRET", "AUTH_JWT_SECRET_FILE"]]),
];
/// Set by this test for isolation; the compose file must leave them to the defaults.
const ADDED: [&str; 3] = ["HTTP_HOST", "AMQP_EXCHANGE", "AMQP_QUEUE"];

const LOOPBACK: &str = "127.0.0.1";
/// The local broker's only user (its password is the same).
const LOCAL_BROKER_USER: &str = "guest";

/// The files that stand in for the compose secrets, in the stack's log directory.
struct Secrets {
    jwt_secret: PathBuf,
    command_service_token: PathBuf,
}

impl Secrets {
    /// Writes the HS256 secret: 48 random bytes, hex. The token file comes later,
    /// minted with that secret by [`mint_query_service_token`].
    #[expect(
        clippy::unwrap_used,
        reason = "a test helper: a failure here is the test's failure"
    )]
    fn write(names: &Names) -> Self {
        let dir = profile_dir().join("e2e-logs").join(&names.id);
        std::fs::create_dir_all(&dir).unwrap();
        let bytes: [u8; 48] = rand::random();
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let jwt_secret = dir.join("jwt-secret");
        std::fs::write(&jwt_secret, format!("{hex}\n")).unwrap();
        Self {
            jwt_secret,
            command_service_token: dir.join("command-service-token"),
        }
    }

    /// The file that replaces the compose secret a variable names.
    fn file_for(&self, variable: &str) -> Option<&Path> {
        match variable {
            "AUTH_JWT_SECRET_FILE" => Some(&self.jwt_secret),
            "COMMAND_SERVICE_TOKEN_FILE" => Some(&self.command_service_token),
            _ => None,
        }
    }

    /// The HS256 secret, as the services read it (trimmed).
    #[expect(
        clippy::unwrap_used,
        reason = "a test helper: a failure here is the test's failure"
    )]
    fn secret(&self) -> String {
        std::fs::read_to_string(&self.jwt_secret)
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// Interpolation sees no variable: what is checked is the file's own defaults, not
/// whatever this machine's environment holds.
fn no_variables(_: &str) -> Option<String> {
    None
}

fn compose_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml")
}

fn compose_file() -> ComposeFile {
    let path = compose_path();
    ComposeFile::load(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// A service's environment as the compose file writes it, checked for what it needs.
#[expect(
    clippy::expect_used,
    reason = "a test helper: a failure here is the test's failure"
)]
fn environment(compose: &ComposeFile, service: &str) -> Env {
    let env = compose
        .environment(service, &no_variables)
        .unwrap_or_else(|error| panic!("docker-compose.yml, service {service}: {error}"));
    let (_, required) = REQUIRED
        .iter()
        .find(|(name, _)| *name == service)
        .expect("a service this test knows");
    let missing: Vec<String> = required
        .iter()
        .filter(|alternatives| !alternatives.iter().any(|name| env.contains_key(*name)))
        .map(|alternatives| alternatives.join(" | "))
        .collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml no longer passes {missing:?} to {service}, which needs them"
    );
    for name in ADDED {
        assert!(
            !env.contains_key(name),
            "docker-compose.yml now sets {name} for {service}; this test would override it: revisit the test"
        );
    }
    env
}

/// Where this test runs what compose would run in containers.
struct Here<'a> {
    names: &'a Names,
    /// The files this test writes in place of the compose secrets.
    secrets: &'a Secrets,
    /// `HTTP_PORT` of the service being configured, here.
    port: u16,
    /// The command service's URL here, once it runs.
    command_url: Option<&'a str>,
    /// The command service's `HTTP_PORT` in the compose file.
    compose_command_port: &'a str,
    /// The user of the command service's `AMQP_URL` in the compose file.
    command_broker_user: Option<String>,
}

/// The environment of a compose service with exactly the substitutions listed at the
/// top of this file, plus the isolation variables; returns it with a note per change.
fn localize(service: &str, env: &Env, here: &Here<'_>) -> (Env, Vec<String>) {
    let mut local = Env::new();
    let mut notes = Vec::new();
    for (name, value) in env {
        let changed = if name == "HTTP_PORT" {
            here.port.to_string()
        } else if let Some(file) = here.secrets.file_for(name) {
            assert!(
                value.starts_with("/run/secrets/"),
                "{service}: {name}={value} is not a mounted compose secret"
            );
            file.display().to_string()
        } else if name == "AMQP_PUBLISHER_USER" {
            assert_eq!(
                Some(value),
                here.command_broker_user.as_ref(),
                "{service}: AMQP_PUBLISHER_USER must name the command service's broker user"
            );
            LOCAL_BROKER_USER.to_owned()
        } else {
            match Url::parse(value) {
                Ok(url) if url.host_str().is_some_and(is_compose_host) => {
                    localize_url(service, name, url, here)
                }
                _ => value.clone(),
            }
        };
        if &changed != value {
            notes.push(format!("{service}: {name}={value} -> {changed}"));
        }
        local.insert(name.clone(), changed);
    }
    let added = [
        ("HTTP_HOST", LOOPBACK.to_owned()),
        ("AMQP_EXCHANGE", here.names.exchange.clone()),
        ("AMQP_QUEUE", here.names.queue.clone()),
    ];
    for (name, value) in added {
        notes.push(format!("{service}: + {name}={value}"));
        local.insert(name.to_owned(), value);
    }
    (local, notes)
}

fn is_compose_host(host: &str) -> bool {
    [
        "postgres",
        "mysql",
        "rabbitmq",
        "command-service",
        "query-service",
    ]
    .contains(&host)
}

#[expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test helper: a failure here is the test's failure"
)]
fn localize_url(service: &str, name: &str, mut url: Url, here: &Here<'_>) -> String {
    let host = url.host_str().unwrap_or_default().to_owned();
    let set = |url: &mut Url, user: &str, password: Option<&str>, port: u16| {
        url.set_host(Some(LOOPBACK)).unwrap();
        url.set_port(Some(port)).unwrap();
        url.set_username(user).unwrap();
        url.set_password(password).unwrap();
    };
    match (url.scheme(), host.as_str()) {
        ("postgres" | "postgresql", "postgres") => {
            // The local server (or TEST_POSTGRES_URL's): its user, and its password if it
            // has one, else the compose file's, which trust auth ignores.
            let server = Url::parse(&postgres_server()).expect("the Postgres server's URL");
            let password = server.password().or(url.password()).map(str::to_owned);
            set(
                &mut url,
                server.username(),
                password.as_deref(),
                server.port().unwrap_or(5432),
            );
            url.set_host(server.host_str()).unwrap();
            url.set_path(&format!("/{}", here.names.postgres_db));
        }
        ("mysql", "mysql") => {
            set(&mut url, "root", None, 3306);
            url.set_path(&format!("/{}", here.names.mysql_db));
        }
        ("amqp", "rabbitmq") => set(&mut url, LOCAL_BROKER_USER, Some(LOCAL_BROKER_USER), 5672),
        ("http", "command-service") => {
            assert_eq!(
                url.port().map(|port| port.to_string()).as_deref(),
                Some(here.compose_command_port),
                "{service}: {name} must point at the command service's HTTP_PORT"
            );
            let command_url = here
                .command_url
                .unwrap_or_else(|| panic!("{service}: {name} points at the command service"));
            let path = url.path().trim_start_matches('/').to_owned();
            return format!("{command_url}/{path}")
                .trim_end_matches('/')
                .to_owned();
        }
        _ => panic!(
            "{service}: {name}={url} points at {host}, which this test does not know how to run here"
        ),
    }
    url.to_string()
}

/// The container port of each `ports` entry of a service.
fn published_container_ports(compose: &ComposeFile, service: &str) -> Vec<String> {
    compose
        .ports(service, &no_variables)
        .unwrap_or_else(|error| panic!("docker-compose.yml, service {service}: {error}"))
        .iter()
        .map(|port| port.rsplit(':').next().unwrap_or_default().to_owned())
        .collect()
}

async fn wait_ready_with_broker_up(api: &Api) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = api.get("/health/ready").await;
        assert_eq!(ready.status, 200, "{}: {}", api.base, ready.body);
        assert_eq!(ready.body["database"], "up", "{}", api.base);
        if ready.body["broker"] == "up" {
            return ready.body;
        }
        assert!(Instant::now() < deadline, "{}: {}", api.base, ready.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every line of a log is a JSON object (`LOG_FORMAT=json` was honoured).
fn json_lines(log: &Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    !lines.is_empty()
        && lines
            .iter()
            .all(|line| serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()))
}

#[tokio::test]
async fn the_compose_configuration_runs_a_smoke_scenario_on_the_local_servers() {
    let compose = compose_file();
    let command_compose = environment(&compose, "command-service");
    let query_compose = environment(&compose, "query-service");
    let rebuild_compose = environment(&compose, "rebuild");
    for (service, env) in [
        ("command-service", &command_compose),
        ("query-service", &query_compose),
    ] {
        assert!(
            published_container_ports(&compose, service).contains(&env["HTTP_PORT"]),
            "{service} listens on HTTP_PORT {} but compose publishes {:?}",
            env["HTTP_PORT"],
            compose.ports(service, &no_variables)
        );
    }
    assert_eq!(compose.command("rebuild").unwrap(), ["rebuild"]);

    let names = Names::fresh();
    let secrets = Secrets::write(&names);
    let compose_command_port = command_compose["HTTP_PORT"].clone();
    let command_broker_user = Url::parse(&command_compose["AMQP_URL"])
        .ok()
        .map(|url| url.username().to_owned());
    let command_here = Here {
        names: &names,
        secrets: &secrets,
        port: free_port(),
        command_url: None,
        compose_command_port: &compose_command_port,
        command_broker_user: command_broker_user.clone(),
    };
    let (command_env, mut notes) = localize("command-service", &command_compose, &command_here);

    // The compose `token` tool mints the query service's token with that secret.
    ensure_built();
    let token_env = localize("token", &environment(&compose, "token"), &command_here).0;
    let query_service_token = mint_with_the_token_tool(&compose, &token_env, &[]);
    std::fs::write(&secrets.command_service_token, &query_service_token).unwrap();
    let claims = claims_of(&query_service_token, &secrets.secret());
    assert_eq!(
        (&claims["sub"], &claims["scope"]),
        (&json!("query-service"), &json!("events:read")),
        "the token tool's default token is the query service's"
    );

    let mut query_notes = Vec::new();
    let mut stack = Stack::launch(names.clone(), command_env, |command_url| {
        let here = Here {
            names: &names,
            secrets: &secrets,
            port: free_port(),
            command_url: Some(command_url),
            compose_command_port: &compose_command_port,
            command_broker_user: command_broker_user.clone(),
        };
        let (env, changes) = localize("query-service", &query_compose, &here);
        query_notes = changes;
        env
    })
    .await;
    notes.append(&mut query_notes);
    eprintln!("substitutions:\n  {}", notes.join("\n  "));
    let admin = mint_with_the_token_tool(
        &compose,
        &token_env,
        &[
            "--sub",
            "admin",
            "--scope",
            test_support::auth::ADMIN_SCOPES,
        ],
    );
    let customer = mint_with_the_token_tool(
        &compose,
        &token_env,
        &[
            "--sub",
            e2e_tests::stack::CUSTOMER,
            "--scope",
            test_support::auth::CUSTOMER_SCOPES,
        ],
    );
    stack.use_tokens(&admin, &customer);
    for (api, path) in [(stack.command(), "/events"), (stack.query(), "/accounts")] {
        let refused = api_without_token(api).get(path).await;
        assert_eq!(
            refused.status, 401,
            "GET {}{path} without a token: {}",
            api.base, refused.body
        );
    }

    // Smoke: a client's first steps, read back through the query service.
    let created = stack.create("100.00", "MAD").await;
    stack.act(&created.id, "activate", json!({})).await;
    let credited = stack
        .act(&created.id, "credit", json!({"amount": "50.00"}))
        .await;
    let account = stack.read(&created.id, credited.version).await;
    assert_eq!(
        (&account["status"], &account["balance"], &account["version"]),
        (&json!("ACTIVE"), &json!("150.00"), &json!(3))
    );
    for api in [stack.command(), stack.query()] {
        assert_eq!(api.get("/health/live").await.status, 200, "{}", api.base);
        wait_ready_with_broker_up(api).await;
    }

    // What the compose file passes is what the services used.
    let mut postgres = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_server()))
        .await
        .unwrap();
    let databases: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&names.postgres_db)
        .fetch_one(&mut postgres)
        .await
        .unwrap();
    assert_eq!(databases, 1, "the command service used DATABASE_URL");
    let mut mysql = sqlx::MySqlConnection::connect(&mysql_server())
        .await
        .unwrap();
    let schemas: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?",
    )
    .bind(&names.mysql_db)
    .fetch_one(&mut mysql)
    .await
    .unwrap();
    assert_eq!(schemas, 1, "the query service used DATABASE_URL");
    let _ = postgres.close().await;
    let _ = mysql.close().await;
    for (service, env) in [
        ("command-service", &command_compose),
        ("query-service", &query_compose),
    ] {
        if env.get("LOG_FORMAT").map(String::as_str) == Some("json") {
            let log = stack.logs_dir().join(format!("{service}.log"));
            assert!(json_lines(&log), "{service} honoured LOG_FORMAT=json");
        }
    }

    // The compose `rebuild` tool, with its own environment, rebuilds the same model.
    let here = Here {
        names: &names,
        secrets: &secrets,
        port: free_port(),
        command_url: Some(&stack.command_service().url),
        compose_command_port: &compose_command_port,
        command_broker_user,
    };
    let (rebuild_env, _) = localize("rebuild", &rebuild_compose, &here);
    assert_eq!(
        rebuild_env.get("COMMAND_SERVICE_TOKEN_FILE"),
        Some(&secrets.command_service_token.display().to_string()),
        "rebuild reads the feed with the query service's token"
    );
    let status = stack.run_query_binary(&["rebuild"], rebuild_env).await;
    assert!(
        status.success(),
        "rebuild: {status}\n{}",
        stack.rebuild_log_tail()
    );
    assert_eq!(stack.read(&created.id, credited.version).await, account);
}

/// Runs the compose `token` tool here: its entrypoint's arguments after the binary
/// (`command-service token`), then `arguments` or, when empty, the tool's `command`,
/// with exactly `env`. Returns what it printed, trimmed.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure here is the test's failure"
)]
fn mint_with_the_token_tool(compose: &ComposeFile, env: &Env, arguments: &[&str]) -> String {
    let entrypoint = compose.entrypoint("token").unwrap();
    let (binary, subcommand) = entrypoint.split_first().unwrap();
    assert!(
        binary.ends_with("/command-service"),
        "the token tool runs the command service's binary, not {binary}"
    );
    let arguments: Vec<String> = if arguments.is_empty() {
        compose.command("token").unwrap()
    } else {
        arguments
            .iter()
            .map(|&argument| argument.to_owned())
            .collect()
    };
    let output = std::process::Command::new(Binary::CommandService.path())
        .args(subcommand)
        .args(&arguments)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "command-service {} {}: {}\n{}",
        subcommand.join(" "),
        arguments.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The claims of an HS256 token once its signature checks with `secret`.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure here is the test's failure"
)]
fn claims_of(token: &str, secret: &str) -> Value {
    let key = jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

/// The same service, without a token.
fn api_without_token(api: &Api) -> Api {
    Api::new(&api.base)
}

/// The compose file with every line that sets `variable` removed.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure here is the test's failure"
)]
fn compose_without(variable: &str) -> ComposeFile {
    let text = std::fs::read_to_string(compose_path()).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            !line
                .trim_start()
                .trim_start_matches("- ")
                .trim_start_matches('"')
                .starts_with(variable)
        })
        .collect();
    assert!(
        kept.len() < text.lines().count(),
        "{variable} is not set in the file"
    );
    ComposeFile::parse(&kept.join("\n")).unwrap()
}

#[test]
#[should_panic(expected = "no longer passes [\"COMMAND_SERVICE_URL\"] to query-service")]
fn a_compose_file_without_the_command_service_url_for_the_query_service_is_refused() {
    environment(&compose_without("COMMAND_SERVICE_URL"), "query-service");
}

#[test]
#[should_panic(expected = "no longer passes [\"DATABASE_URL\"] to command-service")]
fn a_compose_file_without_the_event_store_url_is_refused() {
    environment(&compose_without("DATABASE_URL"), "command-service");
}

#[test]
#[should_panic(
    expected = "no longer passes [\"AUTH_JWT_SECRET | AUTH_JWT_SECRET_FILE | AUTH_JWKS_FILE\"] to command-service"
)]
fn a_compose_file_without_a_key_source_is_refused() {
    environment(&compose_without("AUTH_JWT_SECRET_FILE"), "command-service");
}

#[test]
#[should_panic(
    expected = "no longer passes [\"AMQP_PUBLISHER_USER\", \"COMMAND_SERVICE_TOKEN | COMMAND_SERVICE_TOKEN_FILE\"] to query-service"
)]
fn a_compose_file_without_the_publisher_user_and_the_query_services_token_is_refused() {
    let text = std::fs::read_to_string(compose_path()).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            !line.starts_with("AMQP_PUBLISHER_USER") && !line.starts_with("COMMAND_SERVICE_TOKEN")
        })
        .collect();
    let compose = ComposeFile::parse(&kept.join("\n")).unwrap_or_else(|error| panic!("{error}"));
    environment(&compose, "query-service");
}
