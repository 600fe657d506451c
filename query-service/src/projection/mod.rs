//! The projection: applies each account's events to the read model exactly once and
//! in version order, whatever order and however many times they arrive.
//!
//! An event at or below the account's projected version is a duplicate when the read
//! model holds that very event there (`account_versions`), a conflict otherwise. The next
//! version is applied in one transaction whose `UPDATE ... WHERE version = ?` (or the
//! account's primary key, for its first event) makes concurrent writers (other
//! replicas, the feed follower) lose cleanly and look again. A version further ahead
//! is a gap, filled first from the command service's stream of that account.
//!
//! - [`plan`]: pure decisions (what a run of events does to a row, each candidate's
//!   verdict); no clock, no I/O.
//! - [`backfill`]: gap filling over HTTP from the command service.
//! - this module: the orchestration, with one entry point per caller:
//!   [`Projector::project_deliveries`] for the broker consumer and
//!   [`Projector::project_feed_page`] for the feed follower and the rebuild.

mod backfill;
pub(crate) mod plan;
pub(crate) mod stages;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use futures::StreamExt;
use shared_events::{AccountId, EventEnvelope};
use tracing::Instrument;
use uuid::Uuid;

use self::plan::{AccountRow, Candidate, Decisions, Origin, Verdict, next_run, plan};
use self::stages::Stage;
use crate::source::{CommandClient, SourceError};
use crate::store::{Applied, ReadStore, Tables};
use crate::watch::ProjectionWatch;

/// Rounds of read-decide-write before an account is given up as too contended.
const MAX_ROUNDS: usize = 16;
/// Accounts projected at the same time within one batch.
const ACCOUNT_CONCURRENCY: usize = 4;

