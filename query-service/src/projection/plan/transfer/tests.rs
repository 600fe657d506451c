//! Given/When/Then tests of the transfers' planner: no database, no clock.
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use shared_events::{AccountId, EventEnvelope, EventMetadata, SCHEMA_VERSION};

use super::*;
use crate::projection::plan::Origin;

fn at(second: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T10:00:00.1234567Z")
        .unwrap()
        .with_timezone(&Utc)
        + Duration::seconds(second)
}

fn event(stream: Uuid, version: u64, kind: &str, data: serde_json::Value) -> Candidate {
    let envelope = EventEnvelope {
        event_id: Uuid::new_v4(),
        account_id: AccountId::from(stream),
        version,
        position: version,
        event_type: kind.to_owned(),
        schema_version: SCHEMA_VERSION,
        occurred_at: at(i64::try_from(version).unwrap()),
        data,
        metadata: EventMetadata::default(),
    };
    Candidate::decode(envelope, Origin::Delivered).unwrap()
}

struct Transfer {
    id: Uuid,
    from: Uuid,
    to: Uuid,
}

impl Transfer {
    fn new() -> Self {
        Self {
            id: Uuid::now_v7(),
            from: Uuid::now_v7(),
            to: Uuid::now_v7(),
        }
    }

    fn requested(&self) -> Candidate {
        event(
            self.id,
            1,
            "TransferRequested",
            json!({"from": self.from, "to": self.to, "amount": "25.00", "currency": "MAD",
                   "reference": "rent", "requested_by": "alice"}),
        )
    }

    fn debited(&self, version: u64) -> Candidate {
        event(self.id, version, "TransferDebited", json!({}))
    }

    fn completed(&self, version: u64) -> Candidate {
        event(self.id, version, "TransferCompleted", json!({}))
    }

    fn failed(&self, version: u64) -> Candidate {
        event(
            self.id,
            version,
            "TransferFailed",
            json!({"reason": "insufficient_funds"}),
        )
    }

    fn refunded(&self, version: u64) -> Candidate {
        event(
            self.id,
            version,
            "TransferRefunded",
            json!({"reason": "invalid_state"}),
        )
    }
}

#[test]
fn a_request_opens_a_pending_transfer_with_its_terms() {
    // Given a transfer's request
    let transfer = Transfer::new();
    let run = [transfer.requested()];
    // When it is planned from nothing
    let (mutation, invalid) = plan_transfer(transfer.id, None, &run);
    // Then the row holds its terms, pending, timed by the event (to the microsecond)
    assert!(invalid.is_none());
    let mutation = mutation.unwrap();
    assert!(mutation.opens());
    let row = mutation.row;
    assert_eq!(
        (row.from, row.to, row.amount, row.currency.as_str()),
        (transfer.from, transfer.to, Decimal::new(2500, 2), "MAD")
    );
    assert_eq!(
        (row.reference.as_deref(), row.requested_by.as_str()),
        (Some("rent"), "alice")
    );
    assert_eq!(
        (row.status, row.reason, row.version),
        (TransferStatus::Pending, None, 1)
    );
    assert_eq!(row.created_at.timestamp_subsec_micros(), 123_456);
    assert_eq!(row.created_at, row.updated_at);
    assert_eq!(mutation.versions.len(), 1);
    assert_eq!(mutation.versions[0].kind, "TransferRequested");
}

#[test]
fn each_terminal_outcome_ends_the_transfer_with_its_reason() {
    let transfer = Transfer::new();
    let cases = [
        (
            vec![
                transfer.requested(),
                transfer.debited(2),
                transfer.completed(3),
            ],
            TransferStatus::Completed,
            None,
        ),
        (
            vec![transfer.requested(), transfer.failed(2)],
            TransferStatus::Failed,
            Some("insufficient_funds"),
        ),
        (
            vec![
                transfer.requested(),
                transfer.debited(2),
                transfer.refunded(3),
            ],
            TransferStatus::Refunded,
            Some("invalid_state"),
        ),
    ];
    for (run, status, reason) in cases {
        // When a whole lifecycle is planned
        let (mutation, invalid) = plan_transfer(transfer.id, None, &run);
        // Then the row ends in its outcome, updated at the last event
        assert!(invalid.is_none(), "{status}: {invalid:?}");
        let mutation = mutation.unwrap();
        let row = mutation.row;
        assert_eq!(
            (row.status, row.reason.as_deref(), row.version),
            (status, reason, i64::try_from(run.len()).unwrap())
        );
        assert_eq!(
            row.updated_at,
            run[run.len() - 1].envelope.occurred_at.trunc_subsecs(6)
        );
        assert_eq!(mutation.versions.len(), run.len());
    }
}

#[test]
fn a_run_goes_on_from_the_projected_row() {
    // Given a projected, debited transfer
    let transfer = Transfer::new();
    let (requested, _) = plan_transfer(
        transfer.id,
        None,
        &[transfer.requested(), transfer.debited(2)],
    );
    let row = requested.unwrap().row;
    // When its completion is planned
    let (mutation, invalid) = plan_transfer(transfer.id, Some(&row), &[transfer.completed(3)]);
    // Then it moves from version 2 to 3 and keeps its terms and creation time
    assert!(invalid.is_none());
    let mutation = mutation.unwrap();
    assert!(!mutation.opens());
    assert_eq!(mutation.from_version, 2);
    assert_eq!(mutation.row.status, TransferStatus::Completed);
    assert_eq!(mutation.row.created_at, row.created_at);
    assert_eq!(mutation.row.amount, row.amount);
}

#[test]
fn events_that_do_not_fit_the_lifecycle_are_refused_where_they_come() {
    let transfer = Transfer::new();
    let requested = plan_transfer(transfer.id, None, &[transfer.requested()])
        .0
        .unwrap()
        .row;
    let debited = plan_transfer(transfer.id, Some(&requested), &[transfer.debited(2)])
        .0
        .unwrap()
        .row;
    let failed = plan_transfer(transfer.id, Some(&requested), &[transfer.failed(2)])
        .0
        .unwrap()
        .row;
    let mut again = transfer.requested();
    again.envelope.version = 2;
    let cases: [(Option<&TransferRow>, Vec<Candidate>, usize); 6] = [
        // an event before the request
        (None, vec![transfer.debited(1)], 0),
        // a completion before the debit
        (Some(&requested), vec![transfer.completed(2)], 0),
        // a failure after the debit
        (Some(&debited), vec![transfer.failed(3)], 0),
        // anything after the end
        (Some(&failed), vec![transfer.debited(3)], 0),
        // a second request
        (Some(&requested), vec![again], 0),
        // a second debit, after a good one
        (
            Some(&requested),
            vec![transfer.debited(2), transfer.debited(3)],
            1,
        ),
    ];
    for (current, run, culprit) in cases {
        // When such a run is planned
        let (mutation, invalid) = plan_transfer(transfer.id, current, &run);
        // Then it stops at the culprit, keeping what came before it
        assert_eq!(
            invalid.as_ref().map(|(index, _)| *index),
            Some(culprit),
            "{run:?}"
        );
        assert_eq!(mutation.is_some(), culprit > 0, "{run:?}");
    }
}

#[test]
fn an_account_event_in_a_transfer_stream_is_refused() {
    let transfer = Transfer::new();
    let activated = event(transfer.id, 1, "AccountActivated", json!({}));
    let (mutation, invalid) = plan_transfer(transfer.id, None, &[activated]);
    assert!(mutation.is_none());
    assert!(invalid.unwrap().1.contains("account's event"));
}
