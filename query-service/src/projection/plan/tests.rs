//! Given/When/Then tests of the pure planner: no database, no clock.
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use shared_events::{AccountId, EventMetadata, SCHEMA_VERSION};

use super::*;

const OCCURRED_AT: &str = "2026-11-22T10:00:00.1234567Z";

fn occurred_at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(OCCURRED_AT)
        .unwrap()
        .with_timezone(&Utc)
}

fn candidate(account: Uuid, version: u64, kind: &str, data: serde_json::Value) -> Candidate {
    let envelope = EventEnvelope {
        event_id: Uuid::new_v4(),
        account_id: AccountId::from(account),
        version,
        position: version,
        event_type: kind.to_owned(),
        schema_version: SCHEMA_VERSION,
        occurred_at: occurred_at(),
        data,
        metadata: EventMetadata::default(),
    };
    Candidate::decode(envelope, Origin::Delivered).unwrap()
}

fn created(account: Uuid, balance: &str) -> Candidate {
    candidate(
        account,
        1,
        "AccountCreated",
        json!({"initial_balance": balance, "currency": "MAD"}),
    )
}

fn activated(account: Uuid, version: u64) -> Candidate {
    candidate(account, version, "AccountActivated", json!({}))
}

fn credited(account: Uuid, version: u64, amount: &str, currency: &str, balance: &str) -> Candidate {
    candidate(
        account,
        version,
        "AccountCredited",
        json!({"amount": amount, "currency": currency, "balance": balance}),
    )
}

fn head(version: i64) -> Head {
    Head {
        version,
        currency: "MAD".to_owned(),
        status: AccountStatus::Active,
        balance: Decimal::new(1000, 2),
    }
}

#[test]
fn a_run_from_creation_plans_one_insert_with_the_final_state() {
    // Given a new account's creation, activation and a credit
    let account = Uuid::new_v4();
    let run = [
        created(account, "10.00"),
        activated(account, 2),
        credited(account, 3, "5.00", "MAD", "15.00"),
    ];
    // When the run is planned from nothing
    let (mutation, invalid) = plan(account, None, &run);
    // Then one mutation opens the account in its final state
    let mutation = mutation.unwrap();
    assert!(invalid.is_none());
    assert_eq!((mutation.from_version, mutation.to_version), (0, 3));
    assert_eq!(mutation.status, Some(AccountStatus::Active));
    assert_eq!(mutation.balance, Some(Decimal::new(1500, 2)));
    assert_eq!(mutation.operations.len(), 1);
    assert_eq!(mutation.operations[0].kind, OperationKind::Credit);
    assert_eq!(mutation.updated_at.timestamp_subsec_micros(), 123_456);
    assert_eq!(
        mutation
            .opening
            .map(|o| (o.currency, o.created_at.timestamp_subsec_micros())),
        Some(("MAD", 123_456))
    );
}

#[test]
fn the_planned_times_are_the_events_times_not_the_clock() {
    // Given an opened account and a credit that occurred at a known time
    let account = Uuid::new_v4();
    let run = [credited(account, 3, "1.00", "MAD", "2.00")];
    // When it is planned
    let (mutation, _) = plan(account, Some(&head(2)), &run);
    // Then the row's update time is the event's (to the microsecond)
    assert_eq!(mutation.unwrap().updated_at, occurred_at().trunc_subsecs(6));
}

#[test]
fn a_movement_in_another_currency_stops_the_run_there() {
    // Given a MAD account and a run whose second credit is in EUR
    let account = Uuid::new_v4();
    let run = [
        credited(account, 3, "5.00", "MAD", "15.00"),
        credited(account, 4, "5.00", "EUR", "20.00"),
    ];
    // When it is planned
    let (mutation, invalid) = plan(account, Some(&head(2)), &run);
    // Then the first credit is planned and the second refused
    let mutation = mutation.unwrap();
    assert_eq!(mutation.to_version, 3);
    assert_eq!(mutation.balance, Some(Decimal::new(1500, 2)));
    assert_eq!(invalid.map(|(index, _)| index), Some(1));
}

