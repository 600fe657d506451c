//! Given events, when a command, then events or a refusal; and, over arbitrary
//! interleavings of step outcomes, crashes and repeated steps, the transfer's
//! properties: money is conserved and each transfer ends in exactly one terminal state.

use std::collections::HashSet;

use proptest::prelude::*;
use rust_decimal::Decimal;
use shared_events::{AccountEvent, AccountStatus, Currency};

use super::*;
use crate::domain::account::{self, Account, AccountCommand, DomainError, Requester};

fn mad(cents: i64) -> Money {
    Money::new(Decimal::new(cents, 2), Currency::parse("MAD").unwrap()).unwrap()
}

fn requested(from: AccountId, to: AccountId) -> TransferEvent {
    TransferEvent::Requested {
        from,
        to,
        amount: mad(2_500),
        reference: Some("rent".into()),
        requested_by: "alice".into(),
    }
}

fn given(id: TransferId, events: &[TransferEvent]) -> Option<Transfer> {
    events
        .iter()
        .fold(None, |transfer, event| evolve(id, transfer, event))
}

#[test]
fn a_request_between_two_accounts_opens_a_pending_transfer_whose_first_step_is_the_debit() {
    let (from, to) = (AccountId::generate(), AccountId::generate());
    let id = TransferId::generate();
    let command = TransferCommand::Request {
        from,
        to,
        amount: mad(2_500),
        reference: Some("rent".into()),
        requested_by: "alice".into(),
    };
    let events = decide(None, &command).unwrap();
    assert_eq!(events, vec![requested(from, to)]);
    let transfer = given(id, &events).unwrap();
    assert_eq!(transfer.status, TransferStatus::Pending);
    assert_eq!(transfer.next_step(), Some(Step::DebitSource));
}

#[test]
fn a_transfer_to_the_same_account_is_refused() {
    let account = AccountId::generate();
    let command = TransferCommand::Request {
        from: account,
        to: account,
        amount: mad(1),
        reference: None,
        requested_by: "alice".into(),
    };
    assert_eq!(decide(None, &command), Err(TransferError::SameAccount));
}

#[test]
fn after_the_debit_the_credit_follows_and_completes_it() {
    let id = TransferId::generate();
    let debited = [
        requested(AccountId::generate(), AccountId::generate()),
        TransferEvent::Debited,
    ];
    let transfer = given(id, &debited).unwrap();
    assert_eq!(transfer.next_step(), Some(Step::CreditDestination));
    assert_eq!(
        decide(Some(&transfer), &TransferCommand::RecordCredit),
        Ok(vec![TransferEvent::Completed])
    );
}

#[test]
fn a_refused_debit_fails_the_transfer_with_the_refusal_as_reason() {
    let id = TransferId::generate();
    let transfer = given(
        id,
        &[requested(AccountId::generate(), AccountId::generate())],
    )
    .unwrap();
    let events = decide(
        Some(&transfer),
        &TransferCommand::RecordDebitRefused {
            code: "insufficient_funds".into(),
        },
    )
    .unwrap();
    let failed = events
        .iter()
        .try_fold(transfer, |t, e| evolve(id, Some(t), e))
        .unwrap();
    assert_eq!(failed.status, TransferStatus::Failed);
    assert_eq!(failed.reason.as_deref(), Some("insufficient_funds"));
    assert_eq!(failed.next_step(), None);
}

