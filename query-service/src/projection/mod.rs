//! The projection: applies each stream's events (an account's or a transfer's) to
//! the read model exactly once and in version order, whatever order and however many
//! times they arrive.
//!
//! An event at or below the stream's projected version is a duplicate when the read
//! model holds that very event there (`account_versions`, `transfer_versions`), a
//! conflict otherwise. The next version is applied in one transaction whose
//! `UPDATE ... WHERE version = ?` (or the row's primary key, for its first event)
//! makes concurrent writers (other replicas, the feed follower) lose cleanly and look
//! again. A version further ahead is a gap, filled first from the command service's
//! stream of that id. An account's transaction also adds what its events change to the
//! balance sheet's counters.
//!
//! - [`plan`]: pure decisions (what a run of events does to a row and to the balance
//!   sheet, each candidate's verdict); no clock, no I/O.
//! - [`backfill`]: gap filling over HTTP from the command service.
//! - this module: the orchestration, with one entry point per caller:
//!   [`Projector::project_deliveries`] for the broker consumer and
//!   [`Projector::project_feed_page`] for the feed follower and the rebuild.

mod backfill;
pub(crate) mod plan;
pub(crate) mod stages;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use service_kit::recent::RecentMap;
use shared_events::EventEnvelope;
use tracing::Instrument;
use uuid::Uuid;

use self::plan::transfer::TransferVersionRow;
use self::plan::{
    AccountRow, Candidate, Decisions, OperationRow, Origin, SheetDelta, Stream, StreamHead,
    StreamKind, StreamMutation, TransferRow, Verdict, VersionRow, next_run,
};
use self::stages::Stage;
use crate::source::{CommandClient, SourceError};
use crate::store::{Applied, Batch, ReadStore, Tables};
use crate::watch::ProjectionWatch;

/// Rounds of read-decide-write before a stream is given up as too contended.
const MAX_ROUNDS: usize = 16;
/// Streams projected at the same time within one batch.
const STREAM_CONCURRENCY: usize = 4;

/// A failure worth retrying: nothing about the events themselves is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("the read model is unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot fill a gap: {0}")]
    Source(#[from] SourceError),
    #[error("stream {0} kept changing under concurrent writers")]
    Contention(Uuid),
    #[error("the projection task stopped: {0}")]
    Stopped(String),
}

/// MySQL/MariaDB errors of the server as a whole, not of a statement: too many
/// connections, shutting down, lock wait timeout, deadlock, read-only (a failover).
const SERVER_WIDE_ERRORS: [u16; 6] = [1040, 1053, 1205, 1213, 1290, 1836];

impl ProjectionError {
    /// Whether the failure is an outage of the read model or of the command service
    /// (the events are fine and any other would fail alike), so that retrying in place,
    /// without counting a delivery against the broker's limit, is right. Other failures
    /// may be the events' own (a statement the database refuses, a stream the command
    /// service fails on, a panic): their messages go back to the queue, counted.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(error)) => error
                .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                .is_some_and(|error| SERVER_WIDE_ERRORS.contains(&error.number())),
            Self::Database(_) => true,
            Self::Source(error) => error.is_outage(),
            Self::Contention(_) | Self::Stopped(_) => false,
        }
    }
}

/// Counts of what a batch of events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: u64,
    pub duplicates: u64,
    pub poisoned: u64,
    /// Events at a version the read model holds with another event id.
    pub conflicts: u64,
}

/// A page of the global feed sorted by stream, with the events that cannot be decoded
/// counted as poison.
#[derive(Debug)]
pub struct SortedPage {
    streams: Vec<(Stream, Vec<Candidate>)>,
    outcome: BatchOutcome,
}

impl SortedPage {
    /// Decodes `events` and sorts them by stream, in feed order within each.
    pub fn sort(events: Vec<EventEnvelope>, path: &'static str) -> Self {
        let mut outcome = BatchOutcome::default();
        let mut streams: BTreeMap<Stream, Vec<Candidate>> = BTreeMap::new();
        for envelope in events {
            let (event_id, version, stream) =
                (envelope.event_id, envelope.version, envelope.account_id);
            match Candidate::decode(envelope, Origin::Delivered) {
                Ok(candidate) => streams
                    .entry(candidate.stream())
                    .or_default()
                    .push(candidate),
                Err(reason) => {
                    tracing::error!(%event_id, %stream, version, path, %reason, "skipping an event that cannot be projected");
                    metrics::counter!("projection_events_total", "path" => path, "outcome" => "poison")
                        .increment(1);
                    outcome.poisoned += 1;
                }
            }
        }
        Self {
            streams: streams.into_iter().collect(),
            outcome,
        }
    }
}