#[test]
fn events_before_creation_or_a_second_creation_are_refused() {
    // Given no account, When an activation comes first, Then nothing is planned
    let account = Uuid::new_v4();
    let (mutation, invalid) = plan(account, None, &[activated(account, 1)]);
    assert!(mutation.is_none());
    assert_eq!(invalid.map(|(index, _)| index), Some(0));

    // Given an opened account, When a creation comes again, Then it is refused
    let mut again = created(account, "1.00");
    again.envelope.version = 2;
    let (mutation, invalid) = plan(account, Some(&head(1)), &[again]);
    assert!(mutation.is_none());
    assert!(invalid.unwrap().1.contains("already opened"));
}

#[test]
fn a_mutation_folds_into_the_row_it_starts_from() {
    // Given a stored row at version 2
    let account = Uuid::new_v4();
    let row = AccountRow {
        id: account,
        owner: Some("alice".to_owned()),
        status: AccountStatus::Active,
        currency: "MAD".to_owned(),
        balance: Decimal::new(1000, 2),
        version: 2,
        created_at: occurred_at(),
        updated_at: occurred_at(),
    };
    // When a suspension and a credit are planned on it
    let run = [
        candidate(account, 3, "AccountSuspended", json!({"reason": null})),
        credited(account, 4, "1.00", "MAD", "11.00"),
    ];
    let (mutation, invalid) = plan(account, Some(&row.head()), &run);
    assert!(invalid.is_none());
    let after = AccountRow::after(Some(&row), &mutation.unwrap()).unwrap();
    // Then the row keeps its opening and takes the run's state
    assert_eq!(after.status, AccountStatus::Suspended);
    assert_eq!(after.balance, Decimal::new(1100, 2));
    assert_eq!(after.version, 4);
    assert_eq!(
        (after.currency.as_str(), after.created_at),
        ("MAD", row.created_at)
    );
}

#[test]
fn a_mutation_without_an_opening_has_nothing_to_fold_into() {
    let account = Uuid::new_v4();
    let (mutation, _) = plan(account, Some(&head(1)), &[activated(account, 2)]);
    assert_eq!(AccountRow::after(None, &mutation.unwrap()), None);
}

#[test]
fn decisions_settle_duplicates_and_condemn_from_a_version() {
    // Given candidates at versions 1, 3 and 4
    let account = Uuid::new_v4();
    let candidates = [
        activated(account, 1),
        activated(account, 3),
        activated(account, 4),
    ];
    let mut decided = Decisions::new(&candidates);
    // When version 1 is already projected, Then 3 and 4 are pending
    decided.settle_up_to(1);
    assert_eq!(decided.pending(), [1, 2]);
    // When everything from 4 is condemned and 3 gets projected by someone else
    decided.condemn_from(4, "beyond");
    assert_eq!(decided.pending(), [1]);
    decided.settle_up_to(3);
    // Then 1 and 3 are duplicates and 4 is poison
    assert_eq!(
        decided.finish(),
        [
            Verdict::Duplicate,
            Verdict::Duplicate,
            Verdict::Poison("beyond".into())
        ]
    );
}

#[test]
fn what_this_projector_committed_is_applied_not_a_duplicate() {
    // Given two candidates of which this projector committed the first
    let account = Uuid::new_v4();
    let candidates = [activated(account, 2), activated(account, 3)];
    let mut decided = Decisions::new(&candidates);
    decided.committed(&candidates[..1]);
    // When the projection is at version 3
    decided.settle_up_to(3);
    // Then the first is applied and the second a duplicate
    assert_eq!(decided.finish(), [Verdict::Applied, Verdict::Duplicate]);
}

#[test]
fn a_delivered_culprit_is_condemned_alone_a_fetched_one_with_what_follows() {
    let account = Uuid::new_v4();
    let candidates = [activated(account, 2), activated(account, 3)];
    // When a delivered candidate is condemned, Then only it is poison
    let mut decided = Decisions::new(&candidates);
    decided.condemn(&candidates[0], "bad");
    assert_eq!(decided.pending(), [1]);
    // When the command service's own event at that version is condemned,
    // Then every candidate from its version on is poison
    let mut fetched = candidates[0].clone();
    fetched.origin = Origin::Fetched;
    let mut decided = Decisions::new(&candidates);
    decided.condemn(&fetched, "bad");
    assert!(decided.pending().is_empty());
}

