//! The batched apply: one batch of events of many accounts, with duplicates, a gap,
//! impossible events and a concurrent second projector, ends exactly as the command
//! service's streams say.

#![expect(
    clippy::unwrap_used,
    reason = "test: a failure here is the test's failure"
)]

use std::collections::BTreeMap;

use query_service::projection::{BatchOutcome, Projector};
use query_service::source::{CommandClient, TokenSource};
use query_service::store::{LIVE, ReadStore};
use query_service::watch::ProjectionWatch;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use service_kit::settings::SecretUrl;
use shared_events::EventEnvelope;

use crate::helpers::{Options, TestApp, spawn_app_with};

/// A query service that projects nothing by itself: the test drives the projector.
fn quiet() -> Options {
    Options {
        shared_exchange: false,
        follow_feed: false,
        ..Options::default()
    }
}

async fn projector(app: &TestApp) -> Projector {
    let store = ReadStore::open(&SecretUrl::new(app.mysql_url.clone()), 4)
        .await
        .unwrap();
    let source = CommandClient::new(
        &app.command,
        TokenSource::from_settings(&app.settings).unwrap(),
    )
    .unwrap();
    Projector::new(store, &LIVE, source, ProjectionWatch::default())
}

fn envelopes(events: &[Value]) -> Vec<EventEnvelope> {
    events
        .iter()
        .map(|event| serde_json::from_value(event.clone()).unwrap())
        .collect()
}

/// Accounts with their streams: `active_account` then credits and debits.
async fn accounts(app: &TestApp, count: usize) -> Vec<(String, Vec<Value>)> {
    let mut accounts = Vec::new();
    for index in 0..count {
        let currency = ["MAD", "EUR", "JPY"][index % 3];
        let id = app.active_account("100", currency).await;
        for step in 0..=(index % 4) {
            let command = if step % 2 == 0 { "credit" } else { "debit" };
            app.command(&id, command, json!({"amount": "7"})).await;
        }
        let stream = app.stream(&id).await;
        accounts.push((id, stream));
    }
    accounts
}

/// Every account as the command service's stream says it is, and the balance
/// sheet's counters adding up to them (whichever projector wrote what).
async fn assert_matches_streams(app: &TestApp, accounts: &[(String, Vec<Value>)]) {
    let mut totals: BTreeMap<String, (Decimal, u64)> = BTreeMap::new();
    for (id, stream) in accounts {
        let last = stream.last().unwrap();
        let version = last["version"].as_u64().unwrap();
        let account = app.account_at(id, version).await;
        assert_eq!(account["version"], version, "{id}");
        let balance = stream
            .iter()
            .rev()
            .find_map(|event| event["data"].get("balance").cloned())
            .unwrap_or_else(|| stream[0]["data"]["initial_balance"].clone());
        assert_eq!(account["balance"], balance, "{id}");
        let total = totals
            .entry(stream[0]["data"]["currency"].as_str().unwrap().to_owned())
            .or_default();
        total.0 += balance.as_str().unwrap().parse::<Decimal>().unwrap();
        total.1 += 1;
        assert_eq!(account["updated_at"], last["occurred_at"], "{id}");
        let operations = app.query_get(&format!("/accounts/{id}/operations")).await;
        let recorded: Vec<Value> = operations.body["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|operation| operation["event_id"].clone())
            .collect();
        let expected: Vec<Value> = stream
            .iter()
            .filter(|event| event["data"].get("balance").is_some())
            .map(|event| event["event_id"].clone())
            .collect();
        assert_eq!(recorded, expected, "{id}");
    }
    let sheet = app.query_get("/balance-sheet").await.body;
    let served: BTreeMap<String, (Decimal, u64)> = sheet["totals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|total| {
            assert_eq!(
                total["in_transit"]
                    .as_str()
                    .unwrap()
                    .parse::<Decimal>()
                    .unwrap(),
                Decimal::ZERO
            );
            (
                total["currency"].as_str().unwrap().to_owned(),
                (
                    total["balance"].as_str().unwrap().parse().unwrap(),
                    total["accounts"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(served, totals, "the balance sheet adds up the accounts");
}

#[tokio::test]
async fn a_mixed_batch_over_many_accounts_applies_each_event_once_in_order() {
    let app = spawn_app_with(quiet()).await;
    let accounts = accounts(&app, 12).await;
    let projector = projector(&app).await;

    // Half the accounts are already projected up to version 2.
    let mut already = Vec::new();
    for (_, stream) in accounts.iter().step_by(2) {
        already.extend_from_slice(&stream[..2]);
    }
    let outcome = projector
        .project_feed_page(envelopes(&already), "test")
        .await
        .unwrap();
    assert_eq!(outcome.applied, already.len() as u64);

    // One batch, newest first: the already projected events are duplicates, the
    // third account misses its version 3 (a gap filled from the command service), the
    // second sees every event twice, and two events can never be applied.
    let mut batch = Vec::new();
    let mut expected_new = 0;
    for (index, (_, stream)) in accounts.iter().enumerate() {
        let projected = if index % 2 == 0 { 2 } else { 0 };
        expected_new += stream.len() - projected;
        for (position, event) in stream.iter().enumerate() {
            if index == 2 && position == 2 {
                continue;
            }
            batch.push(event.clone());
            if index == 1 {
                batch.push(event.clone());
            }
        }
    }
    let mut beyond = accounts[3].1.last().unwrap().clone();
    beyond["version"] = json!(99);
    beyond["event_id"] = json!(uuid::Uuid::new_v4());
    batch.push(beyond);
    let mut unreadable = accounts[4].1[0].clone();
    unreadable["version"] = json!(0);
    batch.push(unreadable);
    batch.reverse();

    let outcome = projector
        .project_feed_page(envelopes(&batch), "test")
        .await
        .unwrap();
    // The gap's event is applied from the command service, not from the batch.
    assert_eq!(
        outcome,
        BatchOutcome {
            applied: expected_new as u64 - 1,
            duplicates: (already.len() + accounts[1].1.len()) as u64,
            poisoned: 2,
            conflicts: 0,
        }
    );
    assert_matches_streams(&app, &accounts).await;

    // The same batch again changes nothing.
    let again = projector
        .project_feed_page(envelopes(&batch), "test")
        .await
        .unwrap();
    assert_eq!(again.applied, 0);
    assert_eq!(again.poisoned, 2);
    assert_matches_streams(&app, &accounts).await;
    app.stop().await;
}

#[tokio::test]
async fn concurrent_projectors_of_overlapping_batches_apply_each_event_once() {
    let app = spawn_app_with(quiet()).await;
    let accounts = accounts(&app, 16).await;
    let (first, second) = (projector(&app).await, projector(&app).await);
    let all: Vec<Value> = accounts
        .iter()
        .flat_map(|(_, stream)| stream.iter().cloned())
        .collect();
    let mut shuffled = all.clone();
    shuffled.reverse();
    for round in 0..3 {
        let one = envelopes(&all[..all.len() * (round + 2) / 4]);
        let other = envelopes(&shuffled[..shuffled.len() * (round + 2) / 4]);
        let (one, other) = tokio::join!(
            first.project_feed_page(one, "test"),
            second.project_feed_page(other, "test")
        );
        let (one, other) = (one.unwrap(), other.unwrap());
        assert_eq!(one.poisoned + other.poisoned, 0);
    }
    let last = first
        .project_feed_page(envelopes(&all), "test")
        .await
        .unwrap();
    assert_eq!((last.applied, last.poisoned), (0, 0));
    assert_matches_streams(&app, &accounts).await;
    app.stop().await;
}
