//! The pure part of the projection: what a run of events does to an account or a
//! transfer, which verdict each candidate gets, and what the balance sheet gains. No
//! clock, no I/O: the orchestration in [`super`] reads the read model, asks here, and
//! writes what comes back.
//!
//! - this module: candidates and verdicts of any stream, and the accounts' planner;
//! - [`transfer`]: the transfers' planner.

pub(crate) mod transfer;

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use shared_events::{
    AccountEvent, AccountStatus, Currency, DomainEvent, EventEnvelope, LegKind, TransferEvent,
};
use uuid::Uuid;

pub(crate) use self::transfer::{TransferMutation, TransferRow, plan_transfer};

/// Longest owner (`sub`) the read model's `owner` column holds (also a transfer's
/// `requested_by`).
pub(crate) const MAX_OWNER_CHARS: usize = 512;

/// The kinds of event stream the read model projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum StreamKind {
    Account,
    Transfer,
}

impl StreamKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Account => "account",
            Self::Transfer => "transfer",
        }
    }
}

/// One event stream: an account's or a transfer's (the envelope's `account_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Stream {
    pub(crate) kind: StreamKind,
    pub(crate) id: Uuid,
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.id)
    }
}

/// A decoded event of either kind of stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamEvent {
    Account(AccountEvent),
    Transfer(TransferEvent),
}

impl StreamEvent {
    pub(crate) fn kind(&self) -> StreamKind {
        match self {
            Self::Account(_) => StreamKind::Account,
            Self::Transfer(_) => StreamKind::Transfer,
        }
    }
}

/// Where a candidate event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Handed over by the caller (a broker message, a feed page).
    Delivered,
    /// Fetched from the command service to fill a gap.
    Fetched,
}

/// An event that decodes: a candidate for the projection.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) envelope: EventEnvelope,
    pub(crate) event: StreamEvent,
    pub(crate) origin: Origin,
}

impl Candidate {
    /// Checks an envelope; the error says why it could never be applied.
    pub(crate) fn decode(envelope: EventEnvelope, origin: Origin) -> Result<Self, String> {
        if envelope.version == 0 || i64::try_from(envelope.version).is_err() {
            return Err(format!(
                "version {} is out of range (1-based)",
                envelope.version
            ));
        }
        let event = match envelope.decode().map_err(|error| error.to_string())? {
            DomainEvent::Account(event) => StreamEvent::Account(event),
            DomainEvent::Transfer(event) => StreamEvent::Transfer(event),
        };
        Ok(Self {
            envelope,
            event,
            origin,
        })
    }

    pub(crate) fn version(&self) -> i64 {
        i64::try_from(self.envelope.version).unwrap_or(i64::MAX)
    }

    /// The id of its stream (an account's or a transfer's).
    pub(crate) fn stream_id(&self) -> Uuid {
        self.envelope.account_id.as_uuid()
    }

    /// Its stream, of the kind its event says.
    pub(crate) fn stream(&self) -> Stream {
        Stream {
            kind: self.event.kind(),
            id: self.stream_id(),
        }
    }
}

/// What became of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its effect is now in the read model.
    Applied,
    /// The read model already held this very event.
    Duplicate,
    /// The read model holds another event at this version: a forgery or corruption.
    Conflict(String),
    /// It can never be applied, for the reason given.
    Poison(String),
}

/// Where an account's projection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) version: i64,
    pub(crate) currency: String,
    pub(crate) status: AccountStatus,
    pub(crate) balance: Decimal,
}

/// Where a stream's projection stands, read from the table of its kind; `None`
/// inside before its first event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamHead {
    Account(Option<Head>),
    Transfer(Option<TransferRow>),
}

impl StreamHead {
    /// The stream's projected version (0 before its first event).
    pub(crate) fn version(&self) -> i64 {
        match self {
            Self::Account(head) => head.as_ref().map_or(0, |h| h.version),
            Self::Transfer(row) => row.as_ref().map_or(0, |row| row.version),
        }
    }

