//! Given events, when a command, then events or a refusal; and the properties of
//! `decide` and `evolve` over arbitrary command sequences.

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
        owner: Some("alice".to_owned()),
    }
}

fn requester(sub: &str, admin: bool) -> Requester {
    Requester {
        sub: sub.to_owned(),
        admin,
    }
}

/// The owner of the accounts [`created`] opens.
fn alice() -> Requester {
    requester("alice", false)
}

/// Given these events, when this command is decided, then these events (or this error).
fn given(events: &[AccountEvent]) -> Option<Account> {
    events.iter().fold(None, evolve)
}

fn when(
    events: &[AccountEvent],
    command: AccountCommand,
) -> Result<Vec<AccountEvent>, DomainError> {
    decide(given(events).as_ref(), &alice(), &command)
}

#[test]
fn creating_an_account_records_its_opening_balance() {
    let then = when(
        &[],
        AccountCommand::Create {
            initial_balance: amount("100.5"),
            currency: mad(),
            owner: "alice".to_owned(),
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
            owner: "alice".to_owned(),
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
fn an_account_belongs_to_the_owner_its_creation_names() {
    let account = given(&[created("1")]).unwrap();
    assert_eq!(account.owner.as_deref(), Some("alice"));
}

#[test]
fn to_anyone_but_its_owner_or_an_admin_an_account_does_not_exist() {
    let active = given(&[created("10"), AccountEvent::Activated]);
    let commands = [
        credit("1"),
        debit("1"),
        AccountCommand::Activate,
        AccountCommand::Suspend { reason: None },
        AccountCommand::Reactivate,
        AccountCommand::Close,
    ];
    for command in &commands {
        assert_eq!(
            decide(active.as_ref(), &requester("mallory", false), command),
            Err(DomainError::NotFound),
            "{command:?}"
        );
    }
    assert!(decide(active.as_ref(), &alice(), &debit("1")).is_ok());
    assert!(decide(active.as_ref(), &requester("ops", true), &debit("1")).is_ok());
}

#[test]
fn ownership_is_decided_before_the_state_so_a_stranger_learns_nothing() {
    let closed = given(&[created("0"), AccountEvent::Activated, AccountEvent::Closed]);
    assert_eq!(
        decide(closed.as_ref(), &requester("mallory", false), &credit("1")),
        Err(DomainError::NotFound)
    );
    assert!(matches!(
        decide(closed.as_ref(), &alice(), &credit("1")),
        Err(DomainError::InvalidState { .. })
    ));
}

#[test]
fn an_account_opened_before_identities_existed_is_for_admins_only() {
    let legacy = given(&[
        AccountEvent::Created {
            initial_balance: money("10"),
            owner: None,
        },
        AccountEvent::Activated,
    ]);
    assert_eq!(legacy.as_ref().unwrap().owner, None);
    assert_eq!(
        decide(legacy.as_ref(), &alice(), &credit("1")),
        Err(DomainError::NotFound)
    );
    assert!(decide(legacy.as_ref(), &requester("ops", true), &credit("1")).is_ok());
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
            balance: money("15"),
            leg: None,
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
            balance: money("0"),
            leg: None,
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
            leg: None,
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
            leg: None,
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
        let mut state = evolve(None, &AccountEvent::Created { initial_balance: opening, owner: Some("alice".into()) });
        let mut expected = opening.amount();
        for command in commands {
            if let Ok(events) = decide(state.as_ref(), &alice(), &command) {
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
        let mut state = evolve(None, &AccountEvent::Created { initial_balance: money("10"), owner: Some("alice".into()) });
        let mut count = 1;
        for command in commands {
            if let Ok(events) = decide(state.as_ref(), &alice(), &command) {
                for event in &events {
                    state = evolve(state, event);
                    count += 1;
                }
            }
            prop_assert_eq!(state.as_ref().unwrap().version, count);
        }
    }

    #[test]
    fn a_stranger_never_gets_anything_but_not_found(
        commands in proptest::collection::vec(command(), 0..40),
        strangers in proptest::collection::vec(command(), 1..10),
    ) {
        let mut state = evolve(None, &created("10"));
        for command in commands {
            if let Ok(events) = decide(state.as_ref(), &alice(), &command) {
                state = events.iter().fold(state, evolve);
            }
        }
        for command in strangers {
            prop_assert_eq!(
                decide(state.as_ref(), &requester("mallory", false), &command),
                Err(DomainError::NotFound)
            );
        }
    }
}
