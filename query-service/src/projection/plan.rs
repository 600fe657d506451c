//! The pure part of the projection: what a run of events does to an account, and
//! which verdict each candidate gets. No clock, no I/O: the orchestration in
//! [`super`] reads the read model, asks here, and writes what comes back.

use std::collections::HashSet;

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use shared_events::{AccountEvent, AccountStatus, Currency, EventEnvelope};
use uuid::Uuid;

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
    pub(crate) event: AccountEvent,
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
        let event = envelope.decode().map_err(|error| error.to_string())?;
        Ok(Self {
            envelope,
            event,
            origin,
        })
    }

    pub(crate) fn version(&self) -> i64 {
        i64::try_from(self.envelope.version).unwrap_or(i64::MAX)
    }

    pub(crate) fn account(&self) -> Uuid {
        self.envelope.account_id.as_uuid()
    }
}

/// What became of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its effect is now in the read model.
    Applied,
    /// The read model already held this version.
    Duplicate,
    /// It can never be applied, for the reason given.
    Poison(String),
}

/// Where an account's projection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) version: i64,
    pub(crate) currency: String,
}

/// A credit or a debit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OperationKind {
    Credit,
    Debit,
}

impl OperationKind {
    /// The value of the `type` column.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Credit => "CREDIT",
            Self::Debit => "DEBIT",
        }
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
}

/// The columns only an account's first event sets.
#[derive(Debug, Clone)]
pub(crate) struct Opening {
    pub(crate) currency: &'static str,
    pub(crate) created_at: DateTime<Utc>,
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
}

/// An account's whole projected row, as a batch reads, folds and writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountRow {
    pub(crate) id: Uuid,
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
        }
    }

    /// The row after `mutation`, which starts at this row (or opens the account when
    /// there is none); `None` when a mutation without an opening has no row to start from.
    pub(crate) fn after(current: Option<&Self>, mutation: &Mutation) -> Option<Self> {
        let (currency, created_at) = match (&mutation.opening, current) {
            (Some(opening), _) => (opening.currency.to_owned(), opening.created_at),
            (None, Some(row)) => (row.currency.clone(), row.created_at),
            (None, None) => return None,
        };
        Some(Self {
            id: mutation.account,
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
}

impl<'a> Decisions<'a> {
    pub(crate) fn new(candidates: &'a [Candidate]) -> Self {
        Self {
            candidates,
            verdicts: vec![None; candidates.len()],
            applied: HashSet::new(),
        }
    }

    /// Records that this projector committed these events.
    pub(crate) fn committed(&mut self, run: &[Candidate]) {
        self.applied
            .extend(run.iter().map(|candidate| candidate.envelope.event_id));
    }

    /// Settles every open candidate the projection now covers: applied if this
    /// projector committed that very event, else a duplicate.
    pub(crate) fn settle_up_to(&mut self, projected: i64) {
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
    let mut opened = head.is_some();
    let mut opening = None;
    let mut status = None;
    let mut balance = None;
    let mut operations = Vec::new();
    let mut last: Option<(i64, DateTime<Utc>)> = None;
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
                    opening = Some(Opening {
                        currency: initial_balance.currency().code(),
                        created_at: occurred_at,
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
            }
            | AccountEvent::Debited {
                amount,
                balance: after,
            } => match currency {
                Some(known) if known == amount.currency() => {
                    let kind = if matches!(candidate.event, AccountEvent::Credited { .. }) {
                        OperationKind::Credit
                    } else {
                        OperationKind::Debit
                    };
                    operations.push(OperationRow {
                        event_id: candidate.envelope.event_id,
                        version: candidate.version(),
                        kind,
                        amount: amount.amount(),
                        currency: known.code(),
                        balance_after: after.amount(),
                        occurred_at,
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
        last = Some((candidate.version(), occurred_at));
    }
    let mutation =
        last.filter(|&(to_version, _)| to_version > projected)
            .map(|(to_version, updated_at)| Mutation {
                account,
                from_version: projected,
                to_version,
                opening,
                status,
                balance,
                updated_at,
                operations,
            });
    (mutation, invalid)
}

#[cfg(test)]
mod tests;
