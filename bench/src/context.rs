//! The run's resources (service processes, databases, pools, broker objects), held in
//! one place so that they are cleaned up whatever happens.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::{MySqlPool, PgPool};

use crate::broker::Broker;
use crate::load::Target;
use crate::options::Options;
use crate::peers::python::Peer;
use crate::phases::rss::Peaks;
use crate::plan::Plan;
use crate::procs::Service;
use crate::tokens::Tokens;
use crate::{mariadb, pg};

/// The query service's default `AMQP_PARTITIONS` (the benchmark runs it with defaults).
const QUERY_PARTITIONS: u16 = 8;

/// Roles of the service processes.
pub(crate) const COMMAND: &str = "command-service";
pub(crate) const QUERY: &str = "query-service";
pub(crate) const SMALL: &str = "command-service on the small store";
pub(crate) const BIG: &str = "command-service on the big store";
pub(crate) const REBUILD: &str = "query-service rebuild";
pub(crate) const GROWTH_QUERY: &str = "query-service on the big store";
pub(crate) const REPLICAS_COMMAND: &str = "command-service of the replica runs";

/// The run's resources, so that they are cleaned up whatever happens.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) opts: Options,
    pub(crate) plan: Plan,
    pub(crate) run: String,
    pub(crate) dir: PathBuf,
    /// The services' secret and the tokens the load sends.
    pub(crate) tokens: Tokens,
    /// Sends the operator's token with every request.
    pub(crate) http: reqwest::Client,
    pub(crate) broker: Option<Broker>,
    pub(crate) pg_databases: Vec<String>,
    pub(crate) mysql_databases: Vec<String>,
    /// Broker objects a phase named for itself, deleted with the others.
    pub(crate) queues: Vec<String>,
    pub(crate) exchanges: Vec<String>,
    pub(crate) services: BTreeMap<&'static str, Service>,
    pub(crate) peaks: Peaks,
    pub(crate) main_pool: Option<PgPool>,
    pub(crate) read_pool: Option<MySqlPool>,
    pub(crate) small_pool: Option<PgPool>,
    pub(crate) big_pool: Option<PgPool>,
    /// The Python peer, once installed.
    pub(crate) peer: Option<Peer>,
    /// Whether the query-service binary was built (phases that need it are skipped otherwise).
    pub(crate) has_query: bool,
}