/// A failure worth retrying: nothing about the events themselves is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("the read model is unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot fill a gap: {0}")]
    Source(#[from] SourceError),
    #[error("account {0} kept changing under concurrent writers")]
    Contention(Uuid),
    #[error("the projection task stopped: {0}")]
    Stopped(String),
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

/// Applies events to one set of tables.
#[derive(Debug, Clone)]
pub struct Projector {
    store: ReadStore,
    tables: &'static Tables,
    source: CommandClient,
    watch: ProjectionWatch,
    highest_position: Arc<AtomicU64>,
}

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
        }
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
    /// (events of any accounts), each account's in one go, several accounts at once.
    /// Events that cannot be decoded count as poison.
    pub async fn project_feed_page(
        &self,
        events: Vec<EventEnvelope>,
        path: &'static str,
    ) -> Result<BatchOutcome, ProjectionError> {
        let mut outcome = BatchOutcome::default();
        let mut accounts: BTreeMap<AccountId, Vec<Candidate>> = BTreeMap::new();
        for envelope in events {
            let (event_id, version, account) =
                (envelope.event_id, envelope.version, envelope.account_id);
            match Candidate::decode(envelope, Origin::Delivered) {
                Ok(candidate) => accounts.entry(account).or_default().push(candidate),
                Err(reason) => {
                    tracing::error!(%event_id, %account, version, path, %reason, "skipping an event that cannot be projected");
                    metrics::counter!("projection_events_total", "path" => path, "outcome" => "poison")
                        .increment(1);
                    outcome.poisoned += 1;
                }
            }
        }
        let mut accounts: Vec<(Uuid, Vec<Candidate>)> = accounts
            .into_iter()
            .map(|(account, candidates)| (account.as_uuid(), candidates))
            .collect();
        if path == "feed" {
            let skipped;
            (accounts, skipped) = self.skip_recorded(accounts).await?;
            metrics::counter!("projection_events_total", "path" => path, "outcome" => "duplicate")
                .increment(skipped);
            outcome.duplicates += skipped;
        }
        let results = self.project_deliveries(&accounts, path).await;
        let mut failure = None;
        for ((_, candidates), verdicts) in accounts.iter().zip(results) {
            match verdicts {
                Ok(verdicts) => {
                    for (candidate, verdict) in candidates.iter().zip(verdicts) {
                        match verdict {
                            Verdict::Applied => outcome.applied += 1,
                            Verdict::Duplicate => outcome.duplicates += 1,
                            Verdict::Conflict(reason) => {
                                tracing::error!(
                                    event_id = %candidate.envelope.event_id,
                                    account = %candidate.account(),
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
                                    account = %candidate.account(),
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

    /// Leaves out the candidates the read model already records with their own event
    /// id, and says how many: what the feed follower reads is mostly what the broker
    /// delivered already, and one plain read spares locking those accounts (which
    /// would hold up the consumer's transactions on them).
    async fn skip_recorded(
        &self,
        accounts: Vec<(Uuid, Vec<Candidate>)>,
    ) -> Result<(Vec<(Uuid, Vec<Candidate>)>, u64), sqlx::Error> {
        if let Some(highest) = accounts
            .iter()
            .flat_map(|(_, candidates)| candidates.iter().map(|c| c.envelope.position))
            .max()
        {
            self.highest_position.fetch_max(highest, Ordering::Relaxed);
        }
        let ranges: Vec<(Uuid, i64, i64)> = accounts
            .iter()
            .filter_map(|(account, candidates)| {
                let lowest = candidates.iter().map(Candidate::version).min()?;
                let highest = candidates.iter().map(Candidate::version).max()?;
                Some((*account, lowest, highest))
            })
            .collect();
        if ranges.is_empty() {
            return Ok((accounts, 0));
        }
        let recorded = self.store.recorded_ids(self.tables, &ranges).await?;
        let mut skipped = 0;
        let fresh = accounts
            .into_iter()
            .filter_map(|(account, candidates)| {
                let before = candidates.len();
                let rest: Vec<Candidate> = candidates
                    .into_iter()
                    .filter(|c| recorded.get(&(account, c.version())) != Some(&c.envelope.event_id))
                    .collect();
                skipped += (before - rest.len()) as u64;
                (!rest.is_empty()).then_some((account, rest))
            })
            .collect();
        Ok((fresh, skipped))
    }

    /// The broker consumer's entry: projects the candidates of many accounts (each
    /// account once in `accounts`); returns each account's verdicts (one per candidate, in order) or why it must be
    /// retried, in the order of `accounts`.
    ///
    /// Every account whose candidates are a plain continuation of its projection goes
    /// into one transaction: its row locked and read, its events folded in memory, all
    /// rows and operations written with multi-row statements, one commit. The others (a
    /// gap to fill, an event that cannot apply) and, should that transaction fail, all
    /// of them, go through the per-account path ([`Projector::project_alone`]).
    pub(crate) async fn project_deliveries(
        &self,
        accounts: &[(Uuid, Vec<Candidate>)],
        path: &'static str,
    ) -> Vec<Result<Vec<Verdict>, ProjectionError>> {
        let mut results: Vec<Option<Result<Vec<Verdict>, ProjectionError>>> =
            accounts.iter().map(|_| None).collect();
        if let Some(highest) = accounts
            .iter()
            .flat_map(|(_, candidates)| candidates.iter().map(|c| c.envelope.position))
            .max()
        {
            self.highest_position.fetch_max(highest, Ordering::Relaxed);
        }
        match self.project_together(accounts, path).await {
            Ok(done) => {
                for (index, verdicts) in done {
                    count_verdicts(&verdicts, path);
                    results[index] = Some(Ok(verdicts));
                }
            }
            Err(error) => {
                metrics::counter!("projection_batch_fallbacks_total", "path" => path).increment(1);
                tracing::debug!(error = %error, accounts = accounts.len(), path, "batched apply failed; projecting account by account");
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
            let (account, candidates) = &accounts[index];
            (index, self.project_alone(*account, candidates, path).await)
        })
        .buffer_unordered(ACCOUNT_CONCURRENCY)
        .collect()
        .await;
        for (index, result) in rest {
            results[index] = Some(result);
        }
        // Every account was settled above; one that somehow was not is retried, never
        // left without verdicts (its messages would stay unacknowledged).
        results
            .into_iter()
            .zip(accounts)
            .map(|(result, (account, _))| {
                result.unwrap_or(Err(ProjectionError::Contention(*account)))
            })
            .collect()
    }

    /// The one-transaction part of [`Projector::project_deliveries`]: the verdicts of the
    /// accounts it settled, by index. Nothing is committed when it fails.
    async fn project_together(
        &self,
        accounts: &[(Uuid, Vec<Candidate>)],
        path: &'static str,
    ) -> Result<Vec<(usize, Vec<Verdict>)>, sqlx::Error> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = accounts.iter().map(|(account, _)| *account).collect();
        let mut batch = self.store.batch(self.tables).await?;
        let rows = batch.lock(&ids).await?;
        let mut settled = Vec::new();
        let mut runs = Vec::new();
        let (mut opened, mut moved, mut operations) = (Vec::new(), Vec::new(), Vec::new());
        let mut versions = Vec::new();
        let mut decisions: Vec<Decisions<'_>> = accounts
            .iter()
            .map(|(_, candidates)| Decisions::new(candidates))
            .collect();
        // Versions at or below the projected one whose event ids must be looked up:
        // one statement for the whole batch (redeliveries come in bursts).
        let unknown: Vec<(usize, (Uuid, i64, i64))> = accounts
            .iter()
            .zip(&decisions)
            .enumerate()
            .filter_map(|(index, ((account, _), decided))| {
                let projected = rows.get(account).map_or(0, |row| row.version);
                let unknown = decided.unknown_up_to(projected);
                Some((index, (*account, *unknown.first()?, *unknown.last()?)))
            })
            .collect();
        if !unknown.is_empty() {
            let ranges: Vec<_> = unknown.iter().map(|(_, range)| *range).collect();
            let recorded = batch.recorded_ids(&ranges).await?;
            for (index, (account, lowest, highest)) in unknown {
                decisions[index]
                    .learn((lowest..=highest).filter_map(|version| {
                        Some((version, *recorded.get(&(account, version))?))
                    }));
            }
        }
        for ((index, (account, candidates)), mut decided) in
            accounts.iter().enumerate().zip(decisions)
        {
            let row = rows.get(account);
            let head = row.map(AccountRow::head);
            let projected = head.as_ref().map_or(0, |h| h.version);
            decided.settle_up_to(projected);
            let pending = decided.pending();
            let Some(&highest) = pending.last() else {
                settled.push((index, decided.finish(), projected));
                continue;
            };
            let run = next_run(candidates, &pending, projected);
            if run
                .last()
                .is_none_or(|last| last.version() < candidates[highest].version())
            {
                continue; // a gap: the per-account path fills it
            }
            let (Some(mutation), None) = plan(*account, head.as_ref(), &run) else {
                continue; // an event that cannot apply: the per-account path condemns it
            };
            let Some(after) = AccountRow::after(row, &mutation) else {
                continue;
            };
            operations.extend(mutation.operations.iter().map(|op| (*account, op.clone())));
            versions.extend(mutation.versions.iter().map(|row| (*account, row.clone())));
            if row.is_some() {
                moved.push(after);
            } else {
                opened.push(after);
            }
            runs.push((index, decided, run, mutation.to_version));
        }
        if !runs.is_empty() {
            batch.write(&opened, &moved, &operations, &versions).await?;
        }
        let written = Utc::now();
        batch.commit().await?;
        if path != "rebuild" {
            let occurred = || {
                runs.iter()
                    .flat_map(|(_, _, run, _)| run.iter().map(|c| c.envelope.occurred_at))
            };
            stages::record(Stage::Applied, written, occurred());
            stages::record(Stage::Projected, Utc::now(), occurred());
        }
        let mut done = Vec::with_capacity(settled.len() + runs.len());
        for (index, verdicts, projected) in settled {
            self.watch.publish(accounts[index].0, projected);
            done.push((index, verdicts));
        }
        for (index, mut decided, run, version) in runs {
            self.committed(&run, &mut decided, path);
            decided.settle_up_to(version);
            self.watch.publish(accounts[index].0, version);
            done.push((index, decided.finish()));
        }
        Ok(done)
    }

    /// Projects candidates of one account, in its own transactions; returns one
    /// verdict per candidate, in order.
    async fn project_alone(
        &self,
        account: Uuid,
        candidates: &[Candidate],
        path: &'static str,
    ) -> Result<Vec<Verdict>, ProjectionError> {
        let correlation_id = candidates
            .iter()
            .find_map(|c| c.envelope.metadata.correlation_id.clone())
            .unwrap_or_default();
        let span = tracing::debug_span!("project", %account, path, correlation_id);
        let verdicts = self
            .read_decide_write(account, candidates, path)
            .instrument(span)
            .await?;
        count_verdicts(&verdicts, path);
        Ok(verdicts)
    }

    /// Rounds of: read the account's head, plan the next run, write it guarded by the
    /// version; until every candidate has its verdict.
    async fn read_decide_write(
        &self,
        account: Uuid,
        candidates: &[Candidate],
        path: &'static str,
    ) -> Result<Vec<Verdict>, ProjectionError> {
        if let Some(highest) = candidates.iter().map(|c| c.envelope.position).max() {
            self.highest_position.fetch_max(highest, Ordering::Relaxed);
        }
        let mut decided = Decisions::new(candidates);
        let mut one_at_a_time = false;
        for _ in 0..MAX_ROUNDS {
            let head = self.store.head(self.tables, account).await?;
            let projected = head.as_ref().map_or(0, |h| h.version);
            self.watch.publish(account, projected);
            let unknown = decided.unknown_up_to(projected);
            if !unknown.is_empty() {
                decided.learn(
                    self.store
                        .projected_ids(self.tables, account, &unknown)
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
                run = backfill::backfill(&self.source, account, projected, &mut decided).await?;
                if run.is_empty() {
                    continue;
                }
            }
            if one_at_a_time {
                run.truncate(1);
            }
            let (mutation, invalid) = plan(account, head.as_ref(), &run);
            if let Some(mutation) = mutation {
                match self.store.apply(self.tables, &mutation).await? {
                    Applied::Committed { written } => {
                        let count = usize::try_from(mutation.to_version - mutation.from_version)
                            .unwrap_or(run.len());
                        let run = &run[..count.min(run.len())];
                        if path != "rebuild" {
                            let occurred = || run.iter().map(|c| c.envelope.occurred_at);
                            stages::record(Stage::Applied, written, occurred());
                            stages::record(Stage::Projected, Utc::now(), occurred());
                        }
                        self.committed(run, &mut decided, path);
                        self.watch.publish(account, mutation.to_version);
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
            Err(ProjectionError::Contention(account))
        }
    }

    fn committed(&self, run: &[Candidate], decided: &mut Decisions<'_>, path: &'static str) {
        decided.committed(run);
        let fetched = run.iter().filter(|c| c.origin == Origin::Fetched).count();
        if fetched > 0 {
            metrics::counter!("projection_backfilled_events_total", "path" => path)
                .increment(fetched as u64);
        }
        if let Some(last) = run.last()
            && path != "rebuild"
        {
            let delay = (Utc::now() - last.envelope.occurred_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64();
            metrics::histogram!("projection_delay_seconds", "path" => path).record(delay);
            tracing::debug!(version = last.envelope.version, "projected");
        }
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
