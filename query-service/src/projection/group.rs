//! Group commit for the broker path: the batches that the queues hand over while a
//! transaction is running wait for it to end, then all go into the next one together.
//!
//! With eight partitions, a batch per queue held one or two events at moderate loads,
//! and each paid a whole transaction: the read model's server spent its time on
//! transactions rather than on rows. One transaction at a time, taking whatever waits,
//! grows with the load instead: the busier the queues, the more each commit carries.
//!
//! Measured with `bench/run.sh --only B1 --only lag` (same peak, 5808 commands/s), per
//! batch against shared: MariaDB's CPU at 10 % of peak 0.56 cores against 0.33, lag
//! p50 14.4 ms against 6.2 ms; at 50 %, lag p99 860 ms against 510 ms.
//!
//! A batch that shares a stream with an earlier waiting one goes into a later
//! transaction, so that each stream's events stay in order. Only the one transaction
//! is shared: a stream it cannot settle (a gap to fill, an event that cannot apply)
//! is projected by its own batch's caller, and holds up no other queue.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;
use uuid::Uuid;

use super::plan::{Candidate, Stream, Verdict};
use super::{ProjectionError, Projector};

/// A batch's streams with their candidates, each stream once.
pub(crate) type Streams = Arc<Vec<(Stream, Vec<Candidate>)>>;

/// The verdicts of the shared transaction for one batch's streams (by index in the
/// batch), or `None` when it failed.
type Settled = Option<Vec<(usize, Vec<Verdict>)>>;

/// A batch waiting for the shared transaction.
struct Waiting {
    streams: Streams,
    settled: oneshot::Sender<Settled>,
}

/// Projects the broker's batches, those handed over at the same time in one
/// transaction. Dropping the last clone aborts its task; a transaction in flight
/// then rolls back and its messages, never acknowledged, come back.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    projector: Projector,
    waiting: mpsc::UnboundedSender<Waiting>,
    _task: Arc<AbortOnDropHandle<()>>,
}

impl GroupCommit {
    /// Starts the task that runs the shared transactions of `path`'s batches.
    pub(crate) fn start(projector: Projector, path: &'static str) -> Self {
        let (waiting, queued) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(projector.clone(), queued, path));
        Self {
            projector,
            waiting,
            _task: Arc::new(AbortOnDropHandle::new(task)),
        }
    }

    /// Projects one batch; returns each stream's verdicts (one per candidate, in
    /// order) or why it must be retried, in the order of `streams`.
    pub(crate) async fn project(
        &self,
        streams: Streams,
        path: &'static str,
    ) -> Vec<Result<Vec<Verdict>, ProjectionError>> {
        self.projector.note_positions(&streams);
        let (settled, verdicts) = oneshot::channel();
        let waiting = Waiting {
            streams: Arc::clone(&streams),
            settled,
        };
        // Without the task, every stream takes the per-stream path.
        let together = match self.waiting.send(waiting) {
            Ok(()) => verdicts.await.ok().flatten(),
            Err(_) => None,
        };
        self.projector.settle_rest(&streams, together, path).await
    }
}

/// Runs one shared transaction after another, each taking every batch waiting when it
/// starts, until every sender is gone. One at a time measured best: with two in flight
/// (the next prepared while the previous commits) fewer batches shared a transaction at
/// low loads; lag p50 at 10 % of peak 11.4 ms against 5.6 and 6.2 ms with one, and
/// 14.4 ms with a transaction per batch (`bench/run.sh --only B1 --only lag`).
async fn run(
    projector: Projector,
    mut queued: mpsc::UnboundedReceiver<Waiting>,
    path: &'static str,
) {
    let mut held_back = Vec::new();
    loop {
        if held_back.is_empty() {
            match queued.recv().await {
                Some(first) => held_back.push(first),
                None => return,
            }
        }
        while let Ok(more) = queued.try_recv() {
            held_back.push(more);
        }
        let group;
        (group, held_back) = take_disjoint(held_back);
        commit(&projector, group, path).await;
    }
}