#[test]
fn an_outcome_recorded_twice_is_recorded_once_and_one_out_of_order_is_refused() {
    let id = TransferId::generate();
    let completed = given(
        id,
        &[
            requested(AccountId::generate(), AccountId::generate()),
            TransferEvent::Debited,
            TransferEvent::Completed,
        ],
    )
    .unwrap();
    assert_eq!(
        decide(Some(&completed), &TransferCommand::RecordCredit),
        Ok(vec![])
    );
    assert_eq!(
        decide(Some(&completed), &TransferCommand::RecordDebit),
        Ok(vec![])
    );
    assert!(matches!(
        decide(
            Some(&completed),
            &TransferCommand::RecordRefund {
                code: "invalid_state".into()
            }
        ),
        Err(TransferError::OutOfOrder { .. })
    ));
    let pending = given(
        id,
        &[requested(AccountId::generate(), AccountId::generate())],
    )
    .unwrap();
    assert!(matches!(
        decide(Some(&pending), &TransferCommand::RecordCredit),
        Err(TransferError::OutOfOrder { .. })
    ));
}

/// The bank as the property test sees it: two accounts, the legs written so far (by
/// event id, as the event store's unique ids keep them), and the transfer's events.
struct World {
    accounts: [Option<Account>; 2],
    legs: HashSet<uuid::Uuid>,
    leg_kinds: Vec<LegKind>,
    transfer_events: Vec<TransferEvent>,
}

fn bank() -> Requester {
    Requester {
        sub: "transfer-process".into(),
        admin: true,
    }
}

impl World {
    /// The source is account 0, the destination account 1.
    fn account_index(kind: LegKind) -> usize {
        usize::from(kind == LegKind::TransferIn)
    }

    /// Runs a leg once: already written (same event id) counts as taken.
    fn leg(&mut self, transfer: &Transfer, kind: LegKind) -> Result<(), String> {
        let leg = transfer.leg(kind);
        if self.legs.contains(&leg.event_id()) {
            return Ok(());
        }
        let index = Self::account_index(kind);
        let command = AccountCommand::Leg {
            leg,
            amount: transfer.amount,
        };
        match account::decide(self.accounts[index].as_ref(), &bank(), &command) {
            Ok(events) => {
                self.accounts[index] = events
                    .iter()
                    .fold(self.accounts[index].take(), account::evolve);
                self.legs.insert(leg.event_id());
                self.leg_kinds.push(kind);
                Ok(())
            }
            Err(refusal) => Err(code(&refusal).to_owned()),
        }
    }

    fn record(&mut self, id: TransferId, command: TransferCommand) {
        let transfer = given(id, &self.transfer_events);
        let events = decide(transfer.as_ref(), &command).unwrap();
        self.transfer_events.extend(events);
    }
}

fn code(refusal: &DomainError) -> &'static str {
    match refusal {
        DomainError::InsufficientFunds { .. } => "insufficient_funds",
        DomainError::CurrencyMismatch { .. } => "currency_mismatch",
        DomainError::BalanceLimitExceeded => "balance_limit_exceeded",
        _ => "invalid_state",
    }
}

fn account_with(status: AccountStatus, balance: Money) -> Account {
    Account {
        status,
        balance,
        version: 2,
        owner: Some("alice".into()),
    }
}

fn status() -> impl Strategy<Value = AccountStatus> {
    prop_oneof![
        4 => Just(AccountStatus::Active),
        1 => Just(AccountStatus::Suspended),
        1 => Just(AccountStatus::Closed),
        1 => Just(AccountStatus::Created),
    ]
}

