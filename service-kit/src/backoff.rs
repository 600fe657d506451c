//! The one retry pause policy of the platform: exponential, capped, jittered.
//!
//! Every loop that retries (the relay, the projection consumer, the feed follower,
//! the command writers) asks a [`Backoff`] how long to wait, so a change of policy is
//! made here once. Jitter spreads tasks that fail together (a broker restart wakes
//! every consumer at once) so they do not retry in lock step.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// A growing pause between retries: `initial`, doubled after each failure up to `max`,
/// with up to half of each pause drawn at random.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// A policy starting at `initial` and never exceeding `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
        }
    }

    /// The pause the next wait would take at most (before jitter).
    pub const fn current(&self) -> Duration {
        self.current
    }

    /// The pause to take now; the next one will be twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        jittered(ceiling)
    }

    /// Back to the initial pause, after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// Sleeps for the next pause; `false` when `shutdown` fired first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let pause = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }
}

/// A pause between half of `ceiling` and `ceiling` ("equal jitter").
fn jittered(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    let half = nanos / 2;
    Duration::from_nanos(half + rand::rng().random_range(0..=nanos - half))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_stay_within_their_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        for ceiling in [100, 200, 400, 500, 500] {
            let pause = backoff.next_delay();
            assert!(pause >= Duration::from_millis(ceiling / 2), "{pause:?}");
            assert!(pause <= Duration::from_millis(ceiling), "{pause:?}");
        }
    }

    #[test]
    fn reset_starts_again_from_the_initial_pause() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        backoff.next_delay();
        backoff.next_delay();
        backoff.reset();
        assert_eq!(backoff.current(), Duration::from_millis(10));
    }

    #[tokio::test]
    async fn wait_returns_false_at_once_when_shut_down() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!backoff.wait(&shutdown).await);
    }
}