/// Applies events to one set of tables.
#[derive(Debug, Clone)]
pub struct Projector {
    store: ReadStore,
    tables: &'static Tables,
    source: CommandClient,
    watch: ProjectionWatch,
    highest_position: Arc<AtomicU64>,
    /// The rows as this projector last wrote them, when it is their only writer.
    written: Option<Arc<Mutex<WrittenRows>>>,
}

/// The account and transfer rows a sole writer committed last, so that a batch reads
/// only the rows it does not hold (none while it holds every row it ever wrote).
#[derive(Debug)]
struct WrittenRows {
    accounts: RecentMap<Uuid, AccountRow>,
    transfers: RecentMap<Uuid, TransferRow>,
}

impl WrittenRows {
    /// The rows held of `accounts` and `transfers`, and the ids whose rows must be read.
    fn split(&self, accounts: Vec<Uuid>, transfers: Vec<Uuid>) -> (Rows, (Vec<Uuid>, Vec<Uuid>)) {
        let (held_accounts, read_accounts) = held(&self.accounts, accounts);
        let (held_transfers, read_transfers) = held(&self.transfers, transfers);
        (
            (held_accounts, held_transfers),
            (read_accounts, read_transfers),
        )
    }

    fn keep(&mut self, writes: &BatchWrites) {
        for row in writes.opened.iter().chain(&writes.moved) {
            self.accounts.keep(row.id, row.clone());
        }
        for row in writes
            .opened_transfers
            .iter()
            .chain(&writes.moved_transfers)
        {
            self.transfers.keep(row.id, row.clone());
        }
    }

    fn forget(&mut self, stream: Stream) {
        match stream.kind {
            StreamKind::Account => self.accounts.forget(&stream.id),
            StreamKind::Transfer => self.transfers.forget(&stream.id),
        }
    }

    fn clear(&mut self) {
        self.accounts.clear();
        self.transfers.clear();
    }
}

/// The rows of `ids` that `written` holds, and the ids to read: all but those held and,
/// while `written` holds every row ever kept, those never written.
fn held<V: Clone>(written: &RecentMap<Uuid, V>, ids: Vec<Uuid>) -> (HashMap<Uuid, V>, Vec<Uuid>) {
    let mut rows = HashMap::new();
    let mut unknown = Vec::new();
    for id in ids {
        match written.get(&id) {
            Some(row) => {
                rows.insert(id, row.clone());
            }
            None if written.holds_all_kept() => {}
            None => unknown.push(id),
        }
    }
    (rows, unknown)
}

/// Account and transfer rows by id.
type Rows = (HashMap<Uuid, AccountRow>, HashMap<Uuid, TransferRow>);

impl Projector {
    /// A projector writing to `tables`, filling gaps from `source` and telling
    /// `watch` about every version it sees.
    pub fn new(
        store: ReadStore,
        tables: &'static Tables,
        source: CommandClient,
        watch: ProjectionWatch,
    ) -> Self {
        Self {
            store,
            tables,
            source,
            watch,
            highest_position: Arc::default(),
            written: None,
        }
    }

    /// The same projector, for tables created empty that only it writes (the rebuild's):
    /// it keeps about `capacity` rows as it wrote them and reads only the others.
    pub fn sole_writer(self, capacity: usize) -> Self {
        Self {
            written: Some(Arc::new(Mutex::new(WrittenRows {
                accounts: RecentMap::new(capacity),
                transfers: RecentMap::new(capacity),
            }))),
            ..self
        }
    }

    fn written(&self) -> Option<std::sync::MutexGuard<'_, WrittenRows>> {
        self.written
            .as_ref()
            .map(|written| written.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The read model it writes to.
    pub(crate) fn store(&self) -> &ReadStore {
        &self.store
    }

    /// The tables it writes to.
    pub(crate) fn tables(&self) -> &'static Tables {
        self.tables
    }

