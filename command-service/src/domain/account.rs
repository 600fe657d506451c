use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use shared_events::{
    AccountEvent, AccountStatus, Currency, LegKind, Money, MoneyError, TransferLeg,
};

/// What the write side knows of an account: enough to decide every command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Account {
    pub(crate) status: AccountStatus,
    pub(crate) balance: Money,
    /// Number of events in the account's stream.
    pub(crate) version: u64,
    /// The `sub` that owns the account; `None` for an account opened before
    /// identities existed, which only admins may act on.
    pub(crate) owner: Option<String>,
}

impl Account {
    pub(crate) fn currency(&self) -> Currency {
        self.balance.currency()
    }
}

/// Who asks for a command: the caller's `sub`, and whether it may act on every
/// account (`accounts:admin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requester {
    pub(crate) sub: String,
    pub(crate) admin: bool,
}

impl Requester {
    /// Whether the requester may act on `account`: an admin on any, anyone else on
    /// the accounts it owns.
    pub(crate) fn may_act_on(&self, account: &Account) -> bool {
        self.admin || account.owner.as_deref() == Some(self.sub.as_str())
    }
}

/// A request to change an account. Amounts are raw decimals here: whether they fit
/// the account's currency is part of the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub(crate) enum AccountCommand {
    Create {
        initial_balance: Decimal,
        currency: Currency,
        /// The `sub` the account will belong to.
        owner: String,
    },
    Activate,
    Credit {
        amount: Decimal,
        currency: Option<Currency>,
    },
    Debit {
        amount: Decimal,
        currency: Option<Currency>,
    },
    Suspend {
        reason: Option<String>,
    },
    Reactivate,
    Close,
    /// A leg of a transfer, decided for the bank by the transfer process: the
    /// source's debit, the destination's credit, or the source's refund.
    Leg {
        leg: TransferLeg,
        amount: Money,
    },
}

impl AccountCommand {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Activate => "activate",
            Self::Credit { .. } => "credit",
            Self::Debit { .. } => "debit",
            Self::Suspend { .. } => "suspend",
            Self::Reactivate => "reactivate",
            Self::Close => "close",
            Self::Leg { leg, .. } => match leg.kind {
                LegKind::TransferOut => "transfer_out",
                LegKind::TransferIn => "transfer_in",
                LegKind::TransferRefund => "transfer_refund",
            },
        }
    }
}

/// Why a command was refused. Each maps to one of the contract's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DomainError {
    #[error("the account already exists")]
    AccountExists,
    #[error("the account does not exist")]
    NotFound,
    #[error("cannot {command} an account that is {status}")]
    InvalidState {
        command: &'static str,
        status: AccountStatus,
    },
    #[error("cannot close an account whose balance is {balance}, not zero")]
    NonZeroBalance { balance: String },
    #[error("the balance is {balance}, less than the {requested} requested")]
    InsufficientFunds { balance: String, requested: String },
    #[error("the account holds {account}, not {requested}")]
    CurrencyMismatch {
        account: Currency,
        requested: Currency,
    },
    #[error("the balance would exceed {}", shared_events::MAX_BALANCE)]
    BalanceLimitExceeded,
    #[error("invalid amount: {0}")]
    InvalidAmount(#[from] MoneyError),
}

