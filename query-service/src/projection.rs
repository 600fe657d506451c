//! The projection: applies each account's events to the read model exactly once and
//! in version order, whatever order and however many times they arrive.
//!
//! An event at or below the account's projected version is a duplicate. The next
//! version is applied in one transaction whose `UPDATE ... WHERE version = ?` (or the
//! account's primary key, for its first event) makes concurrent writers (other
//! replicas, the feed follower) lose cleanly and look again. A version further ahead
//! is a gap, filled first from the command service's stream of that account.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{SubsecRound, Utc};
use futures::StreamExt;
use shared_events::{AccountEvent, AccountId, Currency, EventEnvelope};
use tracing::Instrument;
use uuid::Uuid;

use crate::source::{CommandClient, SourceError};
use crate::store::{AccountRow, Applied, Head, Mutation, Opening, OperationRow, ReadStore, Tables};
use crate::watch::ProjectionWatch;

/// Rounds of read-decide-write before an account is given up as too contended.
const MAX_ROUNDS: usize = 16;
/// Accounts projected at the same time within one batch.
pub const ACCOUNT_CONCURRENCY: usize = 4;

/// Where a candidate event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Handed over by the caller (a broker message, a feed page).
    Delivered,
    /// Fetched from the command service to fill a gap.
    Fetched,
}

/// An event that decodes: a candidate for the projection.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub envelope: EventEnvelope,
    pub event: AccountEvent,
    pub origin: Origin,
}

impl Candidate {
    /// Checks an envelope; the error says why it could never be applied.
    pub fn decode(envelope: EventEnvelope, origin: Origin) -> Result<Self, String> {
        if envelope.version == 0 || i64::try_from(envelope.version).is_err() {
            return Err(format!(
                "version {} is out of range (1-based)",
                envelope.version
            ));
        }
        let event = envelope.decode().map_err(|error| error.to_string())?;
        Ok(Self {
            envelope,
            event,
            origin,
        })
    }

    fn version(&self) -> i64 {
        i64::try_from(self.envelope.version).unwrap_or(i64::MAX)
    }

    fn account(&self) -> Uuid {
        self.envelope.account_id.as_uuid()
    }
}

/// What became of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its effect is now in the read model.
    Applied,
    /// The read model already held this version.
    Duplicate,
    /// It can never be applied, for the reason given.
    Poison(String),
}

/// A failure worth retrying: nothing about the events themselves is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("the read model is unavailable: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot fill a gap: {0}")]
    Source(#[from] SourceError),
    #[error("account {0} kept changing under concurrent writers")]
    Contention(Uuid),
}

