//! The safety net beside the broker: follows the command service's global feed from
//! a stored checkpoint and projects whatever the broker did not deliver (a message
//! lost to a crash, a queue created after the event). Both paths go through the same
//! idempotent per-stream projection, so whichever comes second finds duplicates.

use std::time::Duration;

use service_kit::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::projection::{ProjectionError, Projector};

const MAX_BACKOFF: Duration = Duration::from_secs(10);

enum Step {
    /// The feed had nothing more.
    CaughtUp,
    /// A full page was projected; more may follow at once.
    More,
}

/// Follows the global feed until shutdown.
#[derive(Debug, Clone)]
pub(crate) struct FeedFollower {
    projector: Projector,
    batch_size: u32,
    interval: Duration,
}

impl FeedFollower {
    pub(crate) fn new(projector: Projector, batch_size: u32, interval: Duration) -> Self {
        Self {
            projector,
            batch_size: batch_size.clamp(1, 1000),
            interval,
        }
    }

    /// Polls the feed every `interval` once caught up, at once while behind.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.interval, MAX_BACKOFF);
        while !shutdown.is_cancelled() {
            let pause = match self.step().await {
                Ok(Step::More) => Duration::ZERO,
                Ok(Step::CaughtUp) => {
                    backoff.reset();
                    self.interval
                }
                Err(error) => {
                    tracing::warn!(error = %error, retry_in = ?backoff.current(), "feed follower failed");
                    backoff.next_delay()
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("feed follower stopped");
    }

    async fn step(&self) -> Result<Step, ProjectionError> {
        let store = self.projector.store();
        let tables = self.projector.tables();
        let (generation, position) = store.checkpoint(tables).await?;
        let after = u64::try_from(position).unwrap_or_default();
        let page = self.projector.source().feed(after, self.batch_size).await?;
        metrics::gauge!("projection_checkpoint_position").set(after as f64);
        if page.events.is_empty() {
            self.record_lag(after);
            return Ok(Step::CaughtUp);
        }
        let full = page.events.len() >= self.batch_size as usize;
        let outcome = self
            .projector
            .project_feed_page(page.events, "feed")
            .await?;
        if outcome.applied > 0 {
            tracing::info!(
                applied = outcome.applied,
                after,
                "feed follower projected events the broker had not delivered yet"
            );
        }
        let next = i64::try_from(page.next_after).unwrap_or(i64::MAX);
        if store
            .advance_checkpoint(tables, &generation, position, next)
            .await?
        {
            metrics::gauge!("projection_checkpoint_position").set(page.next_after as f64);
            self.record_lag(page.next_after);
        } else {
            tracing::debug!("the checkpoint moved meanwhile (another replica or a rebuild)");
        }
        Ok(if full { Step::More } else { Step::CaughtUp })
    }

    fn record_lag(&self, checkpoint: u64) {
        let behind = self.projector.highest_position().saturating_sub(checkpoint);
        metrics::gauge!("projection_feed_lag_events").set(behind as f64);
    }
}