#[test]
fn the_next_run_is_the_consecutive_versions_after_the_projection() {
    let account = Uuid::new_v4();
    let candidates = [
        activated(account, 3),
        activated(account, 4),
        activated(account, 6),
    ];
    let decided = Decisions::new(&candidates);
    let run = next_run(&candidates, &decided.pending(), 2);
    assert_eq!(
        run.iter().map(Candidate::version).collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(next_run(&candidates, &decided.pending(), 4).is_empty());
}

#[test]
fn the_owner_comes_from_a_version_2_creation_and_a_version_1_one_has_none() {
    // Given a creation at schema version 2 naming alice, and one stored at version 1
    let account = Uuid::new_v4();
    let mut v2 = created(account, "5.00").envelope;
    v2.schema_version = 2;
    v2.data = json!({"initial_balance": "5.00", "currency": "MAD", "owner": "alice"});
    let v2 = Candidate::decode(v2, Origin::Delivered).unwrap();
    let mut v1 = created(account, "5.00").envelope;
    v1.schema_version = 1;
    let v1 = Candidate::decode(v1, Origin::Delivered).unwrap();
    // When each is planned
    // Then the opening carries alice's ownership, or none
    let owner = |run: &[Candidate]| {
        plan(account, None, run)
            .0
            .and_then(|mutation| mutation.opening)
            .and_then(|opening| opening.owner)
    };
    assert_eq!(owner(&[v2]), Some("alice".to_owned()));
    assert_eq!(owner(&[v1]), None);
}

#[test]
fn every_event_of_a_run_records_its_version_with_the_state_after_it() {
    // Given an account at version 2 (ACTIVE, 10.00)
    let account = Uuid::new_v4();
    let run = [
        credited(account, 3, "5.00", "MAD", "15.00"),
        candidate(account, 4, "AccountSuspended", json!({"reason": null})),
    ];
    // When a credit and a suspension are planned
    let (mutation, invalid) = plan(account, Some(&head(2)), &run);
    // Then each version names its event, type, status and balance after it
    assert!(invalid.is_none());
    let versions: Vec<_> = mutation
        .unwrap()
        .versions
        .into_iter()
        .map(|row| (row.version, row.event_id, row.kind, row.status, row.balance))
        .collect();
    assert_eq!(
        versions,
        vec![
            (
                3,
                run[0].envelope.event_id,
                "AccountCredited",
                AccountStatus::Active,
                Decimal::new(1500, 2)
            ),
            (
                4,
                run[1].envelope.event_id,
                "AccountSuspended",
                AccountStatus::Suspended,
                Decimal::new(1500, 2)
            ),
        ]
    );
}

#[test]
fn another_event_at_a_projected_version_is_a_conflict_not_a_duplicate() {
    // Given version 3 projected as one event, and candidates at version 3: that very
    // event, another one, and one at a version without a record
    let account = Uuid::new_v4();
    let held = credited(account, 3, "5.00", "MAD", "15.00");
    let forged = credited(account, 3, "1000000.00", "MAD", "1000015.00");
    let unrecorded = credited(account, 2, "5.00", "MAD", "10.00");
    let candidates = [held.clone(), forged, unrecorded];
    let mut decided = Decisions::new(&candidates);
    // When the projected ids are learnt and the candidates settled
    assert_eq!(decided.unknown_up_to(3), vec![2, 3]);
    decided.learn([(3, held.envelope.event_id)]);
    decided.settle_up_to(3);
    // Then the same event is a duplicate, the other a conflict, the unrecorded a duplicate
    let verdicts = decided.finish();
    assert_eq!(verdicts[0], Verdict::Duplicate);
    assert!(matches!(&verdicts[1], Verdict::Conflict(reason) if reason.contains("version 3")));
    assert_eq!(verdicts[2], Verdict::Duplicate);
}

fn leg(
    account: Uuid,
    version: u64,
    kind: &str,
    transfer: Uuid,
    amount: &str,
    balance: &str,
) -> Candidate {
    let event_type = if kind == "TRANSFER_OUT" {
        "AccountDebited"
    } else {
        "AccountCredited"
    };
    candidate(
        account,
        version,
        event_type,
        json!({"amount": amount, "currency": "MAD", "balance": balance,
               "transfer_id": transfer, "kind": kind}),
    )
}

fn sheet_of(account: Uuid, head: Option<&Head>, run: &[Candidate]) -> Option<SheetDelta> {
    let (mutation, invalid) = plan(account, head, run);
    assert!(invalid.is_none(), "{invalid:?}");
    mutation.unwrap().sheet
}

#[test]
fn transfer_legs_are_operations_naming_their_transfer() {
    // Given an account at version 2 (10.00) and a transfer
    let account = Uuid::new_v4();
    let transfer = Uuid::now_v7();
    // When its debit and its refund are planned, beside a plain credit
    let run = [
        leg(account, 3, "TRANSFER_OUT", transfer, "4.00", "6.00"),
        leg(account, 4, "TRANSFER_REFUND", transfer, "4.00", "10.00"),
        credited(account, 5, "1.00", "MAD", "11.00"),
    ];
    let (mutation, invalid) = plan(account, Some(&head(2)), &run);
    // Then each is an operation of its kind; only the legs name the transfer
    assert!(invalid.is_none());
    let operations: Vec<_> = mutation
        .unwrap()
        .operations
        .into_iter()
        .map(|op| (op.kind, op.transfer_id, op.balance_after))
        .collect();
    assert_eq!(
        operations,
        [
            (
                OperationKind::TransferOut,
                Some(transfer),
                Decimal::new(600, 2)
            ),
            (
                OperationKind::TransferRefund,
                Some(transfer),
                Decimal::new(1000, 2)
            ),
            (OperationKind::Credit, None, Decimal::new(1100, 2)),
        ]
    );
    assert_eq!(OperationKind::TransferRefund.as_str(), "TRANSFER_REFUND");
}

#[test]
fn the_balance_sheet_gains_what_the_run_changes_in_its_currency() {
    let account = Uuid::new_v4();
    let transfer = Uuid::now_v7();
    // An opening counts the account and its initial balance
    assert_eq!(
        sheet_of(account, None, &[created(account, "10.00")]),
        Some(SheetDelta {
            currency: "MAD",
            balance: Decimal::new(1000, 2),
            accounts: 1,
            in_transit: Decimal::ZERO,
        })
    );
    // A transfer's debit moves money from the balances into transit
    let out = sheet_of(
        account,
        Some(&head(2)),
        &[leg(account, 3, "TRANSFER_OUT", transfer, "4.00", "6.00")],
    )
    .unwrap();
    assert_eq!(
        (out.balance, out.accounts, out.in_transit),
        (Decimal::new(-400, 2), 0, Decimal::new(400, 2))
    );
    // Its credit (or refund) moves it back out of transit
    let arrived = sheet_of(
        account,
        Some(&head(2)),
        &[leg(account, 3, "TRANSFER_IN", transfer, "4.00", "14.00")],
    )
    .unwrap();
    assert_eq!(
        (arrived.balance, arrived.in_transit),
        (Decimal::new(400, 2), Decimal::new(-400, 2))
    );
    // A suspension changes nothing
    assert_eq!(
        sheet_of(
            account,
            Some(&head(2)),
            &[candidate(
                account,
                3,
                "AccountSuspended",
                json!({"reason": null})
            )]
        ),
        None
    );
}

#[test]
fn a_closed_account_leaves_the_count_and_a_late_refund_still_counts_in_the_balances() {
    // Given an emptied account at version 3
    let account = Uuid::new_v4();
    let transfer = Uuid::now_v7();
    let emptied = Head {
        balance: Decimal::ZERO,
        ..head(3)
    };
    // When it closes, Then it is no longer counted
    let closed = sheet_of(
        account,
        Some(&emptied),
        &[candidate(account, 4, "AccountClosed", json!({}))],
    )
    .unwrap();
    assert_eq!((closed.accounts, closed.balance), (-1, Decimal::ZERO));
    // When a transfer's refund reaches it once closed
    let after_close = Head {
        status: AccountStatus::Closed,
        ..emptied.clone()
    };
    let refunded = sheet_of(
        account,
        Some(&after_close),
        &[leg(account, 4, "TRANSFER_REFUND", transfer, "4.00", "4.00")],
    )
    .unwrap();
    // Then the money is in the balances again (out of transit), the count unchanged
    assert_eq!(
        (refunded.accounts, refunded.balance, refunded.in_transit),
        (0, Decimal::new(400, 2), Decimal::new(-400, 2))
    );
}

#[test]
fn a_transfer_event_in_an_account_stream_is_refused() {
    let account = Uuid::new_v4();
    let stray = candidate(account, 3, "TransferCompleted", json!({}));
    let (mutation, invalid) = plan(account, Some(&head(2)), &[stray]);
    assert!(mutation.is_none());
    assert!(invalid.unwrap().1.contains("transfer's event"));
}