    /// The command service it fills gaps from.
    pub(crate) fn source(&self) -> &CommandClient {
        &self.source
    }

    /// The highest global position met so far, from any path.
    pub(crate) fn highest_position(&self) -> u64 {
        self.highest_position.load(Ordering::Relaxed)
    }

    /// The feed follower's and the rebuild's entry: projects a page of the global feed
    /// (events of any streams), each stream's in one go, several streams at once.
    /// Events that cannot be decoded count as poison.
    pub async fn project_feed_page(
        &self,
        events: Vec<EventEnvelope>,
        path: &'static str,
    ) -> Result<BatchOutcome, ProjectionError> {
        let mut page = SortedPage::sort(events, path);
        if path == "feed" {
            let skipped;
            (page.streams, skipped) = self.skip_recorded(page.streams).await?;
            metrics::counter!("projection_events_total", "path" => path, "outcome" => "duplicate")
                .increment(skipped);
            page.outcome.duplicates += skipped;
        }
        self.project_sorted(&page, path).await
    }

    /// Projects a page of the global feed already sorted by stream (and retries it as
    /// it is after a failure).
    pub async fn project_sorted(
        &self,
        page: &SortedPage,
        path: &'static str,
    ) -> Result<BatchOutcome, ProjectionError> {
        let results = self.project_deliveries(&page.streams, path).await;
        tally(page, results, path)
    }

    /// Plans `page` and writes it into its transaction without committing it, so that
    /// the page after it can be planned while it commits ([`Projector::commit_page`]).
    /// A sole writer holds the rows it wrote from now on, as if it had committed them:
    /// whoever plans on them must drop those plans and [`Projector::forget_written`]
    /// should this page fail to commit, or settle a stream apart from its transaction
    /// ([`PlannedPage::is_complete`]).
    pub async fn plan_page(
        &self,
        page: &SortedPage,
        path: &'static str,
    ) -> Result<PlannedPage, ProjectionError> {
        self.note_positions(&page.streams);
        let prepared = self.prepare_together(&page.streams, path).await?;
        let settled = prepared.as_ref().map_or(0, |prepared| prepared.done.len());
        if let (Some(prepared), Some(mut rows)) = (&prepared, self.written()) {
            rows.keep(&prepared.writes);
        }
        Ok(PlannedPage {
            prepared,
            complete: settled == page.streams.len(),
        })
    }

    /// Commits a page planned by [`Projector::plan_page`], then projects stream by
    /// stream what its transaction did not settle (all of it, should the commit fail).
    /// Says whether the planned transaction committed.
    pub async fn commit_page(
        &self,
        planned: PlannedPage,
        page: &SortedPage,
        path: &'static str,
    ) -> Result<(BatchOutcome, bool), ProjectionError> {
        let together = match planned.prepared {
            Some(prepared) => self.commit_prepared(prepared, path, false).await,
            None => Ok(Vec::new()),
        };
        let committed = together.is_ok();
        let results = self.settle_rest(&page.streams, together, path).await;
        Ok((tally(page, results, path)?, committed))
    }

    /// Drops every row a sole writer holds: the next batches read them.
    pub fn forget_written(&self) {
        if let Some(mut written) = self.written() {
            written.clear();
        }
    }

    /// Leaves out the candidates the read model already records with their own event
    /// id, and says how many: what the feed follower reads is mostly what the broker
    /// delivered already, and one plain read spares locking those streams (which
    /// would hold up the consumer's transactions on them).
    async fn skip_recorded(
        &self,
        streams: Vec<(Stream, Vec<Candidate>)>,
    ) -> Result<(Vec<(Stream, Vec<Candidate>)>, u64), sqlx::Error> {
        if let Some(highest) = streams
            .iter()
            .flat_map(|(_, candidates)| candidates.iter().map(|c| c.envelope.position))
            .max()
        {
            self.highest_position.fetch_max(highest, Ordering::Relaxed);
        }
        let mut recorded = HashMap::new();
        for kind in [StreamKind::Account, StreamKind::Transfer] {
            let ranges = version_ranges(
                streams
                    .iter()
                    .filter(|(stream, _)| stream.kind == kind)
                    .map(|(stream, candidates)| (stream.id, candidates.iter())),
            );
            if !ranges.is_empty() {
                let ids = self.store.recorded_ids(self.tables, kind, &ranges).await?;
                recorded.extend(
                    ids.into_iter().map(|((id, version), event_id)| {
                        ((Stream { kind, id }, version), event_id)
                    }),
                );
            }
        }
        if recorded.is_empty() {
            return Ok((streams, 0));
        }
        let mut skipped = 0;
        let fresh = streams
            .into_iter()
            .filter_map(|(stream, candidates)| {
                let before = candidates.len();
                let rest: Vec<Candidate> = candidates
                    .into_iter()
                    .filter(|c| recorded.get(&(stream, c.version())) != Some(&c.envelope.event_id))
                    .collect();
                skipped += (before - rest.len()) as u64;
                (!rest.is_empty()).then_some((stream, rest))
            })
            .collect();
        Ok((fresh, skipped))
    }

