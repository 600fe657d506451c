//! The shared servers (`shared/services.md`): the tests create their own databases,
//! exchanges and queues on them and never stop them.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use reqwest::Url;

/// A server the tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    MySql,
    RabbitMq,
}

impl Server {
    /// Every server of the machine.
    pub const ALL: [Self; 3] = [Self::Postgres, Self::MySql, Self::RabbitMq];

    fn name(self) -> &'static str {
        match self {
            Self::Postgres => "PostgreSQL",
            Self::MySql => "MariaDB/MySQL",
            Self::RabbitMq => "RabbitMQ",
        }
    }

    /// Its URL: for the databases without a database name, for the broker with its vhost.
    pub fn url(self) -> String {
        match self {
            Self::Postgres => postgres_server(),
            Self::MySql => mysql_server(),
            Self::RabbitMq => amqp_url(),
        }
    }

    fn variable(self) -> &'static str {
        match self {
            Self::Postgres => "TEST_POSTGRES_URL",
            Self::MySql => "TEST_MYSQL_URL",
            Self::RabbitMq => "TEST_AMQP_URL",
        }
    }

    /// The command that starts it, as root.
    fn start_command(self) -> &'static str {
        match self {
            Self::Postgres => {
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
            }
            Self::MySql => {
                "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
            }
            Self::RabbitMq => "rabbitmq-server -detached && rabbitmqctl await_startup",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Postgres => 5432,
            Self::MySql => 3306,
            Self::RabbitMq => 5672,
        }
    }

    /// `host:port` of the server, for a proxy in front of it.
    pub fn address(self) -> String {
        let url = parse(&self.url());
        format!(
            "{}:{}",
            url.host_str().unwrap_or("127.0.0.1"),
            url.port().unwrap_or(self.default_port())
        )
    }

    /// Its URL with the address replaced by a local proxy's `port`.
    pub fn url_via(self, port: u16) -> String {
        let mut url = parse(&self.url());
        if url.set_host(Some("127.0.0.1")).is_err() || url.set_port(Some(port)).is_err() {
            panic!("{} cannot be reached through a proxy", self.url());
        }
        url.as_str().trim_end_matches('/').to_owned()
    }

    fn listening(self) -> bool {
        let Some((host, port)) = self.address().rsplit_once(':').map(|(host, port)| {
            (
                host.trim_matches(['[', ']']).to_owned(),
                port.parse().unwrap_or(self.default_port()),
            )
        }) else {
            return false;
        };
        (host.as_str(), port)
            .to_socket_addrs()
            .into_iter()
            .flatten()
            .any(|address| TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok())
    }
}

fn parse(url: &str) -> Url {
    Url::parse(url).unwrap_or_else(|error| panic!("{url} is not a URL: {error}"))
}

fn server_url(variable: &str, default: &str) -> String {
    std::env::var(variable)
        .map(|url| url.trim_end_matches('/').to_owned())
        .unwrap_or_else(|_| default.to_owned())
}

/// Postgres (trust auth, user `postgres`), `TEST_POSTGRES_URL` overrides it; a database
/// name is appended.
pub fn postgres_server() -> String {
    server_url("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432")
}

/// MariaDB/MySQL (`root`, no password), `TEST_MYSQL_URL` overrides it; a database name
/// is appended.
pub fn mysql_server() -> String {
    server_url("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306")
}

/// RabbitMQ with its vhost, `TEST_AMQP_URL` overrides it.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The URL of one Postgres database.
pub fn postgres_url(database: &str) -> String {
    format!("{}/{database}", postgres_server())
}

/// The URL of one MariaDB/MySQL database.
pub fn mysql_url(database: &str) -> String {
    format!("{}/{database}", mysql_server())
}

/// Fails the test, saying how to start them, when some of these servers are not
/// listening.
pub fn require(servers: &[Server]) {
    let down: Vec<String> = servers
        .iter()
        .filter(|server| !server.listening())
        .map(|server| {
            format!(
                "  {} is not reachable at {}; start it (as root) with `{}`, or set {}",
                server.name(),
                server.url(),
                server.start_command(),
                server.variable()
            )
        })
        .collect();
    assert!(
        down.is_empty(),
        "the tests need the local servers of shared/services.md:\n{}",
        down.join("\n")
    );
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("no free local port: {error}"))
}