/// One shared transaction over `group`; each batch gets its share of the verdicts.
async fn commit(projector: &Projector, group: Vec<Waiting>, path: &'static str) {
    let streams: Vec<_> = group.iter().flat_map(|w| w.streams.iter()).collect();
    metrics::histogram!("projection_group_batches").record(group.len() as f64);
    let span = tracing::debug_span!(
        "project_group",
        batches = group.len(),
        streams = streams.len(),
        path
    );
    let together = projector
        .project_together(&streams, path)
        .instrument(span)
        .await;
    let mut together = projector.together_outcome(together, streams.len(), path);
    let mut offset = 0;
    for waiting in group {
        let count = waiting.streams.len();
        let settled = together.as_mut().map(|done| share(done, offset, count));
        offset += count;
        // A caller that went away leaves its messages unacknowledged: they come back
        // and are found projected.
        let _ = waiting.settled.send(settled);
    }
}

/// The waiting batches that go into the next transaction, in order, and those held
/// back: each that shares a stream with an earlier one (taken or held back).
fn take_disjoint(waiting: Vec<Waiting>) -> (Vec<Waiting>, Vec<Waiting>) {
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut taken = Vec::with_capacity(waiting.len());
    let mut held_back = Vec::new();
    for batch in waiting {
        let shares = batch
            .streams
            .iter()
            .any(|(stream, _)| seen.contains(&stream.id));
        seen.extend(batch.streams.iter().map(|(stream, _)| stream.id));
        if shares {
            held_back.push(batch);
        } else {
            taken.push(batch);
        }
    }
    (taken, held_back)
}

/// Takes out of `done` (indexes into the whole transaction's streams) the verdicts of
/// the `count` streams from `offset`, indexed from 0.
fn share(
    done: &mut Vec<(usize, Vec<Verdict>)>,
    offset: usize,
    count: usize,
) -> Vec<(usize, Vec<Verdict>)> {
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(done)
        .into_iter()
        .partition(|(index, _)| (offset..offset + count).contains(index));
    *done = rest;
    mine.into_iter()
        .map(|(index, verdicts)| (index - offset, verdicts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::plan::StreamKind;

    fn batch(ids: &[u128]) -> Waiting {
        let streams = ids
            .iter()
            .map(|&id| {
                let stream = Stream {
                    kind: StreamKind::Account,
                    id: Uuid::from_u128(id),
                };
                (stream, Vec::new())
            })
            .collect();
        Waiting {
            streams: Arc::new(streams),
            settled: oneshot::channel().0,
        }
    }

    fn ids(batches: &[Waiting]) -> Vec<Vec<u128>> {
        batches
            .iter()
            .map(|w| w.streams.iter().map(|(s, _)| s.id.as_u128()).collect())
            .collect()
    }

    #[test]
    fn batches_of_distinct_streams_all_go_into_the_transaction_in_order() {
        // Given three batches with no stream in common
        let waiting = vec![batch(&[1, 2]), batch(&[3]), batch(&[4, 5])];
        // When the next transaction's batches are taken
        let (taken, held_back) = take_disjoint(waiting);
        // Then all go, in the order they came
        assert_eq!(ids(&taken), vec![vec![1, 2], vec![3], vec![4, 5]]);
        assert!(held_back.is_empty());
    }

    #[test]
    fn a_batch_sharing_a_stream_with_an_earlier_one_waits_and_so_does_its_successor_on_it() {
        // Given a batch on stream 2 behind one holding stream 2, and a third one behind
        // the held-back one on stream 6
        let waiting = vec![batch(&[1, 2]), batch(&[2, 6]), batch(&[6]), batch(&[7])];
        // When the next transaction's batches are taken
        let (taken, held_back) = take_disjoint(waiting);
        // Then both later batches on those streams wait, in order; the unrelated one goes
        assert_eq!(ids(&taken), vec![vec![1, 2], vec![7]]);
        assert_eq!(ids(&held_back), vec![vec![2, 6], vec![6]]);
    }

    #[test]
    fn each_batch_gets_the_verdicts_of_its_own_streams_indexed_from_zero() {
        // Given the verdicts of a transaction over two batches of two streams each, one
        // stream left unsettled
        let mut done = vec![
            (0, vec![Verdict::Applied]),
            (1, vec![Verdict::Duplicate]),
            (3, vec![Verdict::Applied, Verdict::Applied]),
        ];
        // When they are shared out
        let first = share(&mut done, 0, 2);
        let second = share(&mut done, 2, 2);
        // Then each batch sees its own streams by its own index
        assert_eq!(
            first,
            vec![(0, vec![Verdict::Applied]), (1, vec![Verdict::Duplicate])]
        );
        assert_eq!(second, vec![(1, vec![Verdict::Applied, Verdict::Applied])]);
        assert!(done.is_empty());
    }
}