    /// The broker consumer's entry: projects the candidates of many streams (each
    /// stream once in `streams`); returns each stream's verdicts (one per candidate, in
    /// order) or why it must be retried, in the order of `streams`.
    ///
    /// Every stream whose candidates are a plain continuation of its projection goes
    /// into one transaction: its row locked and read, its events folded in memory, all
    /// rows, operations and balance-sheet counters written with multi-row statements
    /// sent with the commit ([`Batch`]). The others (a gap to fill, an event that
    /// cannot apply) and, should that transaction fail, all of them, go through the
    /// per-stream path ([`Projector::project_alone`]).
    pub(crate) async fn project_deliveries(
        &self,
        streams: &[(Stream, Vec<Candidate>)],
        path: &'static str,
    ) -> Vec<Result<Vec<Verdict>, ProjectionError>> {
        self.note_positions(streams);
        let together = self.project_together(streams, path).await;
        self.settle_rest(streams, together, path).await
    }

    /// Records the highest global position of `streams`' candidates.
    fn note_positions(&self, streams: &[(Stream, Vec<Candidate>)]) {
        if let Some(highest) = streams
            .iter()
            .flat_map(|(_, candidates)| candidates.iter().map(|c| c.envelope.position))
            .max()
        {
            self.highest_position.fetch_max(highest, Ordering::Relaxed);
        }
    }

    /// Every stream's verdicts: those the one transaction settled (`together`), and
    /// the others projected stream by stream (all of them when it failed).
    async fn settle_rest(
        &self,
        streams: &[(Stream, Vec<Candidate>)],
        together: Result<Vec<(usize, Vec<Verdict>)>, sqlx::Error>,
        path: &'static str,
    ) -> Vec<Result<Vec<Verdict>, ProjectionError>> {
        let mut results: Vec<Option<Result<Vec<Verdict>, ProjectionError>>> =
            streams.iter().map(|_| None).collect();
        match together {
            Ok(done) => {
                for (index, verdicts) in done {
                    count_verdicts(&verdicts, path);
                    results[index] = Some(Ok(verdicts));
                }
            }
            Err(error) => {
                // Its commit may have happened all the same.
                self.forget_written();
                metrics::counter!("projection_batch_fallbacks_total", "path" => path).increment(1);
                tracing::debug!(error = %error, streams = streams.len(), path, "batched apply failed; projecting stream by stream");
            }
        }
        let rest: Vec<_> = futures::stream::iter(
            results
                .iter()
                .enumerate()
                .filter(|(_, result)| result.is_none())
                .map(|(index, _)| index)
                .collect::<Vec<_>>(),
        )
        .map(|index| async move {
            let (stream, candidates) = &streams[index];
            if let Some(mut written) = self.written() {
                written.forget(*stream);
            }
            (index, self.project_alone(*stream, candidates, path).await)
        })
        .buffer_unordered(STREAM_CONCURRENCY)
        .collect()
        .await;
        for (index, result) in rest {
            results[index] = Some(result);
        }
        // Every stream was settled above; one that somehow was not is retried, never
        // left without verdicts (its messages would stay unacknowledged).
        results
            .into_iter()
            .zip(streams)
            .map(|(result, (stream, _))| {
                result.unwrap_or(Err(ProjectionError::Contention(stream.id)))
            })
            .collect()
    }