/// Decides which events a command of `requester` causes on an account (`None`: no
/// such account yet). An account the requester may not act on is, to it, an account
/// that does not exist.
pub(crate) fn decide(
    account: Option<&Account>,
    requester: &Requester,
    command: &AccountCommand,
) -> Result<Vec<AccountEvent>, DomainError> {
    let Some(account) = account else {
        return match command {
            AccountCommand::Create {
                initial_balance,
                currency,
                owner,
            } => Ok(vec![AccountEvent::Created {
                initial_balance: Money::opening_balance(*initial_balance, *currency)?,
                owner: Some(owner.clone()),
            }]),
            _ => Err(DomainError::NotFound),
        };
    };
    if !matches!(command, AccountCommand::Create { .. }) && !requester.may_act_on(account) {
        return Err(DomainError::NotFound);
    }
    let require = |allowed: &[AccountStatus]| {
        if allowed.contains(&account.status) {
            Ok(())
        } else {
            Err(DomainError::InvalidState {
                command: command.name(),
                status: account.status,
            })
        }
    };
    use AccountStatus::{Active, Created, Suspended};
    match command {
        AccountCommand::Create { .. } => Err(DomainError::AccountExists),
        AccountCommand::Activate => {
            require(&[Created])?;
            Ok(vec![AccountEvent::Activated])
        }
        AccountCommand::Credit { amount, currency } => {
            require(&[Active])?;
            let amount = movement(account, *amount, *currency)?;
            credited(account, amount, None)
        }
        AccountCommand::Debit { amount, currency } => {
            require(&[Active])?;
            let amount = movement(account, *amount, *currency)?;
            debited(account, amount, None)
        }
        AccountCommand::Suspend { reason } => {
            require(&[Active])?;
            Ok(vec![AccountEvent::Suspended {
                reason: reason.clone(),
            }])
        }
        AccountCommand::Reactivate => {
            require(&[Suspended])?;
            Ok(vec![AccountEvent::Reactivated])
        }
        AccountCommand::Close => {
            require(&[Active, Suspended])?;
            if !account.balance.is_zero() {
                return Err(DomainError::NonZeroBalance {
                    balance: account.balance.render(),
                });
            }
            Ok(vec![AccountEvent::Closed])
        }
        AccountCommand::Leg { leg, amount } => {
            let amount = movement(account, amount.amount(), Some(amount.currency()))?;
            match leg.kind {
                LegKind::TransferOut => {
                    require(&[Active])?;
                    debited(account, amount, Some(*leg))
                }
                LegKind::TransferIn => {
                    require(&[Active])?;
                    credited(account, amount, Some(*leg))
                }
                // A refund returns money the account already held: whatever its status
                // since (even closed), it is taken back.
                LegKind::TransferRefund => credited(account, amount, Some(*leg)),
            }
        }
    }
}

/// `amount` credited to `account`, unless it would pass the balance limit.
fn credited(
    account: &Account,
    amount: Money,
    leg: Option<TransferLeg>,
) -> Result<Vec<AccountEvent>, DomainError> {
    let balance = account
        .balance
        .checked_add(amount)
        .ok_or(DomainError::BalanceLimitExceeded)?;
    Ok(vec![AccountEvent::Credited {
        amount,
        balance,
        leg,
    }])
}

/// `amount` debited from `account`, unless the balance cannot cover it.
fn debited(
    account: &Account,
    amount: Money,
    leg: Option<TransferLeg>,
) -> Result<Vec<AccountEvent>, DomainError> {
    let balance =
        account
            .balance
            .checked_sub(amount)
            .ok_or_else(|| DomainError::InsufficientFunds {
                balance: account.balance.render(),
                requested: amount.render(),
            })?;
    Ok(vec![AccountEvent::Debited {
        amount,
        balance,
        leg,
    }])
}

fn movement(
    account: &Account,
    amount: Decimal,
    currency: Option<Currency>,
) -> Result<Money, DomainError> {
    if let Some(requested) = currency
        && requested != account.currency()
    {
        return Err(DomainError::CurrencyMismatch {
            account: account.currency(),
            requested,
        });
    }
    Ok(Money::command_amount(amount, account.currency())?)
}

/// Applies an event to an account. Never fails: events are facts.
pub(crate) fn evolve(account: Option<Account>, event: &AccountEvent) -> Option<Account> {
    let next = |account: Account, status: AccountStatus, balance: Money| Account {
        status,
        balance,
        version: account.version + 1,
        owner: account.owner,
    };
    match (account, event) {
        (
            None,
            AccountEvent::Created {
                initial_balance,
                owner,
            },
        ) => Some(Account {
            status: AccountStatus::Created,
            balance: *initial_balance,
            version: 1,
            owner: owner.clone(),
        }),
        (None, _) => None,
        (Some(account), event) => Some(match event {
            AccountEvent::Created { .. } => account,
            AccountEvent::Activated | AccountEvent::Reactivated => {
                let balance = account.balance;
                next(account, AccountStatus::Active, balance)
            }
            AccountEvent::Credited { balance, .. } | AccountEvent::Debited { balance, .. } => {
                let status = account.status;
                next(account, status, *balance)
            }
            AccountEvent::Suspended { .. } => {
                let balance = account.balance;
                next(account, AccountStatus::Suspended, balance)
            }
            AccountEvent::Closed => {
                let balance = account.balance;
                next(account, AccountStatus::Closed, balance)
            }
        }),
    }
}

#[cfg(test)]
mod tests;
