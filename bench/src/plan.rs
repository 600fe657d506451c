//! Sizes and durations of a run: the default run and the `--quick` smoke run.

use std::time::Duration;

use crate::stats::Timing;

/// Sizes and durations of a run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) timing: Timing,
    pub(crate) repeats: usize,
    pub(crate) clients: Vec<usize>,
    /// Relay runs (each drains a freshly seeded batch of accounts) and B2 runs.
    pub(crate) relay_batches: u64,
    pub(crate) relay_batch_accounts: u64,
    pub(crate) relay_events_per_account: u64,
    /// Length of one B2 or B3 run.
    pub(crate) side_run: Duration,
    pub(crate) lag_fractions: Vec<f64>,
    pub(crate) lag_run: Duration,
    pub(crate) long_streams: Vec<u64>,
    pub(crate) growth_timing: Timing,
    pub(crate) big_events_per_account: u64,
    pub(crate) append_clients: usize,
    /// Idle `GET /accounts/{id}/updates` streams held open at once.
    pub(crate) open_streams: usize,
    pub(crate) peer_clients: Vec<usize>,
    pub(crate) peer_accounts: u64,
    /// Live load of each query-replica run (its backlog load is half of it).
    pub(crate) replicas_run: Duration,
    /// Optional phases are skipped once the run has taken this long.
    pub(crate) budget: Duration,
}

impl Plan {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                timing: Timing {
                    warmup: Duration::from_secs(1),
                    measure: Duration::from_secs(1),
                },
                repeats: 1,
                clients: vec![1, 4, 16, 64],
                relay_batches: 1,
                relay_batch_accounts: 2_000,
                relay_events_per_account: 5,
                side_run: Duration::from_secs(1),
                lag_fractions: vec![0.1, 0.5, 0.9],
                lag_run: Duration::from_secs(2),
                long_streams: vec![10, 1_000, 10_000],
                growth_timing: Timing {
                    warmup: Duration::from_millis(300),
                    measure: Duration::from_secs(1),
                },
                big_events_per_account: 10,
                append_clients: 16,
                open_streams: 1_000,
                peer_clients: vec![4],
                peer_accounts: 2_000,
                replicas_run: Duration::from_secs(3),
                budget: Duration::from_secs(5 * 60),
            }
        } else {
            Self {
                timing: Timing {
                    warmup: Duration::from_secs(1),
                    measure: Duration::from_secs(4),
                },
                repeats: 3,
                clients: vec![1, 4, 16, 64],
                relay_batches: 3,
                relay_batch_accounts: 4_000,
                relay_events_per_account: 5,
                side_run: Duration::from_secs(3),
                lag_fractions: vec![0.1, 0.5, 0.9],
                lag_run: Duration::from_secs(8),
                long_streams: vec![10, 10_000, 100_000],
                growth_timing: Timing {
                    warmup: Duration::from_millis(500),
                    measure: Duration::from_secs(3),
                },
                big_events_per_account: 100,
                append_clients: 16,
                open_streams: 10_000,
                peer_clients: vec![1, 4, 16],
                peer_accounts: 10_000,
                replicas_run: Duration::from_secs(10),
                budget: Duration::from_secs(17 * 60),
            }
        }
    }

    /// Accounts seeded in the main store (and in B1's and B3's).
    pub(crate) fn accounts(&self) -> u64 {
        self.relay_batches * self.relay_batch_accounts
    }
}