/// Counts of what a batch of events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: u64,
    pub duplicates: u64,
    pub poisoned: u64,
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
    pub fn store(&self) -> &ReadStore {
        &self.store
    }

    /// The tables it writes to.
    pub fn tables(&self) -> &'static Tables {
        self.tables
    }

    /// The command service it fills gaps from.
    pub fn source(&self) -> &CommandClient {
        &self.source
    }

    /// The highest global position met so far, from any path.
    pub fn highest_position(&self) -> u64 {
        self.highest_position.load(Ordering::Relaxed)
    }

    /// Projects a batch of events of any accounts, each account's in one go, several
    /// accounts at once. Events that cannot be decoded count as poison.
    pub async fn project_batch(
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
        let accounts: Vec<(Uuid, Vec<Candidate>)> = accounts
            .into_iter()
            .map(|(account, candidates)| (account.as_uuid(), candidates))
            .collect();
        let results = self.project_accounts(&accounts, path).await;
        let mut failure = None;
        for ((_, candidates), verdicts) in accounts.iter().zip(results) {
            match verdicts {
                Ok(verdicts) => {
                    for (candidate, verdict) in candidates.iter().zip(verdicts) {
                        match verdict {
                            Verdict::Applied => outcome.applied += 1,
                            Verdict::Duplicate => outcome.duplicates += 1,
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

    /// Projects the candidates of many accounts (each account once in `accounts`);
    /// returns each account's verdicts (one per candidate, in order) or why it must be
    /// retried, in the order of `accounts`.
    ///
    /// Every account whose candidates are a plain continuation of its projection goes
    /// into one transaction: its row locked and read, its events folded in memory, all
    /// rows and operations written with multi-row statements, one commit. The others (a
    /// gap to fill, an event that cannot apply) and, should that transaction fail, all
    /// of them, go through the per-account path ([`Projector::project`]).
    pub async fn project_accounts(
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
            (index, self.project(*account, candidates, path).await)
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

    /// The one-transaction part of [`Projector::project_accounts`]: the verdicts of the
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
        for (index, (account, candidates)) in accounts.iter().enumerate() {
            let row = rows.get(account);
            let head = row.map(AccountRow::head);
            let projected = head.as_ref().map_or(0, |h| h.version);
            let mut decided = Decisions::new(candidates);
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
            if row.is_some() {
                moved.push(after);
            } else {
                opened.push(after);
            }
            runs.push((index, decided, run, mutation.to_version));
        }
        if !runs.is_empty() {
            batch.write(&opened, &moved, &operations).await?;
        }
        batch.commit().await?;
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

    /// Projects candidates of one account; returns one verdict per candidate, in order.
    pub async fn project(
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
            .project_account(account, candidates, path)
            .instrument(span)
            .await?;
        count_verdicts(&verdicts, path);
        Ok(verdicts)
    }

    async fn project_account(
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
            decided.settle_up_to(projected);
            let pending = decided.pending();
            let Some(&highest) = pending.last() else {
                return Ok(decided.finish());
            };
            let highest = candidates[highest].version();
            let mut run = next_run(candidates, &pending, projected);
            if run.last().is_none_or(|last| last.version() < highest) {
                run = self.backfill(account, projected, &mut decided).await?;
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
                    Applied::Committed => {
                        let count = usize::try_from(mutation.to_version - mutation.from_version)
                            .unwrap_or(run.len());
                        self.committed(&run[..count.min(run.len())], &mut decided, path);
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
        for candidate in run {
            decided.applied.insert(candidate.envelope.event_id);
        }
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
            metrics::gauge!("projection_lag_seconds").set(delay);
            metrics::histogram!("projection_delay_seconds", "path" => path).record(delay);
            tracing::debug!(version = last.envelope.version, "projected");
        }
    }

    /// Fetches the account's stream after `projected` from the command service. What
    /// the command service does not have (or cannot decode) is poison.
    async fn backfill(
        &self,
        account: Uuid,
        projected: i64,
        decided: &mut Decisions<'_>,
    ) -> Result<Vec<Candidate>, ProjectionError> {
        let from = u64::try_from(projected + 1).unwrap_or(1);
        let events = match self.source.account_events(account, from).await {
            Ok(events) => events,
            Err(SourceError::UnknownAccount(_)) => {
                decided.condemn_from(1, "the command service does not know this account");
                return Ok(Vec::new());
            }
            Err(error) => return Err(error.into()),
        };
        let mut run = Vec::with_capacity(events.len());
        let mut stop = None;
        for envelope in events {
            if envelope.account_id.as_uuid() != account
                || envelope.version != from + run.len() as u64
            {
                stop = Some(format!(
                    "the command service's stream is out of order at version {}",
                    envelope.version
                ));
                break;
            }
            let version = envelope.version;
            match Candidate::decode(envelope, Origin::Fetched) {
                Ok(candidate) => run.push(candidate),
                Err(reason) => {
                    stop = Some(format!(
                        "the command service's event at version {version} cannot be applied: {reason}"
                    ));
                    break;
                }
            }
        }
        let end = projected + run_len(&run);
        tracing::info!(
            %account,
            from_version = from,
            fetched = run.len(),
            "filled a gap from the command service"
        );
        let reason = stop.unwrap_or_else(|| {
            format!("the command service's stream of this account ends at version {end}")
        });
        decided.condemn_from(end + 1, &reason);
        Ok(run)
    }
}

/// The consecutive pending candidates right after `projected` (one per version).
fn next_run(candidates: &[Candidate], pending: &[usize], projected: i64) -> Vec<Candidate> {
    let mut run: Vec<Candidate> = Vec::new();
    for &index in pending {
        let candidate = &candidates[index];
        let next = projected + 1 + run_len(&run);
        if candidate.version() == next {
            run.push(candidate.clone());
        } else if candidate.version() > next {
            break;
        }
    }
    run
}

fn count_verdicts(verdicts: &[Verdict], path: &'static str) {
    for verdict in verdicts {
        let outcome = match verdict {
            Verdict::Applied => "applied",
            Verdict::Duplicate => "duplicate",
            Verdict::Poison(_) => "poison",
        };
        metrics::counter!("projection_events_total", "path" => path, "outcome" => outcome)
            .increment(1);
    }
}

fn run_len(run: &[Candidate]) -> i64 {
    i64::try_from(run.len()).unwrap_or(i64::MAX)
}

/// Verdicts being reached for the candidates of one account.
struct Decisions<'a> {
    candidates: &'a [Candidate],
    verdicts: Vec<Option<Verdict>>,
    applied: HashSet<Uuid>,
}

impl<'a> Decisions<'a> {
    fn new(candidates: &'a [Candidate]) -> Self {
        Self {
            candidates,
            verdicts: vec![None; candidates.len()],
            applied: HashSet::new(),
        }
    }

    /// Settles every open candidate the projection now covers: applied if this
    /// projector committed that very event, else a duplicate.
    fn settle_up_to(&mut self, projected: i64) {
        for (candidate, verdict) in self.candidates.iter().zip(&mut self.verdicts) {
            if verdict.is_none() && candidate.version() <= projected {
                *verdict = Some(if self.applied.remove(&candidate.envelope.event_id) {
                    Verdict::Applied
                } else {
                    Verdict::Duplicate
                });
            }
        }
    }

    /// Open candidates, by version.
    fn pending(&self) -> Vec<usize> {
        let mut pending: Vec<usize> = (0..self.candidates.len())
            .filter(|&i| self.verdicts[i].is_none())
            .collect();
        pending.sort_by_key(|&i| self.candidates[i].version());
        pending
    }

    /// Marks an impossible event: the delivered candidate itself, or, when the command
    /// service's own stream holds it, every open candidate from its version on.
    fn condemn(&mut self, culprit: &Candidate, reason: &str) {
        match culprit.origin {
            Origin::Fetched => self.condemn_from(culprit.version(), reason),
            Origin::Delivered => {
                for (candidate, verdict) in self.candidates.iter().zip(&mut self.verdicts) {
                    if verdict.is_none() && candidate.envelope.event_id == culprit.envelope.event_id
                    {
                        *verdict = Some(Verdict::Poison(reason.to_owned()));
                    }
                }
            }
        }
    }

    fn condemn_from(&mut self, version: i64, reason: &str) {
        for (candidate, verdict) in self.candidates.iter().zip(&mut self.verdicts) {
            if verdict.is_none() && candidate.version() >= version {
                *verdict = Some(Verdict::Poison(reason.to_owned()));
            }
        }
    }

    fn finish(self) -> Vec<Verdict> {
        self.verdicts
            .into_iter()
            .map(|verdict| verdict.unwrap_or(Verdict::Duplicate))
            .collect()
    }
}

/// Plans the changes of a run of consecutive events after `head`. Stops at the first
/// event that cannot follow what precedes it and says which one and why.
fn plan(
    account: Uuid,
    head: Option<&Head>,
    run: &[Candidate],
) -> (Option<Mutation>, Option<(usize, String)>) {
    let projected = head.map_or(0, |h| h.version);
    let mut currency: Option<Currency> = head.and_then(|h| Currency::parse(&h.currency).ok());
    let mut opened = head.is_some();
    let mut mutation = Mutation {
        account,
        from_version: projected,
        to_version: projected,
        opening: None,
        status: None,
        balance: None,
        updated_at: Utc::now(),
        operations: Vec::new(),
    };
    let mut invalid = None;
    for (index, candidate) in run.iter().enumerate() {
        let occurred_at = candidate.envelope.occurred_at.trunc_subsecs(6);
        let refusal = match &candidate.event {
            AccountEvent::Created { initial_balance } => {
                if opened {
                    Some("the account is already opened".to_owned())
                } else if candidate.version() != 1 {
                    Some("an account is opened by its first event only".to_owned())
                } else {
                    opened = true;
                    currency = Some(initial_balance.currency());
                    mutation.opening = Some(Opening {
                        currency: initial_balance.currency().code(),
                        created_at: occurred_at,
                    });
                    mutation.status = Some("CREATED");
                    mutation.balance = Some(initial_balance.amount());
                    None
                }
            }
            _ if !opened => Some("the account is not opened by its first event".to_owned()),
            AccountEvent::Credited { amount, balance }
            | AccountEvent::Debited { amount, balance } => match currency {
                Some(known) if known == amount.currency() => {
                    let kind = if matches!(candidate.event, AccountEvent::Credited { .. }) {
                        "CREDIT"
                    } else {
                        "DEBIT"
                    };
                    mutation.operations.push(OperationRow {
                        event_id: candidate.envelope.event_id,
                        version: candidate.version(),
                        kind,
                        amount: amount.amount(),
                        currency: known.code(),
                        balance_after: balance.amount(),
                        occurred_at,
                    });
                    mutation.balance = Some(balance.amount());
                    None
                }
                _ => Some(format!(
                    "{} differs from the account's currency",
                    amount.currency()
                )),
            },
            AccountEvent::Activated | AccountEvent::Reactivated => {
                mutation.status = Some("ACTIVE");
                None
            }
            AccountEvent::Suspended { .. } => {
                mutation.status = Some("SUSPENDED");
                None
            }
            AccountEvent::Closed => {
                mutation.status = Some("CLOSED");
                None
            }
        };
        if let Some(reason) = refusal {
            invalid = Some((index, reason));
            break;
        }
        mutation.to_version = candidate.version();
        mutation.updated_at = occurred_at;
    }
    let mutation = (mutation.to_version > projected).then_some(mutation);
    (mutation, invalid)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use rust_decimal::Decimal;
    use serde_json::json;
    use shared_events::{EventMetadata, SCHEMA_VERSION};

    use super::*;

    fn candidate(account: Uuid, version: u64, kind: &str, data: serde_json::Value) -> Candidate {
        let envelope = EventEnvelope {
            event_id: Uuid::new_v4(),
            account_id: AccountId::from(account),
            version,
            position: version,
            event_type: kind.to_owned(),
            schema_version: SCHEMA_VERSION,
            occurred_at: DateTime::parse_from_rfc3339("2026-11-22T10:00:00.1234567Z")
                .unwrap()
                .with_timezone(&Utc),
            data,
            metadata: EventMetadata::default(),
        };
        Candidate::decode(envelope, Origin::Delivered).unwrap()
    }

    #[test]
    fn a_run_from_creation_plans_one_insert_with_the_final_state() {
        let account = Uuid::new_v4();
        let run = [
            candidate(
                account,
                1,
                "AccountCreated",
                json!({"initial_balance": "10.00", "currency": "MAD"}),
            ),
            candidate(account, 2, "AccountActivated", json!({})),
            candidate(
                account,
                3,
                "AccountCredited",
                json!({"amount": "5.00", "currency": "MAD", "balance": "15.00"}),
            ),
        ];
        let (mutation, invalid) = plan(account, None, &run);
        let mutation = mutation.unwrap();
        assert!(invalid.is_none());
        assert_eq!((mutation.from_version, mutation.to_version), (0, 3));
        assert_eq!(mutation.status, Some("ACTIVE"));
        assert_eq!(mutation.balance, Some(Decimal::new(1500, 2)));
        assert_eq!(mutation.operations.len(), 1);
        assert_eq!(mutation.updated_at.timestamp_subsec_micros(), 123_456);
        assert!(mutation.opening.is_some());
    }

    #[test]
    fn a_movement_in_another_currency_stops_the_run_there() {
        let account = Uuid::new_v4();
        let head = Head {
            version: 2,
            currency: "MAD".to_owned(),
        };
        let run = [
            candidate(
                account,
                3,
                "AccountCredited",
                json!({"amount": "5.00", "currency": "MAD", "balance": "15.00"}),
            ),
            candidate(
                account,
                4,
                "AccountCredited",
                json!({"amount": "5.00", "currency": "EUR", "balance": "20.00"}),
            ),
        ];
        let (mutation, invalid) = plan(account, Some(&head), &run);
        assert_eq!(mutation.unwrap().to_version, 3);
        assert_eq!(invalid.map(|(index, _)| index), Some(1));
    }

    #[test]
    fn events_before_creation_or_a_second_creation_are_refused() {
        let account = Uuid::new_v4();
        let activated = [candidate(account, 1, "AccountActivated", json!({}))];
        let (mutation, invalid) = plan(account, None, &activated);
        assert!(mutation.is_none() && invalid.is_some());

        let head = Head {
            version: 1,
            currency: "MAD".to_owned(),
        };
        let created = [candidate(
            account,
            2,
            "AccountCreated",
            json!({"initial_balance": "1.00", "currency": "MAD"}),
        )];
        let (mutation, invalid) = plan(account, Some(&head), &created);
        assert!(mutation.is_none() && invalid.is_some());
    }

    #[test]
    fn decisions_settle_duplicates_and_condemn_from_a_version() {
        let account = Uuid::new_v4();
        let candidates = [
            candidate(account, 1, "AccountActivated", json!({})),
            candidate(account, 3, "AccountActivated", json!({})),
            candidate(account, 4, "AccountActivated", json!({})),
        ];
        let mut decided = Decisions::new(&candidates);
        decided.settle_up_to(1);
        assert_eq!(decided.pending(), [1, 2]);
        decided.condemn_from(4, "beyond");
        assert_eq!(decided.pending(), [1]);
        decided.settle_up_to(3);
        assert_eq!(
            decided.finish(),
            [
                Verdict::Duplicate,
                Verdict::Duplicate,
                Verdict::Poison("beyond".into())
            ]
        );
    }
}
