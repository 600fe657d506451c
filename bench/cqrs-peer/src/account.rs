//! The account as a cqrs-es aggregate: `handle` decides, `apply` evolves. Like the
//! command service's account it is opened, then activated; only an active account
//! takes credits and debits, in its own currency, and a debit never takes the balance
//! below zero.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Most fraction digits an amount may have.
const MAX_SCALE: u32 = 2;

/// What can be asked of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AccountCommand {
    Open {
        initial_balance: Decimal,
        currency: String,
    },
    Activate,
    Credit {
        amount: Decimal,
        currency: Option<String>,
    },
    Debit {
        amount: Decimal,
        currency: Option<String>,
    },
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum AccountEvent {
    Opened {
        initial_balance: Decimal,
        currency: String,
    },
    Activated,
    Credited {
        amount: Decimal,
        balance: Decimal,
    },
    Debited {
        amount: Decimal,
        balance: Decimal,
    },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Opened { .. } => "AccountOpened",
            Self::Activated => "AccountActivated",
            Self::Credited { .. } => "AccountCredited",
            Self::Debited { .. } => "AccountDebited",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AccountError {
    #[error("no such account")]
    NotFound,
    #[error("the account exists already")]
    Exists,
    #[error("the account is not in a state that allows this command")]
    InvalidState,
    #[error("the amount must be positive with at most {MAX_SCALE} fraction digits")]
    InvalidAmount,
    #[error("the currency is not the account's")]
    CurrencyMismatch,
    #[error("insufficient funds")]
    InsufficientFunds,
}

/// The account's state, rebuilt from its events for every command.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Account {
    opened: bool,
    active: bool,
    currency: String,
    balance: Decimal,
}

impl Account {
    fn movement(&self, amount: Decimal, currency: Option<&str>) -> Result<Decimal, AccountError> {
        if !self.opened {
            return Err(AccountError::NotFound);
        }
        if !self.active {
            return Err(AccountError::InvalidState);
        }
        if currency.is_some_and(|currency| currency != self.currency) {
            return Err(AccountError::CurrencyMismatch);
        }
        if amount <= Decimal::ZERO || amount.normalize().scale() > MAX_SCALE {
            return Err(AccountError::InvalidAmount);
        }
        Ok(amount)
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            AccountCommand::Open { .. } if self.opened => return Err(AccountError::Exists),
            AccountCommand::Open {
                initial_balance,
                currency,
            } => {
                if initial_balance < Decimal::ZERO
                    || initial_balance.normalize().scale() > MAX_SCALE
                {
                    return Err(AccountError::InvalidAmount);
                }
                AccountEvent::Opened {
                    initial_balance,
                    currency,
                }
            }
            AccountCommand::Activate if !self.opened => return Err(AccountError::NotFound),
            AccountCommand::Activate if self.active => return Err(AccountError::InvalidState),
            AccountCommand::Activate => AccountEvent::Activated,
            AccountCommand::Credit { amount, currency } => {
                let amount = self.movement(amount, currency.as_deref())?;
                AccountEvent::Credited {
                    amount,
                    balance: self.balance + amount,
                }
            }
            AccountCommand::Debit { amount, currency } => {
                let amount = self.movement(amount, currency.as_deref())?;
                if amount > self.balance {
                    return Err(AccountError::InsufficientFunds);
                }
                AccountEvent::Debited {
                    amount,
                    balance: self.balance - amount,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AccountEvent::Opened {
                initial_balance,
                currency,
            } => {
                self.opened = true;
                self.currency = currency;
                self.balance = initial_balance;
            }
            AccountEvent::Activated => self.active = true,
            AccountEvent::Credited { balance, .. } | AccountEvent::Debited { balance, .. } => {
                self.balance = balance;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    fn m(amount: &str) -> Decimal {
        amount.parse().expect("a decimal")
    }

    fn opened(balance: Decimal) -> AccountEvent {
        AccountEvent::Opened {
            initial_balance: balance,
            currency: "MAD".to_owned(),
        }
    }

    fn credit(amount: Decimal) -> AccountCommand {
        AccountCommand::Credit {
            amount,
            currency: None,
        }
    }

    fn debit(amount: Decimal) -> AccountCommand {
        AccountCommand::Debit {
            amount,
            currency: None,
        }
    }

    fn account() -> TestFramework<Account> {
        TestFramework::with(())
    }

    #[test]
    fn an_account_is_opened_once() {
        account()
            .given_no_previous_events()
            .when(AccountCommand::Open {
                initial_balance: m("1000.00"),
                currency: "MAD".to_owned(),
            })
            .then_expect_events(vec![opened(m("1000.00"))]);
        account()
            .given(vec![opened(m("1000.00"))])
            .when(AccountCommand::Open {
                initial_balance: m("1.00"),
                currency: "MAD".to_owned(),
            })
            .then_expect_error(AccountError::Exists);
    }

    #[test]
    fn an_active_account_is_credited_with_its_new_balance() {
        account()
            .given(vec![opened(m("1000.00")), AccountEvent::Activated])
            .when(credit(m("1.00")))
            .then_expect_events(vec![AccountEvent::Credited {
                amount: m("1.00"),
                balance: m("1001.00"),
            }]);
    }

    #[test]
    fn an_account_not_yet_active_takes_no_credit() {
        account()
            .given(vec![opened(m("1000.00"))])
            .when(credit(m("1.00")))
            .then_expect_error(AccountError::InvalidState);
        account()
            .given_no_previous_events()
            .when(credit(m("1.00")))
            .then_expect_error(AccountError::NotFound);
    }

    #[test]
    fn a_debit_never_overdraws() {
        let given = vec![
            opened(m("10.00")),
            AccountEvent::Activated,
            AccountEvent::Debited {
                amount: m("4.00"),
                balance: m("6.00"),
            },
        ];
        account()
            .given(given.clone())
            .when(debit(m("6.01")))
            .then_expect_error(AccountError::InsufficientFunds);
        account()
            .given(given)
            .when(debit(m("6.00")))
            .then_expect_events(vec![AccountEvent::Debited {
                amount: m("6.00"),
                balance: m("0.00"),
            }]);
    }

    #[test]
    fn amounts_are_positive_in_cents_and_in_the_accounts_currency() {
        let active = vec![opened(m("10.00")), AccountEvent::Activated];
        for amount in [m("0"), m("-1.00"), m("0.001")] {
            account()
                .given(active.clone())
                .when(credit(amount))
                .then_expect_error(AccountError::InvalidAmount);
        }
        account()
            .given(active)
            .when(AccountCommand::Credit {
                amount: m("1.00"),
                currency: Some("EUR".to_owned()),
            })
            .then_expect_error(AccountError::CurrencyMismatch);
    }
}
