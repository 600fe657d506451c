//! The shared servers of the machine (see `shared/services.md`): the suite creates its
//! own databases, exchanges and queues on them and never stops them.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::OnceLock;
use std::time::Duration;

/// RabbitMQ as the services reach it directly.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The broker's address, for a proxy in front of it.
pub const AMQP_ADDRESS: &str = "127.0.0.1:5672";
/// MariaDB/MySQL server (root, no password); a database name is appended.
pub const MYSQL_SERVER: &str = "mysql://root@127.0.0.1:3306";

/// Postgres server (trust auth, user `postgres`); `TEST_POSTGRES_URL` overrides it, as
/// for the other crates' tests. A database name is appended.
pub fn postgres_server() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .map(|url| url.trim_end_matches('/').to_owned())
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Amqp URL of the broker behind a local proxy listening on `port`.
pub fn amqp_url_via(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

struct Server {
    name: &'static str,
    url: String,
    start: &'static str,
}

fn servers() -> [Server; 3] {
    [
        Server {
            name: "PostgreSQL",
            url: postgres_server(),
            start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        },
        Server {
            name: "MariaDB",
            url: MYSQL_SERVER.to_owned(),
            start: "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
        },
        Server {
            name: "RabbitMQ",
            url: AMQP_URL.to_owned(),
            start: "rabbitmq-server -detached && rabbitmqctl await_startup",
        },
    ]
}

/// Fails the test, saying how to start them, when a server is not listening.
pub fn ensure_reachable() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = CHECKED.get_or_init(|| {
        let down: Vec<String> = servers()
            .iter()
            .filter(|server| !listening(&server.url))
            .map(|server| {
                format!(
                    "  {} is not reachable at {}; start it (as root) with: {}",
                    server.name, server.url, server.start
                )
            })
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the end-to-end tests need the local servers of shared/services.md:\n{}",
                down.join("\n")
            ))
        }
    });
    if let Err(message) = outcome {
        panic!("{message}");
    }
}

fn listening(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let default_port = match url.scheme() {
        "postgres" | "postgresql" => 5432,
        "mysql" | "mariadb" => 3306,
        _ => 5672,
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let port = url.port().unwrap_or(default_port);
    (host, port)
        .to_socket_addrs()
        .into_iter()
        .flatten()
        .any(|address| TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free local port")
}