    /// Plans a run of consecutive events after this head (see [`plan`] and
    /// [`plan_transfer`]).
    pub(crate) fn plan(
        &self,
        id: Uuid,
        run: &[Candidate],
    ) -> (Option<StreamMutation>, Option<(usize, String)>) {
        match self {
            Self::Account(head) => {
                let (mutation, invalid) = plan(id, head.as_ref(), run);
                (mutation.map(StreamMutation::Account), invalid)
            }
            Self::Transfer(row) => {
                let (mutation, invalid) = plan_transfer(id, row.as_ref(), run);
                (mutation.map(StreamMutation::Transfer), invalid)
            }
        }
    }
}

/// The changes one run of events makes to a stream's projection.
#[derive(Debug, Clone)]
pub(crate) enum StreamMutation {
    Account(Mutation),
    Transfer(TransferMutation),
}

impl StreamMutation {
    /// The projected version the run starts from (0 for a new stream).
    pub(crate) fn start_version(&self) -> i64 {
        match self {
            Self::Account(mutation) => mutation.from_version,
            Self::Transfer(mutation) => mutation.from_version,
        }
    }

    /// The version the run ends at.
    pub(crate) fn end_version(&self) -> i64 {
        match self {
            Self::Account(mutation) => mutation.to_version,
            Self::Transfer(mutation) => mutation.row.version,
        }
    }
}

/// Kind of an operation: a plain credit or debit, or a leg of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OperationKind {
    Credit,
    Debit,
    TransferOut,
    TransferIn,
    TransferRefund,
}

impl OperationKind {
    /// The value of the `type` column.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Credit => "CREDIT",
            Self::Debit => "DEBIT",
            Self::TransferOut => LegKind::TransferOut.as_str(),
            Self::TransferIn => LegKind::TransferIn.as_str(),
            Self::TransferRefund => LegKind::TransferRefund.as_str(),
        }
    }

    fn of_leg(kind: LegKind) -> Self {
        match kind {
            LegKind::TransferOut => Self::TransferOut,
            LegKind::TransferIn => Self::TransferIn,
            LegKind::TransferRefund => Self::TransferRefund,
        }
    }
}

/// What a run of an account's events adds to the balance sheet's counters of its
/// currency (the store picks the row, see `store::projection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SheetDelta {
    pub(crate) currency: &'static str,
    /// Change of the sum of the balances (of every account, closed or not).
    pub(crate) balance: Decimal,
    /// Change of the number of accounts that are not closed.
    pub(crate) accounts: i64,
    /// Money debited by transfers (`TRANSFER_OUT`) less money that arrived or came back
    /// (`TRANSFER_IN`, `TRANSFER_REFUND`).
    pub(crate) in_transit: Decimal,
}

impl SheetDelta {
    /// Whether it changes nothing.
    pub(crate) fn is_zero(&self) -> bool {
        self.balance.is_zero() && self.accounts == 0 && self.in_transit.is_zero()
    }

    /// Adds another delta of the same currency.
    pub(crate) fn absorb(&mut self, other: &Self) {
        self.balance += other.balance;
        self.accounts += other.accounts;
        self.in_transit += other.in_transit;
    }
}

/// The changes one run of consecutive events makes to an account.
#[derive(Debug, Clone)]
pub(crate) struct Mutation {
    pub(crate) account: Uuid,
    /// The projected version the run starts from (0 for a new account).
    pub(crate) from_version: i64,
    pub(crate) to_version: i64,
    /// Set when the run opens the account.
    pub(crate) opening: Option<Opening>,
    pub(crate) status: Option<AccountStatus>,
    pub(crate) balance: Option<Decimal>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) operations: Vec<OperationRow>,
    /// One per event of the run.
    pub(crate) versions: Vec<VersionRow>,
    /// What the run adds to the balance sheet; `None` when nothing.
    pub(crate) sheet: Option<SheetDelta>,
}

/// The columns only an account's first event sets.
#[derive(Debug, Clone)]
pub(crate) struct Opening {
    pub(crate) currency: &'static str,
    pub(crate) created_at: DateTime<Utc>,
    /// `None` for an account opened before owners existed (admins only).
    pub(crate) owner: Option<String>,
}