    /// The one-transaction part of [`Projector::project_deliveries`]: the verdicts of the
    /// streams it settled, by index. Nothing is committed when it fails.
    async fn project_together(
        &self,
        streams: &[(Stream, Vec<Candidate>)],
        path: &'static str,
    ) -> Result<Vec<(usize, Vec<Verdict>)>, sqlx::Error> {
        match self.prepare_together(streams, path).await? {
            Some(prepared) => self.commit_prepared(prepared, path, true).await,
            None => Ok(Vec::new()),
        }
    }

    /// Starts the one transaction of `streams`, plans what it settles and writes it
    /// (sent with the commit); `None` for no stream.
    async fn prepare_together(
        &self,
        streams: &[(Stream, Vec<Candidate>)],
        path: &'static str,
    ) -> Result<Option<PreparedBatch>, sqlx::Error> {
        if streams.is_empty() {
            return Ok(None);
        }
        let ids = |kind: StreamKind| -> Vec<Uuid> {
            streams
                .iter()
                .filter(|(stream, _)| stream.kind == kind)
                .map(|(stream, _)| stream.id)
                .collect()
        };
        let mut batch = self.store.batch(self.tables).await?;
        let (accounts, transfers) = self
            .lock(
                &mut batch,
                ids(StreamKind::Account),
                ids(StreamKind::Transfer),
            )
            .await?;
        let head = |stream: &Stream| match stream.kind {
            StreamKind::Account => {
                StreamHead::Account(accounts.get(&stream.id).map(AccountRow::head))
            }
            StreamKind::Transfer => StreamHead::Transfer(transfers.get(&stream.id).cloned()),
        };
        let mut decisions: Vec<Decisions<'_>> = streams
            .iter()
            .map(|(_, candidates)| Decisions::new(candidates))
            .collect();
        // Versions at or below the projected one whose event ids must be looked up:
        // one statement per kind of stream for the whole batch (redeliveries come in
        // bursts).
        for kind in [StreamKind::Account, StreamKind::Transfer] {
            let unknown: Vec<(usize, (Uuid, i64, i64))> = streams
                .iter()
                .zip(&decisions)
                .enumerate()
                .filter(|(_, ((stream, _), _))| stream.kind == kind)
                .filter_map(|(index, ((stream, _), decided))| {
                    let unknown = decided.unknown_up_to(head(stream).version());
                    Some((index, (stream.id, *unknown.first()?, *unknown.last()?)))
                })
                .collect();
            if unknown.is_empty() {
                continue;
            }
            let ranges: Vec<_> = unknown.iter().map(|(_, range)| *range).collect();
            let recorded = batch.recorded_ids(kind, &ranges).await?;
            for (index, (id, lowest, highest)) in unknown {
                decisions[index].learn(
                    (lowest..=highest)
                        .filter_map(|version| Some((version, *recorded.get(&(id, version))?))),
                );
            }
        }
        let mut done = Vec::with_capacity(streams.len());
        let mut versions = Vec::with_capacity(streams.len());
        let mut runs = Vec::new();
        let mut writes = BatchWrites::default();
        for ((index, (stream, candidates)), mut decided) in
            streams.iter().enumerate().zip(decisions)
        {
            let head = head(stream);
            let projected = head.version();
            decided.settle_up_to(projected);
            let pending = decided.pending();
            let Some(&highest) = pending.last() else {
                done.push((index, decided.finish()));
                versions.push((stream.id, projected));
                continue;
            };
            let run = next_run(candidates, &pending, projected);
            if run
                .last()
                .is_none_or(|last| last.version() < candidates[highest].version())
            {
                continue; // a gap: the per-stream path fills it
            }
            let (Some(mutation), None) = head.plan(stream.id, &run) else {
                continue; // an event that cannot apply: the per-stream path condemns it
            };
            let to_version = mutation.end_version();
            if !writes.add(stream.id, &accounts, mutation) {
                continue;
            }
            // The verdicts once the transaction commits (only then are they given).
            decided.committed(&run);
            decided.settle_up_to(to_version);
            done.push((index, decided.finish()));
            versions.push((stream.id, to_version));
            runs.push(PlannedRun::of(&run, path));
        }
        if !runs.is_empty() {
            writes.write(&mut batch);
        }
        Ok(Some(PreparedBatch {
            batch,
            writes,
            done,
            versions,
            runs,
        }))
    }

