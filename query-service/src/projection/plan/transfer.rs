//! What a run of a transfer's events does to its row. A transfer's stream follows
//! one lifecycle: `TransferRequested` (version 1), then either `TransferFailed`, or
//! `TransferDebited` and then `TransferCompleted` or `TransferRefunded`. An event that
//! does not fit it is refused, like an account event that cannot apply.

use chrono::{DateTime, SubsecRound, Utc};
use rust_decimal::Decimal;
use shared_events::{TransferEvent, TransferStatus};
use uuid::Uuid;

use super::{Candidate, MAX_OWNER_CHARS, StreamEvent};

/// Longest `reason` (of a failure or a refund) the read model's column holds.
const MAX_REASON_CHARS: usize = 255;

/// A transfer's whole projected row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransferRow {
    pub(crate) id: Uuid,
    pub(crate) from: Uuid,
    pub(crate) to: Uuid,
    pub(crate) amount: Decimal,
    pub(crate) currency: String,
    pub(crate) reference: Option<String>,
    pub(crate) status: TransferStatus,
    /// Why it failed or was refunded.
    pub(crate) reason: Option<String>,
    pub(crate) requested_by: String,
    pub(crate) version: i64,
    /// `occurred_at` of its first event.
    pub(crate) created_at: DateTime<Utc>,
    /// `occurred_at` of its latest event.
    pub(crate) updated_at: DateTime<Utc>,
}

/// Where a transfer stands in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Requested, the source not debited yet.
    Requested,
    /// The source debited: the money is in transit.
    Debited,
    /// Completed, failed or refunded.
    Ended,
}

impl TransferRow {
    /// Its stage: a pending transfer past its first event has been debited (the only
    /// event that follows a request and leaves it pending).
    fn stage(&self) -> Stage {
        if self.status.is_terminal() {
            Stage::Ended
        } else if self.version <= 1 {
            Stage::Requested
        } else {
            Stage::Debited
        }
    }
}

/// One projected version of a transfer: the event that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransferVersionRow {
    pub(crate) version: i64,
    pub(crate) event_id: Uuid,
    pub(crate) kind: &'static str,
    pub(crate) occurred_at: DateTime<Utc>,
}

/// The changes one run of consecutive events makes to a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransferMutation {
    /// The projected version the run starts from (0: the run requests the transfer).
    pub(crate) from_version: i64,
    /// The row after the run.
    pub(crate) row: TransferRow,
    /// One per event of the run.
    pub(crate) versions: Vec<TransferVersionRow>,
}

impl TransferMutation {
    /// Whether the run creates the row.
    pub(crate) fn opens(&self) -> bool {
        self.from_version == 0
    }
}

/// Plans the changes of a run of consecutive events of transfer `id` after `current`
/// (its projected row, if any). Stops at the first event that cannot follow what
/// precedes it and says which one and why.
pub(crate) fn plan_transfer(
    id: Uuid,
    current: Option<&TransferRow>,
    run: &[Candidate],
) -> (Option<TransferMutation>, Option<(usize, String)>) {
    let projected = current.map_or(0, |row| row.version);
    let mut row = current.cloned();
    let mut versions = Vec::new();
    let mut invalid = None;
    for (index, candidate) in run.iter().enumerate() {
        let occurred_at = candidate.envelope.occurred_at.trunc_subsecs(6);
        let StreamEvent::Transfer(event) = &candidate.event else {
            invalid = Some((
                index,
                "an account's event in a transfer's stream".to_owned(),
            ));
            break;
        };
        let refusal = match (event, row.as_mut()) {
            (
                TransferEvent::Requested {
                    from,
                    to,
                    amount,
                    reference,
                    requested_by,
                },
                None,
            ) => {
                if candidate.version() != 1 {
                    Some("a transfer is requested by its first event only".to_owned())
                } else if requested_by.is_empty() || requested_by.chars().count() > MAX_OWNER_CHARS
                {
                    Some(format!(
                        "its requested_by is empty or longer than the {MAX_OWNER_CHARS} characters the read model keeps"
                    ))
                } else {
                    row = Some(TransferRow {
                        id,
                        from: from.as_uuid(),
                        to: to.as_uuid(),
                        amount: amount.amount(),
                        currency: amount.currency().code().to_owned(),
                        reference: reference.clone(),
                        status: TransferStatus::Pending,
                        reason: None,
                        requested_by: requested_by.clone(),
                        version: 1,
                        created_at: occurred_at,
                        updated_at: occurred_at,
                    });
                    None
                }
            }
            (TransferEvent::Requested { .. }, Some(_)) => {
                Some("the transfer is already requested".to_owned())
            }
            (_, None) => Some("the transfer is not requested by its first event".to_owned()),
            (TransferEvent::Failed { reason } | TransferEvent::Refunded { reason }, Some(_))
                if reason.chars().count() > MAX_REASON_CHARS =>
            {
                Some(format!(
                    "its reason is longer than the {MAX_REASON_CHARS} characters the read model keeps"
                ))
            }
            (event, Some(row)) => match (event, row.stage()) {
                (TransferEvent::Debited | TransferEvent::Failed { .. }, Stage::Requested)
                | (TransferEvent::Completed | TransferEvent::Refunded { .. }, Stage::Debited) => {
                    row.status = event.status();
                    row.reason = match event {
                        TransferEvent::Failed { reason } | TransferEvent::Refunded { reason } => {
                            Some(reason.clone())
                        }
                        _ => None,
                    };
                    row.version = candidate.version();
                    row.updated_at = occurred_at;
                    None
                }
                (event, stage) => Some(format!(
                    "{} cannot follow a transfer's {}",
                    event.event_type(),
                    match stage {
                        Stage::Requested => "request",
                        Stage::Debited => "debit",
                        Stage::Ended => "end",
                    }
                )),
            },
        };
        if let Some(reason) = refusal {
            invalid = Some((index, reason));
            break;
        }
        versions.push(TransferVersionRow {
            version: candidate.version(),
            event_id: candidate.envelope.event_id,
            kind: event.event_type().as_str(),
            occurred_at,
        });
    }
    let mutation = row
        .filter(|row| row.version > projected)
        .map(|row| TransferMutation {
            from_version: projected,
            row,
            versions,
        });
    (mutation, invalid)
}

#[cfg(test)]
mod tests;