/// One projected version: the event that made it and the account after it.
#[derive(Debug, Clone)]
pub(crate) struct VersionRow {
    pub(crate) version: i64,
    pub(crate) event_id: Uuid,
    pub(crate) kind: &'static str,
    pub(crate) status: AccountStatus,
    pub(crate) balance: Decimal,
    pub(crate) occurred_at: DateTime<Utc>,
}

/// One credit or debit.
#[derive(Debug, Clone)]
pub(crate) struct OperationRow {
    pub(crate) event_id: Uuid,
    pub(crate) version: i64,
    pub(crate) kind: OperationKind,
    pub(crate) amount: Decimal,
    pub(crate) currency: &'static str,
    pub(crate) balance_after: Decimal,
    pub(crate) occurred_at: DateTime<Utc>,
    /// The transfer it is a leg of.
    pub(crate) transfer_id: Option<Uuid>,
}

/// An account's whole projected row, as a batch reads, folds and writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountRow {
    pub(crate) id: Uuid,
    pub(crate) owner: Option<String>,
    pub(crate) status: AccountStatus,
    pub(crate) currency: String,
    pub(crate) balance: Decimal,
    pub(crate) version: i64,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

impl AccountRow {
    /// Where the projection of this account stands.
    pub(crate) fn head(&self) -> Head {
        Head {
            version: self.version,
            currency: self.currency.clone(),
            status: self.status,
            balance: self.balance,
        }
    }

    /// The row after `mutation`, which starts at this row (or opens the account when
    /// there is none); `None` when a mutation without an opening has no row to start from.
    pub(crate) fn after(current: Option<&Self>, mutation: &Mutation) -> Option<Self> {
        let (currency, created_at, owner) = match (&mutation.opening, current) {
            (Some(opening), _) => (
                opening.currency.to_owned(),
                opening.created_at,
                opening.owner.clone(),
            ),
            (None, Some(row)) => (row.currency.clone(), row.created_at, row.owner.clone()),
            (None, None) => return None,
        };
        Some(Self {
            id: mutation.account,
            owner,
            status: mutation
                .status
                .or_else(|| current.map(|row| row.status))
                .unwrap_or(AccountStatus::Created),
            currency,
            balance: mutation
                .balance
                .or_else(|| current.map(|row| row.balance))
                .unwrap_or_default(),
            version: mutation.to_version,
            created_at,
            updated_at: mutation.updated_at,
        })
    }
}

/// The consecutive pending candidates right after `projected` (one per version).
pub(crate) fn next_run(
    candidates: &[Candidate],
    pending: &[usize],
    projected: i64,
) -> Vec<Candidate> {
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

pub(crate) fn run_len(run: &[Candidate]) -> i64 {
    i64::try_from(run.len()).unwrap_or(i64::MAX)
}

/// Verdicts being reached for the candidates of one account.
#[derive(Debug)]
pub(crate) struct Decisions<'a> {
    candidates: &'a [Candidate],
    verdicts: Vec<Option<Verdict>>,
    applied: HashSet<Uuid>,
    /// The event id the read model holds at each version known so far.
    projected_ids: HashMap<i64, Uuid>,
}

impl<'a> Decisions<'a> {
    pub(crate) fn new(candidates: &'a [Candidate]) -> Self {
        Self {
            candidates,
            verdicts: vec![None; candidates.len()],
            applied: HashSet::new(),
            projected_ids: HashMap::new(),
        }
    }

    /// Records that this projector committed these events.
    pub(crate) fn committed(&mut self, run: &[Candidate]) {
        for candidate in run {
            self.applied.insert(candidate.envelope.event_id);
            self.projected_ids
                .insert(candidate.version(), candidate.envelope.event_id);
        }
    }

    /// Records the event ids the read model holds at some versions.
    pub(crate) fn learn(&mut self, projected_ids: impl IntoIterator<Item = (i64, Uuid)>) {
        self.projected_ids.extend(projected_ids);
    }