    /// Commits a prepared transaction and returns the verdicts of the streams it
    /// settled; a sole writer holds the rows it wrote, unless it took them already
    /// (`keep_rows` false, [`Projector::plan_page`]).
    async fn commit_prepared(
        &self,
        prepared: PreparedBatch,
        path: &'static str,
        keep_rows: bool,
    ) -> Result<Vec<(usize, Vec<Verdict>)>, sqlx::Error> {
        let PreparedBatch {
            batch,
            writes,
            done,
            versions,
            runs,
        } = prepared;
        let written = batch.commit().await?;
        if keep_rows && let Some(mut rows) = self.written() {
            rows.keep(&writes);
        }
        if path != "rebuild" {
            let occurred = || runs.iter().flat_map(|run| run.occurred.iter().copied());
            stages::record(Stage::Applied, written, occurred());
            stages::record(Stage::Projected, Utc::now(), occurred());
        }
        for run in &runs {
            run.committed(path);
        }
        for (stream, version) in versions {
            self.watch.publish(stream, version);
        }
        Ok(done)
    }

    /// Starts `batch`'s transaction, locking and reading the rows of `accounts` and of
    /// `transfers` (the one lock order of every transaction: accounts, transfers, the
    /// sheet); a sole writer reads only the rows it does not hold.
    async fn lock(
        &self,
        batch: &mut Batch,
        accounts: Vec<Uuid>,
        transfers: Vec<Uuid>,
    ) -> Result<Rows, sqlx::Error> {
        let ((mut held_accounts, mut held_transfers), (accounts, transfers)) = match self.written()
        {
            Some(written) => written.split(accounts, transfers),
            None => (Rows::default(), (accounts, transfers)),
        };
        let (read_accounts, read_transfers) = batch.lock(&accounts, &transfers).await?;
        held_accounts.extend(read_accounts);
        held_transfers.extend(read_transfers);
        Ok((held_accounts, held_transfers))
    }

    /// Projects candidates of one stream, in its own transactions; returns one
    /// verdict per candidate, in order.
    async fn project_alone(
        &self,
        stream: Stream,
        candidates: &[Candidate],
        path: &'static str,
    ) -> Result<Vec<Verdict>, ProjectionError> {
        let correlation_id = candidates
            .iter()
            .find_map(|c| c.envelope.metadata.correlation_id.clone())
            .unwrap_or_default();
        let span = tracing::debug_span!("project", %stream, path, correlation_id);
        let verdicts = self
            .read_decide_write(stream, candidates, path)
            .instrument(span)
            .await?;
        count_verdicts(&verdicts, path);
        Ok(verdicts)
    }

    /// Rounds of: read the stream's head, plan the next run, write it guarded by the
    /// version; until every candidate has its verdict.
    async fn read_decide_write(
        &self,
        stream: Stream,
        candidates: &[Candidate],
        path: &'static str,
    ) -> Result<Vec<Verdict>, ProjectionError> {
        if let Some(highest) = candidates.iter().map(|c| c.envelope.position).max() {
            self.highest_position.fetch_max(highest, Ordering::Relaxed);
        }
        let mut decided = Decisions::new(candidates);
        let mut one_at_a_time = false;
        for _ in 0..MAX_ROUNDS {
            let head = self.store.stream_head(self.tables, stream).await?;
            let projected = head.version();
            self.watch.publish(stream.id, projected);
            let unknown = decided.unknown_up_to(projected);
            if !unknown.is_empty() {
                decided.learn(
                    self.store
                        .projected_ids(self.tables, stream, &unknown)
                        .await?,
                );
            }
            decided.settle_up_to(projected);
            let pending = decided.pending();
            let Some(&highest) = pending.last() else {
                return Ok(decided.finish());
            };
            let highest = candidates[highest].version();
            let mut run = next_run(candidates, &pending, projected);
            if run.last().is_none_or(|last| last.version() < highest) {
                // On the broker's path, with the broker healthy, a gap means an event
                // overtook an earlier one of its stream (replicas competing for one queue).
                metrics::counter!("projection_gap_fills_total", "path" => path).increment(1);
                run = backfill::backfill(&self.source, stream, projected, &mut decided).await?;
                if run.is_empty() {
                    continue;
                }
            }
            if one_at_a_time {
                run.truncate(1);
            }
            let (mutation, invalid) = head.plan(stream.id, &run);
            if let Some(mutation) = mutation {
                match self.store.apply(self.tables, &mutation).await? {
                    Applied::Committed { written } => {
                        let count =
                            usize::try_from(mutation.end_version() - mutation.start_version())
                                .unwrap_or(run.len());
                        let run = &run[..count.min(run.len())];
                        if path != "rebuild" {
                            let occurred = || run.iter().map(|c| c.envelope.occurred_at);
                            stages::record(Stage::Applied, written, occurred());
                            stages::record(Stage::Projected, Utc::now(), occurred());
                        }
                        decided.committed(run);
                        PlannedRun::of(run, path).committed(path);
                        self.watch.publish(stream.id, mutation.end_version());
                    }
                    Applied::Conflict => continue,
                    Applied::DuplicateEventId if !one_at_a_time && run.len() > 1 => {
                        one_at_a_time = true;
                        continue;
                    }
                    Applied::DuplicateEventId => {
                        if let Some(first) = run.first() {
                            decided.condemn(
                                first,
                                "its event id is already recorded for another operation",
                            );
                        }
                        one_at_a_time = false;
                        continue;
                    }
                }
            }
            if let Some((index, reason)) = invalid {
                decided.condemn(&run[index], &reason);
            }
        }
        if decided.pending().is_empty() {
            Ok(decided.finish())
        } else {
            Err(ProjectionError::Contention(stream.id))
        }
    }
}

