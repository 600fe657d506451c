//! In-process notifications of projected versions, so that a read waiting for
//! `min_version` (or for a transfer to end) is woken by the projection instead of
//! polling the database. Channels are keyed by stream id: an account's or a transfer's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

type Channels = Arc<Mutex<HashMap<Uuid, watch::Sender<i64>>>>;

/// The pauses of a bounded wait between reads of the database it was not woken for:
/// another replica may have projected the stream (its partition is active there), and
/// only this process's writes wake its waiters. Short at first, since a projection
/// takes milliseconds, then doubling up to [`Recheck::LONGEST`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recheck(Duration);

impl Recheck {
    const FIRST: Duration = Duration::from_millis(5);
    const LONGEST: Duration = Duration::from_millis(200);

    pub(crate) fn new() -> Self {
        Self(Self::FIRST)
    }

    /// The pause before the next read.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (pause * 2).min(Self::LONGEST);
        pause
    }
}

/// Per-account channels of the latest version known to be projected. A channel
/// exists only while someone waits on that account.
#[derive(Debug, Clone, Default)]
pub struct ProjectionWatch {
    channels: Channels,
}

impl ProjectionWatch {
    /// Starts listening for versions of `account` projected from now on.
    pub(crate) fn subscribe(&self, account: Uuid) -> Subscription {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = channels
            .entry(account)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            account,
            receiver,
            channels: Arc::clone(&self.channels),
        }
    }

    /// Tells the waiters of `account` that the projection holds `version` (or more).
    pub(crate) fn publish(&self, account: Uuid, version: i64) {
        let channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = channels.get(&account) {
            sender.send_if_modified(|known| {
                let wake = version >= *known;
                *known = (*known).max(version);
                wake
            });
        }
    }
}

/// A waiter's end of an account's channel.
#[derive(Debug)]
pub(crate) struct Subscription {
    account: Uuid,
    receiver: watch::Receiver<i64>,
    channels: Channels,
}

impl Subscription {
    /// Waits until a version of the account is published after the last call.
    pub(crate) async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        // This subscription's receiver still counts until the end of `drop`.
        if channels
            .get(&self.account)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            channels.remove(&self.account);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiter_is_woken_by_a_publication_and_the_channel_goes_away_after() {
        let watch = ProjectionWatch::default();
        let account = Uuid::new_v4();
        let mut subscription = watch.subscribe(account);
        let publisher = watch.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            publisher.publish(account, 3);
        });
        tokio::time::timeout(Duration::from_secs(2), subscription.changed())
            .await
            .unwrap();
        drop(subscription);
        assert!(watch.channels.lock().unwrap().is_empty());
    }

    #[test]
    fn rechecks_start_short_and_double_up_to_the_longest() {
        let mut recheck = Recheck::new();
        let pauses: Vec<u128> = (0..8).map(|_| recheck.next_pause().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 200, 200]);
    }

    #[test]
    fn publishing_without_waiters_keeps_nothing() {
        let watch = ProjectionWatch::default();
        watch.publish(Uuid::new_v4(), 1);
        assert!(watch.channels.lock().unwrap().is_empty());
    }
}