impl Ctx {
    /// A run named `run` with its logs in `dir`; nothing is started yet.
    pub(crate) fn new(
        opts: Options,
        plan: Plan,
        run: String,
        dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let tokens = Tokens::generate()?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", tokens.admin).parse()?,
        );
        Ok(Self {
            has_query: opts.bin_dir.join("query-service").is_file(),
            opts,
            plan,
            run,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .default_headers(headers)
                .build()?,
            tokens,
            broker: None,
            pg_databases: Vec::new(),
            mysql_databases: Vec::new(),
            queues: Vec::new(),
            exchanges: Vec::new(),
            services: BTreeMap::new(),
            peaks: Peaks::default(),
            main_pool: None,
            read_pool: None,
            small_pool: None,
            big_pool: None,
            peer: None,
        })
    }

    /// The name of one of the run's databases.
    pub(crate) fn name(&self, suffix: &str) -> String {
        format!("bench_{}_{suffix}", self.run)
    }

    /// The main command service's exchange.
    pub(crate) fn exchange(&self) -> String {
        format!("bench.{}.events", self.run)
    }

    /// Where the command service of the replica runs publishes; its queues' prefix.
    pub(crate) fn replicas_exchange(&self) -> String {
        format!("bench.{}.replicas", self.run)
    }

    pub(crate) fn growth_exchange(&self) -> String {
        format!("bench.{}.growth", self.run)
    }

    /// The queue of the query service on the big store.
    pub(crate) fn growth_queue(&self) -> String {
        format!("bench.{}.growth-projection", self.run)
    }

    /// The projection's queue setting (`AMQP_QUEUE`): its partitions' prefix.
    pub(crate) fn queue(&self) -> String {
        format!("bench.{}.projection", self.run)
    }

    /// The queues the query service consumes for the queue setting `queue`: its
    /// partitions (the service's default count).
    pub(crate) fn partitions(queue: &str) -> Vec<String> {
        service_kit::amqp::partition_queues(queue, QUERY_PARTITIONS)
    }

    /// Where the relay publishes when there is no query service.
    pub(crate) fn sink(&self) -> String {
        format!("bench.{}.sink", self.run)
    }

    /// Where the command service beside the cqrs-es peer publishes, and its queue.
    pub(crate) fn cqrs_exchange(&self) -> String {
        format!("bench.{}.cqrs", self.run)
    }

    pub(crate) fn cqrs_queue(&self) -> String {
        format!("bench.{}.cqrs", self.run)
    }

    pub(crate) fn raw_exchange(&self) -> String {
        format!("bench.{}.raw", self.run)
    }

    pub(crate) fn raw_queue(&self) -> String {
        format!("bench.{}.raw", self.run)
    }

    pub(crate) fn binary(&self, name: &str) -> PathBuf {
        self.opts.bin_dir.join(name)
    }

    pub(crate) fn broker(&self) -> anyhow::Result<&Broker> {
        self.broker.as_ref().context("not connected to RabbitMQ")
    }

    pub(crate) fn pool(pool: Option<&PgPool>) -> anyhow::Result<&PgPool> {
        pool.context("database not prepared (an earlier step failed)")
    }

    pub(crate) fn service(&self, role: &str) -> anyhow::Result<&Service> {
        self.services
            .get(role)
            .with_context(|| format!("{role} is not running (an earlier step failed)"))
    }

    /// Where a load sends its requests to the service `role`, with the operator's token.
    pub(crate) fn target(&self, role: &str) -> anyhow::Result<Target> {
        Target::new(self.service(role)?.addr(), &self.tokens.admin)
    }

    pub(crate) async fn start_command(
        &mut self,
        role: &'static str,
        database: &str,
        exchange: &str,
    ) -> anyhow::Result<()> {
        let env = [
            (
                "DATABASE_URL",
                pg::database_url(&self.opts.postgres, database),
            ),
            ("AMQP_URL", self.opts.amqp.clone()),
            ("AMQP_EXCHANGE", exchange.to_owned()),
            ("AUTH_JWT_SECRET", self.tokens.secret().to_owned()),
        ];
        let log = self.dir.join(format!("{}.log", role.replace(' ', "-")));
        let mut service = Service::start(role, &self.binary("command-service"), &[], &env, &log)?;
        service
            .wait_ready(&self.http, Duration::from_secs(60))
            .await?;
        self.services.insert(role, service);
        Ok(())
    }

    pub(crate) fn query_env(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        Ok(vec![
            (
                "DATABASE_URL",
                mariadb::database_url(&self.opts.mysql, &self.name("read")),
            ),
            ("AMQP_URL", self.opts.amqp.clone()),
            ("AMQP_EXCHANGE", self.exchange()),
            ("AMQP_QUEUE", self.queue()),
            ("COMMAND_SERVICE_URL", self.service(COMMAND)?.base_url()),
            ("COMMAND_SERVICE_TOKEN", self.tokens.query_service.clone()),
            ("AUTH_JWT_SECRET", self.tokens.secret().to_owned()),
        ])
    }

    /// Starts the live query service without waiting for it.
    pub(crate) fn spawn_query(&mut self) -> anyhow::Result<()> {
        let env = self.query_env()?;
        let log = self.dir.join("query-service.log");
        let service = Service::start(QUERY, &self.binary("query-service"), &[], &env, &log)?;
        self.services.insert(QUERY, service);
        Ok(())
    }

    pub(crate) async fn wait_query(&mut self) -> anyhow::Result<()> {
        let queue = self.queue();
        let http = self.http.clone();
        let service = self
            .services
            .get_mut(QUERY)
            .context("query service not started")?;
        service.wait_ready(&http, Duration::from_secs(60)).await?;
        self.broker()?
            .wait_for_consumers(&Self::partitions(&queue), Duration::from_secs(30))
            .await
    }

    /// Stops a service and records its memory peak.
    pub(crate) async fn stop(&mut self, role: &'static str) {
        if let Some(service) = self.services.remove(role) {
            let peak = service.stop().await;
            self.record_peak(role, peak);
        }
    }

    pub(crate) fn record_peak(&mut self, role: &'static str, kib: u64) {
        self.peaks.record(role, kib);
    }

    /// Stops every process, closes the pools and drops what the run made (unless `--keep`).
    pub(crate) async fn cleanup(&mut self) {
        let roles: Vec<&'static str> = self.services.keys().copied().collect();
        for role in roles {
            self.stop(role).await;
        }
        for pool in [
            self.main_pool.take(),
            self.small_pool.take(),
            self.big_pool.take(),
        ]
        .into_iter()
        .flatten()
        {
            pool.close().await;
        }
        if let Some(pool) = self.read_pool.take() {
            pool.close().await;
        }
        if self.opts.keep {
            progress!(
                "--keep: leaving databases bench_{}_* and broker objects bench.{}.*",
                self.run,
                self.run
            );
        } else {
            for name in std::mem::take(&mut self.pg_databases) {
                if let Err(error) = pg::drop_database(&self.opts.postgres, &name).await {
                    progress!("cannot drop Postgres database {name}: {error:#}");
                }
            }
            for name in std::mem::take(&mut self.mysql_databases) {
                if let Err(error) = mariadb::drop_database(&self.opts.mysql, &name).await {
                    progress!("cannot drop MariaDB database {name}: {error:#}");
                }
            }
            let exchange = self.exchange();
            let growth = self.growth_exchange();
            let mut queues = vec![
                self.queue(),
                self.growth_queue(),
                format!("{growth}.dlq"),
                self.sink(),
                self.raw_queue(),
                self.cqrs_queue(),
                format!("{exchange}.dlq"),
            ];
            queues.extend(Self::partitions(&self.queue()));
            queues.extend(Self::partitions(&self.growth_queue()));
            queues.append(&mut self.queues);
            let replicas = self.replicas_exchange();
            let mut exchanges = vec![
                exchange.clone(),
                format!("{exchange}.dlx"),
                format!("{growth}.dlx"),
                growth,
                self.raw_exchange(),
                self.cqrs_exchange(),
                service_kit::amqp::partition_exchange(&self.queue()),
                service_kit::amqp::partition_exchange(&self.growth_queue()),
                format!("{replicas}.dlx"),
                replicas,
            ];
            exchanges.append(&mut self.exchanges);
            if let Some(broker) = &self.broker {
                broker.delete(&queues, &exchanges).await;
            }
        }
        if let Some(broker) = self.broker.take() {
            broker.close().await;
        }
    }
}
