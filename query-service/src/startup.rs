//! Builds the application from settings and runs it until shutdown.

use std::time::Duration;

use anyhow::{Context, anyhow};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::consumer::{Consumer, ConsumerSettings};
use crate::follower::FeedFollower;
use crate::http::{AppState, router};
use crate::projection::Projector;
use crate::settings::Settings;
use crate::source::{CommandClient, TokenSource};
use crate::store::{LIVE, ReadStore};
use crate::topology::Topology;
use crate::watch::ProjectionWatch;
use service_kit::amqp::BrokerStatus;
use service_kit::auth::Authenticator;
use service_kit::http::ConnectionLimits;

/// How long the consumer may take to finish its in-flight messages on shutdown.
const CONSUMER_GRACE: Duration = Duration::from_secs(7);

/// A built, not yet running, query service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    store: ReadStore,
    consumer: Consumer,
    follower: Option<FeedFollower>,
    limits: ConnectionLimits,
    stop: CancellationToken,
}

impl Application {
    /// Opens (creating and migrating) the read model and binds the HTTP port. The
    /// broker is not needed yet: the consumer connects, and reconnects, in the background.
    /// Refuses to start without a key source for bearer tokens or a token for the
    /// command service.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let authenticator =
            Authenticator::new(&settings.auth).context("cannot check bearer tokens")?;
        let token = TokenSource::from_settings(&settings)
            .context("cannot authenticate to the command service")?;
        let publisher = settings.publisher_user().map_err(|e| anyhow!(e))?;
        let topology = Topology::from_settings(&settings).map_err(|e| anyhow!(e))?;
        let store = ReadStore::open(&settings.database_url, settings.database_max_connections)
            .await
            .with_context(|| {
                format!("cannot open the read model at {:?}", settings.database_url)
            })?;
        if !settings.feed_follow_enabled && store.flushes_each_commit().await == Some(false) {
            tracing::warn!(
                "the read model's server does not flush its log at every commit \
                 (innodb_flush_log_at_trx_commit): after a power loss, what it lost of the \
                 last second is projected again only by the feed follower, which is off \
                 (FEED_FOLLOW_ENABLED=false); see docs/operations.md, \"Read model durability\""
            );
        }
        let source = CommandClient::new(&settings.command_service_url, token)
            .context("cannot build the command service client")?;
        let watch = ProjectionWatch::default();
        let projector = Projector::new(store.clone(), &LIVE, source, watch.clone());
        let broker = BrokerStatus::new("connecting");
        let consumer = Consumer::new(
            projector.clone(),
            ConsumerSettings {
                amqp_url: settings.amqp_url.expose().to_owned(),
                topology,
                prefetch: settings.amqp_prefetch,
                publisher,
                dead_letter_poll: settings.dead_letter_poll_interval(),
            },
            broker.clone(),
        );
        let follower = settings.feed_follow_enabled.then(|| {
            FeedFollower::new(
                projector,
                settings.feed_batch_size,
                settings.feed_poll_interval(),
            )
        });
        let stop = CancellationToken::new();
        let state = AppState {
            store: store.clone(),
            watch,
            shutdown: stop.clone(),
        };
        let listener = service_kit::http::bind(&settings.http_host, settings.http_port).await?;
        Ok(Self {
            listener,
            router: router(state, broker, authenticator),
            store,
            consumer,
            follower,
            limits: settings.connections,
            stop,
        })
    }

    /// The bound HTTP port (useful when configured as 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves and projects until `shutdown`, then stops consuming, finishes the
    /// in-flight messages and requests, and returns. Stops early, with the reason as
    /// the error, when the broker refuses the projection's queues or exchanges.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), "query service listening");
        let stop = self.stop.clone();
        let link = tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.cancelled().await;
                stop.cancel();
            }
        });
        let consumer = tokio::spawn({
            let stop = stop.clone();
            let consumer = self.consumer;
            async move {
                let outcome = consumer.run(stop.clone()).await;
                if outcome.is_err() {
                    stop.cancel();
                }
                outcome
            }
        });
        let follower = self.follower.map(|f| tokio::spawn(f.run(stop.clone())));
        let served = service_kit::http::serve_with_limits(
            self.listener,
            self.router,
            stop.clone(),
            &self.limits,
        )
        .await
        .context("HTTP server failed");
        stop.cancel();
        link.abort();
        let refused = match tokio::time::timeout(CONSUMER_GRACE, consumer).await {
            Ok(Ok(Err(refused))) => Some(refused),
            Ok(_) => None,
            Err(_) => {
                tracing::warn!(
                    "projection consumer did not stop in time; its unacknowledged messages return to the queue"
                );
                None
            }
        };
        if let Some(follower) = follower
            && tokio::time::timeout(Duration::from_secs(1), follower)
                .await
                .is_err()
        {
            tracing::warn!("feed follower did not stop in time");
        }
        self.store.pool().close().await;
        tracing::info!("query service stopped");
        match refused {
            Some(refused) => {
                Err(anyhow!(refused).context("cannot consume the projection's queues"))
            }
            None => served,
        }
    }
}