proptest! {
    /// Whatever the accounts' states, and wherever the process crashes (a leg written
    /// but its outcome not recorded) or repeats a step, the transfer ends in exactly
    /// one terminal state, each leg is written at most once, and the money of both
    /// accounts plus the money in transit never changes.
    #[test]
    fn every_transfer_ends_once_and_money_is_conserved(
        source in status(),
        destination in status(),
        source_cents in 0i64..10_000,
        destination_cents in 0i64..10_000,
        amount_cents in 1i64..10_000,
        crashes in proptest::collection::vec(any::<bool>(), 8),
        repeats in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let (from, to) = (AccountId::generate(), AccountId::generate());
        let id = TransferId::generate();
        let mut world = World {
            accounts: [
                Some(account_with(source, mad(source_cents))),
                Some(account_with(destination, mad(destination_cents))),
            ],
            legs: HashSet::new(),
            leg_kinds: Vec::new(),
            transfer_events: Vec::new(),
        };
        let total = |world: &World| {
            let held: Decimal = world.accounts.iter().flatten().map(|a| a.balance.amount()).sum();
            let out = world.leg_kinds.iter().filter(|k| **k == LegKind::TransferOut).count();
            let back = world.leg_kinds.len() - out;
            let in_transit = Decimal::from(i64::try_from(out).unwrap() - i64::try_from(back).unwrap())
                * mad(amount_cents).amount();
            held + in_transit
        };
        let before = total(&world);
        world.record(id, TransferCommand::Request {
            from, to, amount: mad(amount_cents), reference: None, requested_by: "alice".into(),
        });

        // The process: each round takes the transfer as stored and runs its next step;
        // a crash loses the recording of the step's outcome, a repeat records it twice.
        let mut round = 0;
        while let Some(step) = given(id, &world.transfer_events).unwrap().next_step() {
            let transfer = given(id, &world.transfer_events).unwrap();
            let crash = crashes[round % crashes.len()];
            let repeat = repeats[round % repeats.len()];
            round += 1;
            prop_assert!(round < 50, "the transfer never ends");
            let outcome = match step {
                Step::DebitSource => match world.leg(&transfer, LegKind::TransferOut) {
                    Ok(()) => TransferCommand::RecordDebit,
                    Err(code) => TransferCommand::RecordDebitRefused { code },
                },
                Step::CreditDestination => match world.leg(&transfer, LegKind::TransferIn) {
                    Ok(()) => TransferCommand::RecordCredit,
                    Err(code) => match world.leg(&transfer, LegKind::TransferRefund) {
                        Ok(()) => TransferCommand::RecordRefund { code },
                        Err(refusal) => panic!("a refund was refused: {refusal}"),
                    },
                },
            };
            prop_assert_eq!(total(&world), before);
            if crash && round % 2 == 1 {
                continue;
            }
            world.record(id, outcome.clone());
            if repeat {
                world.record(id, outcome);
            }
        }

        let transfer = given(id, &world.transfer_events).unwrap();
        let terminal = world.transfer_events.iter().filter(|e| e.status().is_terminal()).count();
        prop_assert_eq!(terminal, 1);
        prop_assert_eq!(total(&world), before);
        let count = |kind| world.leg_kinds.iter().filter(|k| **k == kind).count();
        let (out, came_in, refund) = (
            count(LegKind::TransferOut),
            count(LegKind::TransferIn),
            count(LegKind::TransferRefund),
        );
        match transfer.status {
            TransferStatus::Completed => prop_assert_eq!((out, came_in, refund), (1, 1, 0)),
            TransferStatus::Refunded => prop_assert_eq!((out, came_in, refund), (1, 0, 1)),
            TransferStatus::Failed => prop_assert_eq!((out, came_in, refund), (0, 0, 0)),
            TransferStatus::Pending => prop_assert!(false, "still pending"),
        }
        if source == AccountStatus::Active && destination == AccountStatus::Active
            && amount_cents <= source_cents
        {
            prop_assert_eq!(transfer.status, TransferStatus::Completed);
        }
    }
}

#[test]
fn a_refund_reaches_a_source_closed_meanwhile() {
    let transfer_id = TransferId::generate();
    let closed = account_with(AccountStatus::Closed, mad(0));
    let refund = AccountCommand::Leg {
        leg: TransferLeg {
            transfer_id,
            kind: LegKind::TransferRefund,
        },
        amount: mad(500),
    };
    assert_eq!(
        account::decide(Some(&closed), &bank(), &refund),
        Ok(vec![AccountEvent::Credited {
            amount: mad(500),
            balance: mad(500),
            leg: Some(TransferLeg {
                transfer_id,
                kind: LegKind::TransferRefund
            }),
        }])
    );
}