/// What a committed run of one stream tells the metrics.
#[derive(Debug)]
struct PlannedRun {
    /// Its events fetched from the command service to fill a gap.
    fetched: u64,
    /// When each of its events occurred (left empty by the rebuild, which records no
    /// stage).
    occurred: Vec<DateTime<Utc>>,
    last_version: i64,
}

impl PlannedRun {
    fn of(run: &[Candidate], path: &'static str) -> Self {
        Self {
            fetched: run.iter().filter(|c| c.origin == Origin::Fetched).count() as u64,
            occurred: match path {
                "rebuild" => Vec::new(),
                _ => run.iter().map(|c| c.envelope.occurred_at).collect(),
            },
            last_version: run.last().map_or(0, Candidate::version),
        }
    }

    fn committed(&self, path: &'static str) {
        if self.fetched > 0 {
            metrics::counter!("projection_backfilled_events_total", "path" => path)
                .increment(self.fetched);
        }
        if let Some(last) = self.occurred.last() {
            let delay = (Utc::now() - *last)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64();
            metrics::histogram!("projection_delay_seconds", "path" => path).record(delay);
            tracing::debug!(version = self.last_version, "projected");
        }
    }
}

/// A transaction planned and written, not yet committed.
#[derive(Debug)]
struct PreparedBatch {
    batch: Batch,
    writes: BatchWrites,
    /// The verdicts of each stream it settles (by index), as they stand once it commits.
    done: Vec<(usize, Vec<Verdict>)>,
    /// The version each stream it settles is at once it commits.
    versions: Vec<(Uuid, i64)>,
    runs: Vec<PlannedRun>,
}

/// A page planned by [`Projector::plan_page`], to commit with [`Projector::commit_page`].
#[derive(Debug)]
pub struct PlannedPage {
    prepared: Option<PreparedBatch>,
    complete: bool,
}

impl PlannedPage {
    /// Whether its one transaction settles every stream of its page: then nothing but
    /// that transaction writes the page, and the next page can be planned on the rows
    /// it holds before it commits.
    pub fn is_complete(&self) -> bool {
        self.complete
    }
}