    /// Versions of open candidates at or below `projected` whose projected event id is
    /// not known yet: what to look up before [`Decisions::settle_up_to`].
    pub(crate) fn unknown_up_to(&self, projected: i64) -> Vec<i64> {
        let mut versions: Vec<i64> = self
            .candidates
            .iter()
            .zip(&self.verdicts)
            .filter(|(candidate, verdict)| {
                verdict.is_none()
                    && candidate.version() <= projected
                    && !self.projected_ids.contains_key(&candidate.version())
            })
            .map(|(candidate, _)| candidate.version())
            .collect();
        versions.sort_unstable();
        versions.dedup();
        versions
    }

    /// Settles every open candidate the projection now covers: applied if this
    /// projector committed that very event, a conflict if the read model holds another
    /// event at its version, else a duplicate (also when the version predates the
    /// record of event ids).
    pub(crate) fn settle_up_to(&mut self, projected: i64) {
        for (candidate, verdict) in self.candidates.iter().zip(&mut self.verdicts) {
            if verdict.is_none() && candidate.version() <= projected {
                let event_id = candidate.envelope.event_id;
                *verdict = Some(if self.applied.remove(&event_id) {
                    Verdict::Applied
                } else {
                    match self.projected_ids.get(&candidate.version()) {
                        Some(&held) if held != event_id => Verdict::Conflict(format!(
                            "version {} of this account is event {held}, not {event_id}",
                            candidate.version()
                        )),
                        _ => Verdict::Duplicate,
                    }
                });
            }
        }
    }

    /// Open candidates, by version.
    pub(crate) fn pending(&self) -> Vec<usize> {
        let mut pending: Vec<usize> = (0..self.candidates.len())
            .filter(|&i| self.verdicts[i].is_none())
            .collect();
        pending.sort_by_key(|&i| self.candidates[i].version());
        pending
    }

