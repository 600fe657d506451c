//! Builds the application from settings and runs it until shutdown.

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use event_store::EventStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::application::CommandHandler;
use crate::http::{AppState, encode_reply, router};
use crate::relay::Relay;
use crate::settings::Settings;
use crate::transfers::TransferProcess;
use service_kit::amqp::BrokerStatus;
use service_kit::auth::Authenticator;
use service_kit::http::ConnectionLimits;

/// A built, not yet running, command service.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    relay: Relay,
    /// `None` when this replica stays out of driving transfers.
    transfers: Option<TransferProcess>,
    store: EventStore,
    idempotency_retention: Duration,
    connections: ConnectionLimits,
}

impl Application {
    /// Checks the bearer-token keys, connects to (and migrates) the event store and
    /// binds the HTTP port. Without a usable key source it refuses to start.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let authenticator = Authenticator::new(&settings.auth)
            .context("the command service cannot authenticate requests")?;
        let store = EventStore::connect(
            settings.database_url.expose(),
            settings.database_max_connections,
        )
        .await
        .with_context(|| format!("cannot open the event store at {:?}", settings.database_url))?;
        let broker = BrokerStatus::new("standby");
        let relay = Relay {
            store: store.clone(),
            amqp_url: settings.amqp_url.expose().to_owned(),
            exchange: settings.amqp_exchange.clone(),
            batch_size: settings.relay_batch_size.clamp(1, 10_000),
            broker_timeout: Duration::from_millis(settings.relay_broker_timeout_ms.max(100)),
            status: broker.clone(),
            publisher_user: publisher_user(settings.amqp_url.expose()),
        };
        let handler = CommandHandler::new(store.clone(), encode_reply);
        let transfers = settings.transfer_process_enabled.then(|| TransferProcess {
            store: store.clone(),
            handler: handler.clone(),
        });
        let state = AppState {
            handler,
            store: store.clone(),
            command_timeout: settings.command_timeout(),
        };
        let listener = service_kit::http::bind(&settings.http_host, settings.http_port).await?;
        Ok(Self {
            listener,
            router: router(state, broker, authenticator),
            relay,
            transfers,
            store,
            idempotency_retention: Duration::from_secs(
                settings.idempotency_retention_hours.max(24) * 3600,
            ),
            connections: settings.connections,
        })
    }

    /// The bound HTTP port (useful when configured as 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown`, then drains requests and stops the relay and the
    /// transfer process.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(port = self.port(), "command service listening");
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        let transfers = self
            .transfers
            .map(|process| tokio::spawn(process.run(shutdown.clone())));
        let purge = tokio::spawn(purge_idempotency_keys(
            self.store.clone(),
            self.idempotency_retention,
            shutdown.clone(),
        ));
        service_kit::http::serve_with_limits(
            self.listener,
            self.router,
            shutdown.clone(),
            &self.connections,
        )
        .await
        .context("HTTP server failed")?;
        shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .is_err()
        {
            tracing::warn!(
                "outbox relay did not stop in time; unpublished events stay in the outbox"
            );
        }
        if let Some(transfers) = transfers
            && tokio::time::timeout(Duration::from_secs(2), transfers)
                .await
                .is_err()
        {
            tracing::warn!("transfer process did not stop in time; its steps resume on restart");
        }
        purge.abort();
        tracing::info!("command service stopped");
        Ok(())
    }
}

/// The user of the broker URL, which RabbitMQ requires as the `user_id` of every
/// message published on that connection (`guest` when the URL names none).
fn publisher_user(amqp_url: &str) -> String {
    amqp_url
        .parse::<lapin::uri::AMQPUri>()
        .map(|uri| uri.authority.userinfo.username)
        .unwrap_or_else(|_| "guest".to_owned())
}

async fn purge_idempotency_keys(
    store: EventStore,
    retention: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match store.purge_responses(retention).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "forgot expired idempotency keys"),
            Err(error) => tracing::warn!(error = %error, "cannot purge idempotency keys"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publisher_is_the_user_of_the_broker_url() {
        assert_eq!(
            publisher_user("amqp://relay:s3cret@broker:5672/%2f"),
            "relay"
        );
        assert_eq!(
            publisher_user("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "guest"
        );
    }
}