/// Adds up the verdicts of a page's streams; the first failure, if any.
fn tally(
    page: &SortedPage,
    results: Vec<Result<Vec<Verdict>, ProjectionError>>,
    path: &'static str,
) -> Result<BatchOutcome, ProjectionError> {
    let mut outcome = page.outcome;
    let mut failure = None;
    for ((_, candidates), verdicts) in page.streams.iter().zip(results) {
        match verdicts {
            Ok(verdicts) => {
                for (candidate, verdict) in candidates.iter().zip(verdicts) {
                    match verdict {
                        Verdict::Applied => outcome.applied += 1,
                        Verdict::Duplicate => outcome.duplicates += 1,
                        Verdict::Conflict(reason) => {
                            tracing::error!(
                                event_id = %candidate.envelope.event_id,
                                stream = %candidate.stream(),
                                version = candidate.envelope.version,
                                path,
                                %reason,
                                "skipping an event that conflicts with the projected one"
                            );
                            outcome.conflicts += 1;
                        }
                        Verdict::Poison(reason) => {
                            tracing::error!(
                                event_id = %candidate.envelope.event_id,
                                stream = %candidate.stream(),
                                version = candidate.envelope.version,
                                path,
                                %reason,
                                "skipping an event that cannot be projected"
                            );
                            outcome.poisoned += 1;
                        }
                    }
                }
            }
            Err(error) => failure = Some(error),
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(outcome),
    }
}

fn count_verdicts(verdicts: &[Verdict], path: &'static str) {
    for verdict in verdicts {
        let outcome = match verdict {
            Verdict::Applied => "applied",
            Verdict::Duplicate => "duplicate",
            Verdict::Conflict(_) => "conflict",
            Verdict::Poison(_) => "poison",
        };
        metrics::counter!("projection_events_total", "path" => path, "outcome" => outcome)
            .increment(1);
    }
}

/// The lowest and highest version of each stream's candidates.
fn version_ranges<'a>(
    streams: impl IntoIterator<Item = (Uuid, impl Iterator<Item = &'a Candidate>)>,
) -> Vec<(Uuid, i64, i64)> {
    streams
        .into_iter()
        .filter_map(|(id, candidates)| {
            let versions: Vec<i64> = candidates.map(Candidate::version).collect();
            Some((id, *versions.iter().min()?, *versions.iter().max()?))
        })
        .collect()
}

/// What one batch transaction writes: the rows after every planned run, and the sum
/// of their balance-sheet deltas per currency.
#[derive(Debug, Default)]
struct BatchWrites {
    opened: Vec<AccountRow>,
    moved: Vec<AccountRow>,
    operations: Vec<(Uuid, OperationRow)>,
    versions: Vec<(Uuid, VersionRow)>,
    opened_transfers: Vec<TransferRow>,
    moved_transfers: Vec<TransferRow>,
    transfer_versions: Vec<(Uuid, TransferVersionRow)>,
    sheet: BTreeMap<&'static str, SheetDelta>,
}

impl BatchWrites {
    /// Adds the run planned for stream `id` (whose locked account row, if it is an
    /// account's, is in `accounts`); `false` when it cannot be folded in.
    fn add(
        &mut self,
        id: Uuid,
        accounts: &HashMap<Uuid, AccountRow>,
        mutation: StreamMutation,
    ) -> bool {
        match mutation {
            StreamMutation::Account(mutation) => {
                let row = accounts.get(&id);
                let Some(after) = AccountRow::after(row, &mutation) else {
                    return false;
                };
                self.operations
                    .extend(mutation.operations.into_iter().map(|op| (id, op)));
                self.versions
                    .extend(mutation.versions.into_iter().map(|v| (id, v)));
                if let Some(delta) = mutation.sheet {
                    self.sheet
                        .entry(delta.currency)
                        .and_modify(|sum| sum.absorb(&delta))
                        .or_insert(delta);
                }
                if row.is_some() {
                    self.moved.push(after);
                } else {
                    self.opened.push(after);
                }
            }
            StreamMutation::Transfer(mutation) => {
                self.transfer_versions
                    .extend(mutation.versions.iter().map(|v| (id, v.clone())));
                if mutation.opens() {
                    self.opened_transfers.push(mutation.row);
                } else {
                    self.moved_transfers.push(mutation.row);
                }
            }
        }
        true
    }

    /// Writes everything in the batch's transaction, the sheet's counters last (in
    /// currency order).
    fn write(&self, batch: &mut Batch) {
        if !(self.opened.is_empty() && self.moved.is_empty()) {
            batch.write(&self.opened, &self.moved, &self.operations, &self.versions);
        }
        if !(self.opened_transfers.is_empty() && self.moved_transfers.is_empty()) {
            batch.write_transfers(
                &self.opened_transfers,
                &self.moved_transfers,
                &self.transfer_versions,
            );
        }
        let deltas: Vec<SheetDelta> = self
            .sheet
            .values()
            .filter(|delta| !delta.is_zero())
            .cloned()
            .collect();
        if !deltas.is_empty() {
            batch.add_to_sheet(&deltas);
        }
    }
}