    /// Marks an impossible event: the delivered candidate itself, or, when the command
    /// service's own stream holds it, every open candidate from its version on.
    pub(crate) fn condemn(&mut self, culprit: &Candidate, reason: &str) {
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

    pub(crate) fn condemn_from(&mut self, version: i64, reason: &str) {
        for (candidate, verdict) in self.candidates.iter().zip(&mut self.verdicts) {
            if verdict.is_none() && candidate.version() >= version {
                *verdict = Some(Verdict::Poison(reason.to_owned()));
            }
        }
    }

    pub(crate) fn finish(self) -> Vec<Verdict> {
        self.verdicts
            .into_iter()
            .map(|verdict| verdict.unwrap_or(Verdict::Duplicate))
            .collect()
    }
}

/// Plans the changes of a run of consecutive events after `head`. Stops at the first
/// event that cannot follow what precedes it and says which one and why.
pub(crate) fn plan(
    account: Uuid,
    head: Option<&Head>,
    run: &[Candidate],
) -> (Option<Mutation>, Option<(usize, String)>) {
    let projected = head.map_or(0, |h| h.version);
    let mut currency: Option<Currency> = head.and_then(|h| Currency::parse(&h.currency).ok());
    let mut current_status = head.map_or(AccountStatus::Created, |h| h.status);
    let mut current_balance = head.map_or(Decimal::ZERO, |h| h.balance);
    let mut versions = Vec::new();
    let mut opened = head.is_some();
    let mut opening = None;
    let mut status = None;
    let mut balance = None;
    let mut in_transit = Decimal::ZERO;
    let mut operations = Vec::new();
    let mut last: Option<(i64, DateTime<Utc>)> = None;
    let mut invalid = None;
    for (index, candidate) in run.iter().enumerate() {
        let occurred_at = candidate.envelope.occurred_at.trunc_subsecs(6);
        let event = match &candidate.event {
            StreamEvent::Account(event) => event,
            StreamEvent::Transfer(_) => {
                invalid = Some((
                    index,
                    "a transfer's event in an account's stream".to_owned(),
                ));
                break;
            }
        };
        let refusal = match event {
            AccountEvent::Created {
                initial_balance,
                owner,
            } => {
                if opened {
                    Some("the account is already opened".to_owned())
                } else if candidate.version() != 1 {
                    Some("an account is opened by its first event only".to_owned())
                } else if owner
                    .as_ref()
                    .is_some_and(|owner| owner.chars().count() > MAX_OWNER_CHARS)
                {
                    Some(format!(
                        "its owner is longer than the {MAX_OWNER_CHARS} characters the read model keeps"
                    ))
                } else {
                    opened = true;
                    currency = Some(initial_balance.currency());
                    opening = Some(Opening {
                        currency: initial_balance.currency().code(),
                        created_at: occurred_at,
                        owner: owner.clone(),
                    });
                    status = Some(AccountStatus::Created);
                    balance = Some(initial_balance.amount());
                    None
                }
            }
            _ if !opened => Some("the account is not opened by its first event".to_owned()),
            AccountEvent::Credited {
                amount,
                balance: after,
                leg,
            }
            | AccountEvent::Debited {
                amount,
                balance: after,
                leg,
            } => match currency {
                Some(known) if known == amount.currency() => {
                    let kind = match leg {
                        Some(leg) => OperationKind::of_leg(leg.kind),
                        None if matches!(event, AccountEvent::Credited { .. }) => {
                            OperationKind::Credit
                        }
                        None => OperationKind::Debit,
                    };
                    match kind {
                        OperationKind::TransferOut => in_transit += amount.amount(),
                        OperationKind::TransferIn | OperationKind::TransferRefund => {
                            in_transit -= amount.amount();
                        }
                        OperationKind::Credit | OperationKind::Debit => {}
                    }
                    operations.push(OperationRow {
                        event_id: candidate.envelope.event_id,
                        version: candidate.version(),
                        kind,
                        amount: amount.amount(),
                        currency: known.code(),
                        balance_after: after.amount(),
                        occurred_at,
                        transfer_id: leg.map(|leg| leg.transfer_id.as_uuid()),
                    });
                    balance = Some(after.amount());
                    None
                }
                _ => Some(format!(
                    "{} differs from the account's currency",
                    amount.currency()
                )),
            },
            AccountEvent::Activated | AccountEvent::Reactivated => {
                status = Some(AccountStatus::Active);
                None
            }
            AccountEvent::Suspended { .. } => {
                status = Some(AccountStatus::Suspended);
                None
            }
            AccountEvent::Closed => {
                status = Some(AccountStatus::Closed);
                None
            }
        };
        if let Some(reason) = refusal {
            invalid = Some((index, reason));
            break;
        }
        current_status = status.unwrap_or(current_status);
        current_balance = balance.unwrap_or(current_balance);
        versions.push(VersionRow {
            version: candidate.version(),
            event_id: candidate.envelope.event_id,
            kind: event.event_type().as_str(),
            status: current_status,
            balance: current_balance,
            occurred_at,
        });
        last = Some((candidate.version(), occurred_at));
    }
    let mutation =
        last.filter(|&(to_version, _)| to_version > projected)
            .map(|(to_version, updated_at)| {
                let sheet = currency
                    .map(|currency| SheetDelta {
                        currency: currency.code(),
                        balance: current_balance - head.map_or(Decimal::ZERO, |h| h.balance),
                        accounts: counted(Some(current_status)) - counted(head.map(|h| h.status)),
                        in_transit,
                    })
                    .filter(|delta| !delta.is_zero());
                Mutation {
                    account,
                    from_version: projected,
                    to_version,
                    opening,
                    status,
                    balance,
                    updated_at,
                    operations,
                    versions,
                    sheet,
                }
            });
    (mutation, invalid)
}

/// How many accounts the balance sheet counts for an account in `status` (`None`:
/// not opened): the ones that are not closed.
fn counted(status: Option<AccountStatus>) -> i64 {
    match status {
        Some(AccountStatus::Closed) | None => 0,
        Some(_) => 1,
    }
}

#[cfg(test)]
mod tests;
