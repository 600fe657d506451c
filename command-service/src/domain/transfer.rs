use shared_events::{
    AccountId, LegKind, Money, TransferEvent, TransferId, TransferLeg, TransferStatus,
};

/// What the write side knows of a transfer: enough to decide its next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub(crate) id: TransferId,
    pub(crate) from: AccountId,
    pub(crate) to: AccountId,
    pub(crate) amount: Money,
    pub(crate) reference: Option<String>,
    pub(crate) requested_by: String,
    pub(crate) status: TransferStatus,
    /// Whether the source has been debited (the money left it).
    pub(crate) debited: bool,
    /// Why it failed or was refunded: the refusing account's error code.
    pub(crate) reason: Option<String>,
    /// Number of events in the transfer's stream.
    pub(crate) version: u64,
}

/// What the transfer process must do next for a transfer that is not over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Debit the source (`TRANSFER_OUT`).
    DebitSource,
    /// Credit the destination (`TRANSFER_IN`); when it refuses, refund the source.
    CreditDestination,
}

/// A request to change a transfer: its opening, then the outcomes of its steps as the
/// transfer process observed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TransferCommand {
    Request {
        from: AccountId,
        to: AccountId,
        amount: Money,
        reference: Option<String>,
        requested_by: String,
    },
    /// The source took the debit.
    RecordDebit,
    /// The source refused the debit with the error `code`.
    RecordDebitRefused { code: String },
    /// The destination took the credit.
    RecordCredit,
    /// The destination refused the credit with `code`, and the source was refunded.
    RecordRefund { code: String },
}

/// Why a transfer command cannot be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransferError {
    #[error("the transfer already exists")]
    Exists,
    #[error("the transfer does not exist")]
    NotFound,
    #[error("a transfer cannot move money from an account to itself")]
    SameAccount,
    #[error("the transfer is {status}; {step} does not follow")]
    OutOfOrder {
        status: TransferStatus,
        step: &'static str,
    },
}

impl Transfer {
    /// The leg of `kind` of this transfer.
    pub(crate) fn leg(&self, kind: LegKind) -> TransferLeg {
        TransferLeg {
            transfer_id: self.id,
            kind,
        }
    }

    /// The next step, `None` once the transfer is over.
    pub(crate) fn next_step(&self) -> Option<Step> {
        match (self.status, self.debited) {
            (TransferStatus::Pending, false) => Some(Step::DebitSource),
            (TransferStatus::Pending, true) => Some(Step::CreditDestination),
            _ => None,
        }
    }
}

/// Decides which events a command causes on a transfer (`None`: not requested yet).
/// An outcome recorded again (the process repeated a step after a crash) causes
/// nothing: each outcome is recorded once.
pub(crate) fn decide(
    transfer: Option<&Transfer>,
    command: &TransferCommand,
) -> Result<Vec<TransferEvent>, TransferError> {
    let Some(transfer) = transfer else {
        return match command {
            TransferCommand::Request {
                from,
                to,
                amount,
                reference,
                requested_by,
            } => {
                if from == to {
                    return Err(TransferError::SameAccount);
                }
                Ok(vec![TransferEvent::Requested {
                    from: *from,
                    to: *to,
                    amount: *amount,
                    reference: reference.clone(),
                    requested_by: requested_by.clone(),
                }])
            }
            _ => Err(TransferError::NotFound),
        };
    };
    let out_of_order = |step| {
        Err(TransferError::OutOfOrder {
            status: transfer.status,
            step,
        })
    };
    use TransferStatus::{Completed, Failed, Pending, Refunded};
    match (command, transfer.status, transfer.debited) {
        (TransferCommand::Request { .. }, ..) => Err(TransferError::Exists),
        (TransferCommand::RecordDebit, Pending, false) => Ok(vec![TransferEvent::Debited]),
        (TransferCommand::RecordDebit, Pending | Completed | Refunded, true) => Ok(vec![]),
        (TransferCommand::RecordDebitRefused { code }, Pending, false) => {
            Ok(vec![TransferEvent::Failed {
                reason: code.clone(),
            }])
        }
        (TransferCommand::RecordDebitRefused { .. }, Failed, _) => Ok(vec![]),
        (TransferCommand::RecordCredit, Pending, true) => Ok(vec![TransferEvent::Completed]),
        (TransferCommand::RecordCredit, Completed, _) => Ok(vec![]),
        (TransferCommand::RecordRefund { code }, Pending, true) => {
            Ok(vec![TransferEvent::Refunded {
                reason: code.clone(),
            }])
        }
        (TransferCommand::RecordRefund { .. }, Refunded, _) => Ok(vec![]),
        (TransferCommand::RecordDebit, ..) => out_of_order("a debit"),
        (TransferCommand::RecordDebitRefused { .. }, ..) => out_of_order("a refused debit"),
        (TransferCommand::RecordCredit, ..) => out_of_order("a credit"),
        (TransferCommand::RecordRefund { .. }, ..) => out_of_order("a refund"),
    }
}

/// Applies an event to a transfer of id `id`. Never fails: events are facts.
pub(crate) fn evolve(
    id: TransferId,
    transfer: Option<Transfer>,
    event: &TransferEvent,
) -> Option<Transfer> {
    match (transfer, event) {
        (
            None,
            TransferEvent::Requested {
                from,
                to,
                amount,
                reference,
                requested_by,
            },
        ) => Some(Transfer {
            id,
            from: *from,
            to: *to,
            amount: *amount,
            reference: reference.clone(),
            requested_by: requested_by.clone(),
            status: TransferStatus::Pending,
            debited: false,
            reason: None,
            version: 1,
        }),
        (None, _) => None,
        (Some(transfer), TransferEvent::Requested { .. }) => Some(transfer),
        (Some(transfer), event) => {
            let mut next = Transfer {
                version: transfer.version + 1,
                status: event.status(),
                ..transfer
            };
            match event {
                TransferEvent::Requested { .. } => {}
                TransferEvent::Debited => next.debited = true,
                TransferEvent::Completed => {}
                TransferEvent::Failed { reason } | TransferEvent::Refunded { reason } => {
                    next.reason = Some(reason.clone());
                }
            }
            Some(next)
        }
    }
}

#[cfg(test)]
mod tests;
