use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use shared_events::{AccountEvent, AccountStatus, Currency, Money, MoneyError};

/// What the write side knows of an account: enough to decide every command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub status: AccountStatus,
    pub balance: Money,
    /// Number of events in the account's stream.
    pub version: u64,
}

impl Account {
    pub fn currency(&self) -> Currency {
        self.balance.currency()
    }
}

/// A request to change an account. Amounts are raw decimals here: whether they fit
/// the account's currency is part of the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AccountCommand {
    Create {
        initial_balance: Decimal,
        currency: Currency,
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
}

impl AccountCommand {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Activate => "activate",
            Self::Credit { .. } => "credit",
            Self::Debit { .. } => "debit",
            Self::Suspend { .. } => "suspend",
            Self::Reactivate => "reactivate",
            Self::Close => "close",
        }
    }
}

/// Why a command was refused. Each maps to one of the contract's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
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

/// Decides which events a command causes on an account (`None`: no such account yet).
pub fn decide(
    account: Option<&Account>,
    command: &AccountCommand,
) -> Result<Vec<AccountEvent>, DomainError> {
    let Some(account) = account else {
        return match command {
            AccountCommand::Create {
                initial_balance,
                currency,
            } => Ok(vec![AccountEvent::Created {
                initial_balance: Money::opening_balance(*initial_balance, *currency)?,
            }]),
            _ => Err(DomainError::NotFound),
        };
    };
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
            let balance = account
                .balance
                .checked_add(amount)
                .ok_or(DomainError::BalanceLimitExceeded)?;
            Ok(vec![AccountEvent::Credited { amount, balance }])
        }
        AccountCommand::Debit { amount, currency } => {
            require(&[Active])?;
            let amount = movement(account, *amount, *currency)?;
            let balance = account.balance.checked_sub(amount).ok_or_else(|| {
                DomainError::InsufficientFunds {
                    balance: account.balance.render(),
                    requested: amount.render(),
                }
            })?;
            Ok(vec![AccountEvent::Debited { amount, balance }])
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
    }
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
pub fn evolve(account: Option<Account>, event: &AccountEvent) -> Option<Account> {
    let next = |account: Account, status: AccountStatus, balance: Money| Account {
        status,
        balance,
        version: account.version + 1,
    };
    match (account, event) {
        (None, AccountEvent::Created { initial_balance }) => Some(Account {
            status: AccountStatus::Created,
            balance: *initial_balance,
            version: 1,
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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared_events::parse_decimal;

    fn amount(text: &str) -> Decimal {
        parse_decimal(text).unwrap()
    }

    fn mad() -> Currency {
        Currency::parse("MAD").unwrap()
    }

    fn money(text: &str) -> Money {
        Money::new(amount(text), mad()).unwrap()
    }

    fn credit(text: &str) -> AccountCommand {
        AccountCommand::Credit {
            amount: amount(text),
            currency: None,
        }
    }

    fn debit(text: &str) -> AccountCommand {
        AccountCommand::Debit {
            amount: amount(text),
            currency: None,
        }
    }

    fn created(balance: &str) -> AccountEvent {
        AccountEvent::Created {
            initial_balance: money(balance),
        }
    }

    /// Given these events, when this command is decided, then these events (or this error).
    fn given(events: &[AccountEvent]) -> Option<Account> {
        events.iter().fold(None, evolve)
    }

    fn when(
        events: &[AccountEvent],
        command: AccountCommand,
    ) -> Result<Vec<AccountEvent>, DomainError> {
        decide(given(events).as_ref(), &command)
    }

    #[test]
    fn creating_an_account_records_its_opening_balance() {
        let then = when(
            &[],
            AccountCommand::Create {
                initial_balance: amount("100.5"),
                currency: mad(),
            },
        );
        assert_eq!(then, Ok(vec![created("100.50")]));
        assert_eq!(
            given(&[created("100.50")]).unwrap().status,
            AccountStatus::Created
        );
    }

    #[test]
    fn an_account_cannot_be_created_twice() {
        let then = when(
            &[created("0")],
            AccountCommand::Create {
                initial_balance: amount("1"),
                currency: mad(),
            },
        );
        assert_eq!(then, Err(DomainError::AccountExists));
    }

    #[test]
    fn commands_on_a_missing_account_are_not_found() {
        assert_eq!(when(&[], credit("1")), Err(DomainError::NotFound));
        assert_eq!(when(&[], AccountCommand::Close), Err(DomainError::NotFound));
    }

    #[test]
    fn money_moves_only_once_the_account_is_active() {
        let then = when(&[created("10")], credit("5"));
        assert!(matches!(
            then,
            Err(DomainError::InvalidState {
                status: AccountStatus::Created,
                ..
            })
        ));
        let then = when(&[created("10"), AccountEvent::Activated], credit("5"));
        assert_eq!(
            then,
            Ok(vec![AccountEvent::Credited {
                amount: money("5"),
                balance: money("15")
            }])
        );
    }

    #[test]
    fn activating_twice_is_refused() {
        let then = when(
            &[created("0"), AccountEvent::Activated],
            AccountCommand::Activate,
        );
        assert!(matches!(then, Err(DomainError::InvalidState { .. })));
    }

    #[test]
    fn a_debit_larger_than_the_balance_is_insufficient_funds() {
        let active = [created("37"), AccountEvent::Activated];
        assert!(matches!(
            when(&active, debit("37.01")),
            Err(DomainError::InsufficientFunds { .. })
        ));
        assert_eq!(
            when(&active, debit("37")),
            Ok(vec![AccountEvent::Debited {
                amount: money("37"),
                balance: money("0")
            }])
        );
    }

    #[test]
    fn a_suspended_account_refuses_money_until_reactivated() {
        let suspended = [
            created("10"),
            AccountEvent::Activated,
            AccountEvent::Suspended { reason: None },
        ];
        assert!(matches!(
            when(&suspended, debit("1")),
            Err(DomainError::InvalidState { .. })
        ));
        assert!(matches!(
            when(&suspended, credit("1")),
            Err(DomainError::InvalidState { .. })
        ));
        assert_eq!(
            when(&suspended, AccountCommand::Reactivate),
            Ok(vec![AccountEvent::Reactivated])
        );
        let reactivated = [&suspended[..], &[AccountEvent::Reactivated]].concat();
        assert!(when(&reactivated, debit("1")).is_ok());
    }

    #[test]
    fn only_an_active_account_can_be_suspended_and_only_a_suspended_one_reactivated() {
        assert!(when(&[created("0")], AccountCommand::Suspend { reason: None }).is_err());
        assert!(
            when(
                &[created("0"), AccountEvent::Activated],
                AccountCommand::Reactivate
            )
            .is_err()
        );
    }

    #[test]
    fn closing_needs_a_zero_balance() {
        let active = [created("1"), AccountEvent::Activated];
        assert!(matches!(
            when(&active, AccountCommand::Close),
            Err(DomainError::NonZeroBalance { .. })
        ));
        let emptied = [
            &active[..],
            &[AccountEvent::Debited {
                amount: money("1"),
                balance: money("0"),
            }],
        ]
        .concat();
        assert_eq!(
            when(&emptied, AccountCommand::Close),
            Ok(vec![AccountEvent::Closed])
        );
        let closed = [&emptied[..], &[AccountEvent::Closed]].concat();
        assert!(matches!(
            when(&closed, credit("1")),
            Err(DomainError::InvalidState { .. })
        ));
        assert!(matches!(
            when(&closed, AccountCommand::Close),
            Err(DomainError::InvalidState { .. })
        ));
    }

    #[test]
    fn a_created_account_cannot_be_closed_before_activation() {
        assert!(matches!(
            when(&[created("0")], AccountCommand::Close),
            Err(DomainError::InvalidState { .. })
        ));
    }

    #[test]
    fn another_currency_is_a_mismatch() {
        let then = when(
            &[created("10"), AccountEvent::Activated],
            AccountCommand::Credit {
                amount: amount("1"),
                currency: Some(Currency::parse("EUR").unwrap()),
            },
        );
        assert!(matches!(then, Err(DomainError::CurrencyMismatch { .. })));
    }

    #[test]
    fn amounts_must_fit_the_account_currency() {
        let active = [created("10"), AccountEvent::Activated];
        assert!(matches!(
            when(&active, credit("0.001")),
            Err(DomainError::InvalidAmount(_))
        ));
        assert!(matches!(
            when(&active, credit("0")),
            Err(DomainError::InvalidAmount(_))
        ));
        assert!(matches!(
            when(&active, credit("-1")),
            Err(DomainError::InvalidAmount(_))
        ));
        assert!(matches!(
            when(&active, credit("1000000000000.01")),
            Err(DomainError::InvalidAmount(_))
        ));
    }

    #[test]
    fn a_credit_past_the_balance_limit_is_refused() {
        let near_limit = [
            created("1000000000000"),
            AccountEvent::Activated,
            AccountEvent::Credited {
                amount: money("1"),
                balance: money("999999999999999"),
            },
        ];
        assert_eq!(
            when(&near_limit, credit("1.01")),
            Err(DomainError::BalanceLimitExceeded)
        );
        assert!(when(&near_limit, credit("1")).is_ok());
    }

    fn command() -> impl Strategy<Value = AccountCommand> {
        let cents = (-100_i64..=50_000).prop_map(|c| Decimal::new(c, 2));
        prop_oneof![
            Just(AccountCommand::Activate),
            cents.clone().prop_map(|amount| AccountCommand::Credit {
                amount,
                currency: None
            }),
            cents.prop_map(|amount| AccountCommand::Debit {
                amount,
                currency: None
            }),
            Just(AccountCommand::Suspend { reason: None }),
            Just(AccountCommand::Reactivate),
            Just(AccountCommand::Close),
        ]
    }

    proptest! {
        #[test]
        fn no_sequence_of_commands_makes_a_balance_negative_or_wrong(
            opening in 0_i64..=100_000,
            commands in proptest::collection::vec(command(), 0..60),
        ) {
            let opening = Money::new(Decimal::new(opening, 2), mad()).unwrap();
            let mut state = evolve(None, &AccountEvent::Created { initial_balance: opening });
            let mut expected = opening.amount();
            for command in commands {
                if let Ok(events) = decide(state.as_ref(), &command) {
                    for event in &events {
                        match event {
                            AccountEvent::Credited { amount, .. } => expected += amount.amount(),
                            AccountEvent::Debited { amount, .. } => expected -= amount.amount(),
                            _ => {}
                        }
                        state = evolve(state, event);
                    }
                }
                let account = state.as_ref().unwrap();
                prop_assert!(account.balance.amount() >= Decimal::ZERO);
                prop_assert_eq!(account.balance.amount(), expected);
            }
        }

        #[test]
        fn every_decided_event_bumps_the_version_by_one(
            commands in proptest::collection::vec(command(), 0..40),
        ) {
            let mut state = evolve(None, &AccountEvent::Created { initial_balance: money("10") });
            let mut count = 1;
            for command in commands {
                if let Ok(events) = decide(state.as_ref(), &command) {
                    for event in &events {
                        state = evolve(state, event);
                        count += 1;
                    }
                }
                prop_assert_eq!(state.as_ref().unwrap().version, count);
            }
        }
    }
}
