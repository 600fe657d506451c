//! Transfers on the read side: each transfer's own stream projected into `transfers`,
//! its legs into the accounts' operations, the balance sheet's money in transit, the
//! transfer endpoints, and a rebuild of all of it.
//!
//! The command service of these tests does not make transfers itself: their events
//! are published as its relay would (or stored in its event store, for what must be
//! fetched from it: gaps, the global feed).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use shared_events::{LegKind, TransferId, TransferLeg};
use sqlx::Connection as _;
use test_support::auth::token;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::helpers::{Options, Publisher, TestApp, eventually, seed, spawn_app, spawn_app_with};

/// Seconds after this instant give each event of a test its own `occurred_at`.
const EPOCH: &str = "2026-12-02T09:00:00.000001Z";

fn at(second: i64) -> String {
    let epoch: DateTime<Utc> = EPOCH.parse().unwrap_or_else(|error| panic!("{error}"));
    (epoch + chrono::Duration::seconds(second)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// An event of stream `stream` as the command service would publish it.
fn event(stream: &str, version: u64, kind: &str, data: Value, second: i64) -> Value {
    json!({
        "event_id": Uuid::new_v4(),
        "account_id": stream,
        "version": version,
        "position": version,
        "type": kind,
        "schema_version": 1,
        "occurred_at": at(second),
        "data": data,
        "metadata": {"correlation_id": null, "causation_id": null, "idempotency_key": null},
    })
}

/// A transfer between two accounts, and the events of its stream and of its legs.
struct Transfer {
    id: String,
    from: String,
    to: String,
    amount: &'static str,
    currency: &'static str,
}

impl Transfer {
    fn new(from: &str, to: &str, amount: &'static str, currency: &'static str) -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            from: from.to_owned(),
            to: to.to_owned(),
            amount,
            currency,
        }
    }

    fn requested(&self, second: i64) -> Value {
        event(
            &self.id,
            1,
            "TransferRequested",
            json!({"from": self.from, "to": self.to, "amount": self.amount,
                   "currency": self.currency, "reference": "rent", "requested_by": "alice"}),
            second,
        )
    }

    fn debited(&self, second: i64) -> Value {
        event(&self.id, 2, "TransferDebited", json!({}), second)
    }

    fn completed(&self, second: i64) -> Value {
        event(&self.id, 3, "TransferCompleted", json!({}), second)
    }

    fn failed(&self, reason: &str, second: i64) -> Value {
        event(
            &self.id,
            2,
            "TransferFailed",
            json!({"reason": reason}),
            second,
        )
    }

    fn refunded(&self, reason: &str, second: i64) -> Value {
        event(
            &self.id,
            3,
            "TransferRefunded",
            json!({"reason": reason}),
            second,
        )
    }

    /// The source's debit, leaving `balance`, at `version` of its stream.
    fn out(&self, version: u64, balance: &str, second: i64) -> Value {
        self.leg(&self.from, LegKind::TransferOut, version, balance, second)
    }

    /// The destination's credit.
    fn arrived(&self, version: u64, balance: &str, second: i64) -> Value {
        self.leg(&self.to, LegKind::TransferIn, version, balance, second)
    }

    /// The source's refund.
    fn refund(&self, version: u64, balance: &str, second: i64) -> Value {
        self.leg(
            &self.from,
            LegKind::TransferRefund,
            version,
            balance,
            second,
        )
    }

    fn leg(&self, account: &str, kind: LegKind, version: u64, balance: &str, second: i64) -> Value {
        let transfer_id: TransferId = self.id.parse().unwrap_or_else(|e| panic!("{e}"));
        let event_type = if kind == LegKind::TransferOut {
            "AccountDebited"
        } else {
            "AccountCredited"
        };
        let mut leg = event(
            account,
            version,
            event_type,
            json!({"amount": self.amount, "currency": self.currency, "balance": balance,
                   "transfer_id": self.id, "kind": kind}),
            second,
        );
        leg["event_id"] = json!(TransferLeg { transfer_id, kind }.event_id());
        leg
    }
}

async fn publish_all(publisher: &Publisher, events: &[&Value]) {
    for event in events {
        publisher.publish_event(event).await;
    }
}

/// `GET /transfers/{id}` as an admin, waiting at most `wait_ms` for it to end.
async fn transfer(app: &TestApp, id: &str, wait_ms: u64) -> Value {
    let reply = app
        .query_get(&format!("/transfers/{id}?wait_ms={wait_ms}"))
        .await;
    assert_eq!(reply.status, 200, "transfer {id}: {:?}", reply.body);
    reply.body
}

/// The transfer once its row is at `version` (its stream's events projected so far).
async fn transfer_at(app: &TestApp, id: &str, version: i64) -> Value {
    let reached = eventually(Duration::from_secs(10), || async move {
        let mut mysql = app.mysql().await;
        let projected: Option<i64> =
            sqlx::query_scalar("SELECT version FROM transfers WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut mysql)
                .await
                .unwrap_or_else(|error| panic!("{error}"));
        projected >= Some(version)
    })
    .await;
    assert!(reached, "transfer {id} never reached version {version}");
    transfer(app, id, 0).await
}

/// The balance sheet's totals of one currency: (balance, accounts, in transit).
async fn sheet(app: &TestApp, currency: &str) -> (String, u64, String) {
    let reply = app.query_get("/balance-sheet").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let totals = reply.body["totals"].as_array().cloned().unwrap_or_default();
    let total = totals
        .iter()
        .find(|total| total["currency"] == currency)
        .unwrap_or_else(|| panic!("no {currency} in {}", reply.body));
    (
        total["balance"].as_str().unwrap_or_default().to_owned(),
        total["accounts"].as_u64().unwrap_or_default(),
        total["in_transit"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn operations(app: &TestApp, account: &str) -> Vec<Value> {
    let reply = app
        .query_get(&format!("/accounts/{account}/operations?limit=500"))
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["operations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// (type, amount, balance_after, transfer_id) of each operation.
fn summary(operations: &[Value]) -> Vec<(String, String, String, Option<String>)> {
    operations
        .iter()
        .map(|op| {
            (
                op["type"].as_str().unwrap_or_default().to_owned(),
                op["amount"].as_str().unwrap_or_default().to_owned(),
                op["balance_after"].as_str().unwrap_or_default().to_owned(),
                op.get("transfer_id")
                    .map(|id| id.as_str().unwrap_or_default().to_owned()),
            )
        })
        .collect()
}

fn leg_op(
    kind: &str,
    amount: &str,
    balance: &str,
    transfer: &Transfer,
) -> (String, String, String, Option<String>) {
    (
        kind.to_owned(),
        amount.to_owned(),
        balance.to_owned(),
        Some(transfer.id.clone()),
    )
}

fn seeded_credit() -> (String, String, String, Option<String>) {
    (
        "CREDIT".to_owned(),
        "5.00".to_owned(),
        "15.00".to_owned(),
        None,
    )
}

/// The ids of an account's transfers, oldest first.
async fn listed(app: &TestApp, token: Option<&str>, account: &str) -> Result<Vec<String>, u16> {
    let path = format!("/accounts/{account}/transfers");
    let reply = match token {
        Some(token) => app.query_as(Some(token), &path).await,
        None => app.query_get(&path).await,
    };
    if reply.status != 200 {
        return Err(reply.status);
    }
    Ok(reply.body["transfers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| t["id"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// A query service that only gets what the test publishes.
fn isolated() -> Options {
    Options {
        shared_exchange: false,
        follow_feed: false,
        ..Options::default()
    }
}

#[tokio::test]
async fn a_completed_transfer_moves_the_money_through_transit_to_the_destination() {
    // Given alice's and bob's accounts, 15.00 MAD each
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    assert_eq!(sheet(&app, "MAD").await, ("30.00".into(), 2, "0.00".into()));
    let rent = Transfer::new(&alices, &bobs, "4.00", "MAD");
    let publisher = app.publisher().await;

    // When alice asks for 4.00 to go to bob
    publisher.publish_event(&rent.requested(1)).await;
    // Then the transfer is pending, with its terms
    let pending = transfer_at(&app, &rent.id, 1).await;
    assert_eq!(
        pending,
        json!({"id": rent.id, "from": alices, "to": bobs, "amount": "4.00", "currency": "MAD",
               "reference": "rent", "status": "PENDING", "reason": null,
               "created_at": at(1), "updated_at": at(1)})
    );

    // When her account is debited
    publish_all(&publisher, &[&rent.out(4, "11.00", 2), &rent.debited(3)]).await;
    app.account_at(&alices, 4).await;
    transfer_at(&app, &rent.id, 2).await;
    // Then the money is in transit, the balances short of it
    assert_eq!(sheet(&app, "MAD").await, ("26.00".into(), 2, "4.00".into()));
    assert_eq!(
        summary(&operations(&app, &alices).await),
        [
            seeded_credit(),
            leg_op("TRANSFER_OUT", "4.00", "11.00", &rent)
        ]
    );

    // When bob's account is credited and the transfer completes
    publish_all(
        &publisher,
        &[&rent.arrived(4, "19.00", 4), &rent.completed(5)],
    )
    .await;
    // Then a wait for its end answers with the completed transfer
    let done = transfer(&app, &rent.id, 10_000).await;
    assert_eq!(
        (&done["status"], &done["reason"]),
        (&json!("COMPLETED"), &json!(null))
    );
    assert_eq!(
        (&done["created_at"], &done["updated_at"]),
        (&json!(at(1)), &json!(at(5)))
    );
    app.account_at(&bobs, 4).await;
    // And nothing is in transit any more: the balances hold it all
    assert_eq!(sheet(&app, "MAD").await, ("30.00".into(), 2, "0.00".into()));
    let bobs_operations = operations(&app, &bobs).await;
    assert_eq!(
        summary(&bobs_operations),
        [
            seeded_credit(),
            leg_op("TRANSFER_IN", "4.00", "19.00", &rent)
        ]
    );
    assert!(
        bobs_operations[0].get("transfer_id").is_none(),
        "a plain credit names no transfer"
    );
    // And both accounts list it
    assert_eq!(listed(&app, None, &alices).await, Ok(vec![rent.id.clone()]));
    assert_eq!(listed(&app, None, &bobs).await, Ok(vec![rent.id.clone()]));
    app.stop().await;
}

#[tokio::test]
async fn a_transfer_the_source_refuses_fails_and_moves_nothing() {
    // Given alice's account with 15.00 and bob's
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    let too_much = Transfer::new(&alices, &bobs, "400.00", "MAD");
    // When a transfer of 400.00 is requested and fails for want of funds
    let publisher = app.publisher().await;
    publish_all(
        &publisher,
        &[
            &too_much.requested(1),
            &too_much.failed("insufficient_funds", 2),
        ],
    )
    .await;
    // Then it ends FAILED with the reason, and no money moved
    let failed = transfer(&app, &too_much.id, 10_000).await;
    assert_eq!(
        (&failed["status"], &failed["reason"], &failed["amount"]),
        (
            &json!("FAILED"),
            &json!("insufficient_funds"),
            &json!("400.00")
        )
    );
    assert_eq!(sheet(&app, "MAD").await, ("30.00".into(), 2, "0.00".into()));
    assert_eq!(summary(&operations(&app, &alices).await), [seeded_credit()]);
    assert_eq!(
        listed(&app, None, &bobs).await,
        Ok(vec![too_much.id.clone()])
    );
    app.stop().await;
}

#[tokio::test]
async fn text_a_client_chose_reads_back_exactly_as_written() {
    // Given a transfer whose reference holds quotes, a backslash, SQL and non-ASCII text
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    let rent = Transfer::new(&alices, &bobs, "4.00", "MAD");
    let reference = "O'Brien \\ \"loyer\" — é 🏦'); DROP TABLE transfers; --";
    let mut requested = rent.requested(1);
    requested["data"]["reference"] = json!(reference);
    let reason = "refusé: l'account's \\' closed\n";
    // When it is requested, then fails with a reason of the same kind
    let publisher = app.publisher().await;
    publish_all(&publisher, &[&requested, &rent.failed(reason, 2)]).await;
    // Then both read back as they were written
    let failed = transfer(&app, &rent.id, 10_000).await;
    assert_eq!(
        (&failed["status"], &failed["reference"], &failed["reason"]),
        (&json!("FAILED"), &json!(reference), &json!(reason))
    );
    app.stop().await;
}

#[tokio::test]
async fn a_transfer_the_destination_refuses_is_refunded_to_the_source() {
    // Given alice's and bob's accounts with 15.00 each
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    let refused = Transfer::new(&alices, &bobs, "6.00", "MAD");
    let publisher = app.publisher().await;
    // When alice's account is debited for bob
    publish_all(
        &publisher,
        &[
            &refused.requested(1),
            &refused.out(4, "9.00", 2),
            &refused.debited(3),
        ],
    )
    .await;
    app.account_at(&alices, 4).await;
    transfer_at(&app, &refused.id, 2).await;
    // Then the money is in transit
    assert_eq!(sheet(&app, "MAD").await, ("24.00".into(), 2, "6.00".into()));
    // When bob's account refuses it and alice's is refunded
    publish_all(
        &publisher,
        &[
            &refused.refund(5, "15.00", 4),
            &refused.refunded("invalid_state", 5),
        ],
    )
    .await;
    // Then the transfer ends REFUNDED with the reason, the money back where it was
    let ended = transfer(&app, &refused.id, 10_000).await;
    assert_eq!(
        (&ended["status"], &ended["reason"]),
        (&json!("REFUNDED"), &json!("invalid_state"))
    );
    app.account_at(&alices, 5).await;
    assert_eq!(sheet(&app, "MAD").await, ("30.00".into(), 2, "0.00".into()));
    assert_eq!(
        summary(&operations(&app, &alices).await),
        [
            seeded_credit(),
            leg_op("TRANSFER_OUT", "6.00", "9.00", &refused),
            leg_op("TRANSFER_REFUND", "6.00", "15.00", &refused),
        ]
    );
    assert_eq!(summary(&operations(&app, &bobs).await), [seeded_credit()]);
    app.stop().await;
}

#[tokio::test]
async fn a_wait_for_a_transfer_is_woken_by_the_projection() {
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    let later = Transfer::new(&alices, &bobs, "1.00", "MAD");
    // Given a read waiting up to 10 s for a transfer not projected yet
    let started = Instant::now();
    let waiting = {
        let (client, query, id) = (app.client.clone(), app.query.clone(), later.id.clone());
        tokio::spawn(async move {
            let reply = client
                .get(format!("{query}/transfers/{id}?wait_ms=10000"))
                .bearer_auth(test_support::auth::admin_token())
                .send()
                .await
                .unwrap_or_else(|error| panic!("{error}"));
            let status = reply.status().as_u16();
            let body: Value = reply.json().await.unwrap_or_else(|error| panic!("{error}"));
            (status, body)
        })
    };
    let publisher = app.publisher().await;
    // When it is requested, Then the read goes on waiting (the transfer has not ended)
    publisher.publish_event(&later.requested(1)).await;
    transfer_at(&app, &later.id, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a pending transfer does not end the wait"
    );
    // When it fails, Then the read answers at once with the failed transfer
    publisher
        .publish_event(&later.failed("invalid_state", 2))
        .await;
    let (status, body) = waiting.await.unwrap_or_else(|error| panic!("{error}"));
    assert_eq!((status, &body["status"]), (200, &json!("FAILED")));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "woken by the commit, not by the end of the wait ({:?})",
        started.elapsed()
    );

    // A pending transfer is answered as it is when the wait is over
    let pending = Transfer::new(&alices, &bobs, "1.00", "MAD");
    publisher.publish_event(&pending.requested(3)).await;
    transfer_at(&app, &pending.id, 1).await;
    let started = Instant::now();
    assert_eq!(transfer(&app, &pending.id, 300).await["status"], "PENDING");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // An unknown transfer is a 404, at once or at the end of the wait
    let unknown = Uuid::now_v7();
    for wait in ["", "?wait_ms=0", "?wait_ms=200"] {
        app.query_get(&format!("/transfers/{unknown}{wait}"))
            .await
            .assert_problem(404, "not_found");
    }
    // A wait out of range, or not a number, is a bad request
    for wait in ["10001", "-1", "soon"] {
        app.query_get(&format!("/transfers/{}?wait_ms={wait}", pending.id))
            .await
            .assert_problem(400, "invalid_request");
    }
    app.query_get("/transfers/not-a-uuid")
        .await
        .assert_problem(400, "invalid_request");
    app.stop().await;
}

#[tokio::test]
async fn a_transfer_is_seen_by_the_owners_of_its_accounts_only() {
    // Given a transfer from alice's account to bob's
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    let carols = seed(&app, Some("carol"), "MAD").await;
    let gift = Transfer::new(&alices, &bobs, "2.00", "MAD");
    let publisher = app.publisher().await;
    publish_all(
        &publisher,
        &[&gift.requested(1), &gift.failed("invalid_state", 2)],
    )
    .await;
    transfer(&app, &gift.id, 10_000).await;
    let path = format!("/transfers/{}", gift.id);
    let reader = |sub: &str| token(sub, "accounts:read");

    // Then alice (source) and bob (destination) see it, and an admin
    for sub in ["alice", "bob"] {
        let reply = app.query_as(Some(&reader(sub)), &path).await;
        assert_eq!(
            (reply.status, &reply.body["id"]),
            (200, &json!(gift.id)),
            "{sub}"
        );
        assert_eq!(
            listed(
                &app,
                Some(&reader(sub)),
                if sub == "alice" { &alices } else { &bobs }
            )
            .await,
            Ok(vec![gift.id.clone()])
        );
    }
    let admin = token("ops", "accounts:admin");
    assert_eq!(app.query_as(Some(&admin), &path).await.status, 200);
    // And carol gets a 404, as for a transfer that does not exist, even waiting
    app.query_as(Some(&reader("carol")), &path)
        .await
        .assert_problem(404, "not_found");
    app.query_as(Some(&reader("carol")), &format!("{path}?wait_ms=100"))
        .await
        .assert_problem(404, "not_found");
    // And one may list only one's own account's transfers
    assert_eq!(
        listed(&app, Some(&reader("carol")), &alices).await,
        Err(404)
    );
    assert_eq!(
        listed(&app, Some(&reader("carol")), &carols).await,
        Ok(vec![])
    );
    // And a token without accounts:read reads nothing (events:read is not it)
    for scopes in ["accounts:write", "events:read"] {
        app.query_as(Some(&token("alice", scopes)), &path)
            .await
            .assert_problem(403, "forbidden");
        app.query_as(
            Some(&token("alice", scopes)),
            &format!("/accounts/{alices}/transfers"),
        )
        .await
        .assert_problem(403, "forbidden");
    }
    app.query_as(None, &path)
        .await
        .assert_problem(401, "unauthorized");
    app.stop().await;
}

#[tokio::test]
async fn an_accounts_transfers_are_listed_oldest_first_page_by_page() {
    // Given five transfers between alice's and bob's accounts, both ways
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    let publisher = app.publisher().await;
    let mut ids = Vec::new();
    // Published newest first: the order is the transfers' creation, not the projection's.
    for second in (0..5).rev() {
        let (from, to) = if second % 2 == 0 {
            (&alices, &bobs)
        } else {
            (&bobs, &alices)
        };
        let transfer = Transfer::new(from, to, "1.00", "MAD");
        publisher.publish_event(&transfer.requested(second)).await;
        ids.push(transfer.id);
    }
    ids.reverse();
    for id in &ids {
        transfer_at(&app, id, 1).await;
    }
    // When alice's are read two at a time
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let reply = app
            .query_get(&format!("/accounts/{alices}/transfers?limit=2{after}"))
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        pages.push(
            reply.body["transfers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|t| t["id"].as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>(),
        );
        match reply.body["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    // Then every one comes once, oldest first
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    assert_eq!(pages.concat(), ids);
    // And a cursor of another listing, or a bad limit, is a bad request
    for query in [
        "after=o0000000000000003",
        "after=t123",
        "limit=0",
        "limit=501",
    ] {
        app.query_get(&format!("/accounts/{alices}/transfers?{query}"))
            .await
            .assert_problem(400, "invalid_request");
    }
    app.query_get(&format!("/accounts/{}/transfers", Uuid::now_v7()))
        .await
        .assert_problem(404, "not_found");
    app.stop().await;
}

/// Stores events in the command service's event store, as its appends would (holding
/// the append lock of this backend, so that readers wait for the commit), and wakes its
/// relay.
async fn store_events(app: &TestApp, events: &[&Value]) {
    let mut postgres = sqlx::PgConnection::connect(&app.postgres_url)
        .await
        .unwrap_or_else(|error| panic!("cannot reach {}: {error}", app.postgres_url));
    let mut tx = postgres
        .begin()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    sqlx::query("SELECT pg_advisory_xact_lock(730595463, pg_backend_pid())")
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    for event in events {
        let text = |field: &str| event[field].as_str().unwrap_or_default().to_owned();
        let version = event["version"].as_i64().unwrap_or_default();
        sqlx::query(
            "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at) \
             VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6::jsonb, $7::jsonb, $8::timestamptz)",
        )
        .bind(text("event_id"))
        .bind(text("account_id"))
        .bind(version)
        .bind(text("type"))
        .bind(i32::try_from(event["schema_version"].as_i64().unwrap_or(1)).unwrap_or(1))
        .bind(event["data"].to_string())
        .bind(event["metadata"].to_string())
        .bind(text("occurred_at"))
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|error| panic!("cannot store {event}: {error}"));
        sqlx::query(
            "INSERT INTO streams (stream_id, version) VALUES ($1::uuid, $2) \
             ON CONFLICT (stream_id) DO UPDATE SET version = GREATEST(streams.version, EXCLUDED.version)",
        )
        .bind(text("account_id"))
        .bind(version)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    }
    sqlx::query("SELECT pg_notify('bank_outbox', '')")
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    tx.commit().await.unwrap_or_else(|error| panic!("{error}"));
}

#[tokio::test]
async fn duplicated_and_reordered_transfer_events_apply_once() {
    // Given a completed transfer in the command service's store
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    let rent = Transfer::new(&alices, &bobs, "4.00", "MAD");
    let (requested, debited, completed) = (rent.requested(1), rent.debited(2), rent.completed(3));
    store_events(&app, &[&requested, &debited, &completed]).await;
    let (out, arrived) = (rent.out(4, "11.00", 2), rent.arrived(4, "19.00", 3));
    let duplicates_before = app
        .metric("projection_events_total", &["outcome=\"duplicate\""])
        .await;
    // When its events come backwards, each three times, with its legs twice
    let publisher = app.publisher().await;
    for _ in 0..3 {
        publish_all(&publisher, &[&completed, &debited, &requested]).await;
    }
    publish_all(&publisher, &[&out, &arrived, &out, &arrived]).await;
    // Then the transfer is complete, with its request's terms and times
    let done = transfer(&app, &rent.id, 10_000).await;
    assert_eq!(
        (&done["status"], &done["created_at"], &done["updated_at"]),
        (&json!("COMPLETED"), &json!(at(1)), &json!(at(3)))
    );
    app.account_at(&alices, 4).await;
    app.account_at(&bobs, 4).await;
    // And every event was applied once: the rest counted as duplicates
    let settled = eventually(Duration::from_secs(10), || async {
        app.metric("projection_events_total", &["outcome=\"duplicate\""])
            .await
            - duplicates_before
            >= 8.0
    })
    .await;
    assert!(settled, "the 8 surplus messages are duplicates");
    let mut mysql = app.mysql().await;
    let versions: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM transfer_versions WHERE transfer_id = ?")
            .bind(&rent.id)
            .fetch_one(&mut mysql)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(versions, 3);
    assert_eq!(
        summary(&operations(&app, &alices).await),
        [
            seeded_credit(),
            leg_op("TRANSFER_OUT", "4.00", "11.00", &rent)
        ]
    );
    assert_eq!(sheet(&app, "MAD").await, ("30.00".into(), 2, "0.00".into()));
    assert!(
        app.dead_letters().await.is_empty(),
        "nothing was dead-lettered"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_gap_in_a_transfer_stream_is_filled_from_the_command_service() {
    // Given a refunded transfer in the command service's store
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    let refused = Transfer::new(&alices, &bobs, "3.00", "MAD");
    let (requested, debited, refunded) = (
        refused.requested(1),
        refused.debited(2),
        refused.refunded("currency_mismatch", 3),
    );
    store_events(&app, &[&requested, &debited, &refunded]).await;
    let fetched_before = app.metric("projection_backfilled_events_total", &[]).await;
    // When only its last event is delivered
    let publisher = app.publisher().await;
    publisher.publish_event(&refunded).await;
    // Then the first two are fetched, and the transfer is projected whole
    let ended = transfer(&app, &refused.id, 10_000).await;
    assert_eq!(
        (&ended["status"], &ended["reason"], &ended["created_at"]),
        (
            &json!("REFUNDED"),
            &json!("currency_mismatch"),
            &json!(at(1))
        )
    );
    // (counted just after the commit that readers already see)
    let fetched = eventually(Duration::from_secs(10), || async {
        app.metric("projection_backfilled_events_total", &[]).await - fetched_before >= 2.0
    })
    .await;
    assert!(fetched, "the two events before the gap were fetched");

    // And a transfer event beyond a gap the command service cannot fill is dead-lettered
    let unknown = Transfer::new(&alices, &bobs, "3.00", "MAD");
    let stray = unknown.debited(2);
    publisher.publish_event(&stray).await;
    let dead = app.await_dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    let body: Value = serde_json::from_slice(&dead[0]).unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(body["event_id"], stray["event_id"]);
    app.query_get(&format!("/transfers/{}", unknown.id))
        .await
        .assert_problem(404, "not_found");
    app.stop().await;
}

/// A mix of transfers in the command service's store (relayed to the query service
/// like any event): completed, failed, refunded, one still in transit, and one
/// refunded to an account that closed meanwhile. Returns the transfers, the accounts
/// and each account's last version.
async fn mixed_history(app: &TestApp) -> (Vec<Transfer>, Vec<(String, u64)>) {
    let a = app.active_account("100.00", "MAD").await;
    let b = app.active_account("50.00", "MAD").await;
    let c = app.active_account("20.00", "MAD").await;
    let e = app.active_account("5.00", "MAD").await;
    let euros = app.active_account("9.99", "EUR").await;
    let completed = Transfer::new(&a, &b, "10.00", "MAD");
    let failed = Transfer::new(&a, &b, "500.00", "MAD");
    let refunded = Transfer::new(&b, &c, "5.00", "MAD");
    let in_transit = Transfer::new(&a, &c, "7.00", "MAD");
    let late_refund = Transfer::new(&e, &b, "5.00", "MAD");
    let events = [
        completed.requested(1),
        completed.out(3, "90.00", 2),
        completed.debited(3),
        completed.arrived(3, "60.00", 4),
        completed.completed(5),
        failed.requested(6),
        failed.failed("insufficient_funds", 7),
        refunded.requested(8),
        refunded.out(4, "55.00", 9),
        refunded.debited(10),
        refunded.refund(5, "60.00", 11),
        refunded.refunded("invalid_state", 12),
        in_transit.requested(13),
        in_transit.out(4, "83.00", 14),
        in_transit.debited(15),
        late_refund.requested(16),
        late_refund.out(3, "0.00", 17),
        late_refund.debited(18),
        event(&e, 4, "AccountClosed", json!({}), 19),
        late_refund.refund(5, "5.00", 20),
        late_refund.refunded("invalid_state", 21),
    ];
    store_events(app, &events.iter().collect::<Vec<_>>()).await;
    for ended in [&completed, &failed, &refunded, &late_refund] {
        transfer(app, &ended.id, 10_000).await;
    }
    transfer_at(app, &in_transit.id, 2).await;
    let accounts = vec![(a, 4), (b, 5), (c, 2), (e, 5), (euros, 2)];
    for (id, version) in &accounts {
        app.account_at(id, *version).await;
    }
    (
        vec![completed, failed, refunded, in_transit, late_refund],
        accounts,
    )
}

/// The balance sheet recounted from the read model's accounts and operations:
/// currency → (balance of every account, accounts not closed, money in transit).
async fn recount(app: &TestApp) -> Vec<(String, String, i64, String)> {
    let mut mysql = app.mysql().await;
    sqlx::query_as(
        "SELECT a.currency, CAST(SUM(a.balance) AS CHAR), \
                CAST(SUM(a.status <> 'CLOSED') AS SIGNED), \
                CAST(COALESCE((SELECT SUM(CASE o.type WHEN 'TRANSFER_OUT' THEN o.amount ELSE -o.amount END) \
                     FROM operations o WHERE o.currency = a.currency AND o.transfer_id IS NOT NULL), 0) AS CHAR) \
           FROM accounts a GROUP BY a.currency ORDER BY a.currency",
    )
    .fetch_all(&mut mysql)
    .await
    .unwrap_or_else(|error| panic!("{error}"))
}

fn as_decimal(text: &str) -> rust_decimal::Decimal {
    text.parse()
        .unwrap_or_else(|error| panic!("{text:?} is not a decimal: {error}"))
}

#[tokio::test]
async fn the_balance_sheet_equals_a_full_recount_after_a_mix_of_transfers() {
    // Given completed, failed, refunded and pending transfers, and a refund that
    // reached an account closed meanwhile
    let app = spawn_app().await;
    let (_, accounts) = mixed_history(&app).await;
    // When the balance sheet is read
    // Then it is what the test expects: every balance summed (the closed account's
    // late refund included), the closed account not counted, 7.00 in transit
    assert_eq!(
        sheet(&app, "MAD").await,
        ("168.00".into(), 3, "7.00".into())
    );
    assert_eq!(sheet(&app, "EUR").await, ("9.99".into(), 1, "0.00".into()));
    let closed = app.account_at(&accounts[3].0, 5).await;
    assert_eq!(
        (&closed["status"], &closed["balance"]),
        (&json!("CLOSED"), &json!("5.00"))
    );
    // And it equals a recount of the read model's accounts and operations
    let reply = app.query_get("/balance-sheet").await;
    let served: Vec<(String, String, i64, String)> = reply.body["totals"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|total| {
            (
                total["currency"].as_str().unwrap_or_default().to_owned(),
                total["balance"].as_str().unwrap_or_default().to_owned(),
                total["accounts"].as_i64().unwrap_or_default(),
                total["in_transit"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let recounted = recount(&app).await;
    assert_eq!(served.len(), recounted.len());
    for (served, recounted) in served.iter().zip(&recounted) {
        assert_eq!((&served.0, served.2), (&recounted.0, recounted.2));
        assert_eq!(
            as_decimal(&served.1),
            as_decimal(&recounted.1),
            "{served:?}"
        );
        assert_eq!(
            as_decimal(&served.3),
            as_decimal(&recounted.3),
            "{served:?}"
        );
    }
    // And balances plus money in transit are what was opened with: transfers moved
    // money, they made none
    assert_eq!(
        as_decimal(&served[1].1) + as_decimal(&served[1].3),
        as_decimal("175.00")
    );
    app.stop().await;
}

/// Everything the REST API shows of transfers: each one, each account's listing.
async fn transfers_snapshot(
    app: &TestApp,
    transfers: &[Transfer],
    accounts: &[(String, u64)],
) -> Value {
    let mut one_by_one = Vec::new();
    for transfer in transfers {
        one_by_one.push(
            app.query_get(&format!("/transfers/{}", transfer.id))
                .await
                .body,
        );
    }
    let mut listings = Vec::new();
    for (account, _) in accounts {
        listings.push(
            app.query_get(&format!("/accounts/{account}/transfers"))
                .await
                .body,
        );
    }
    json!({"transfers": one_by_one, "listings": listings})
}

#[tokio::test]
async fn rebuild_reproduces_transfers_their_legs_and_the_balance_sheet() {
    // Given a mix of transfers projected live
    let app = spawn_app().await;
    let (transfers, accounts) = mixed_history(&app).await;
    let live = (
        app.snapshot().await,
        transfers_snapshot(&app, &transfers, &accounts).await,
    );
    let legs = live.0["details"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .flat_map(|d| {
            d["operations"]["operations"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|op| op.get("transfer_id").is_some())
        .count();
    assert_eq!(legs, 7, "every leg is an operation naming its transfer");
    // When the live model is damaged and then rebuilt from the global feed
    let mut mysql = app.mysql().await;
    for damage in [
        "DELETE FROM transfers",
        "UPDATE operations SET transfer_id = NULL",
        "UPDATE balance_sheet SET in_transit = 0, balance = 0",
    ] {
        sqlx::query(damage)
            .execute(&mut mysql)
            .await
            .unwrap_or_else(|error| panic!("{damage}: {error}"));
    }
    assert_ne!(app.snapshot().await, live.0);
    let report = query_service::rebuild::run(&app.settings, CancellationToken::new())
        .await
        .unwrap_or_else(|error| panic!("rebuild failed: {error:?}"));
    assert_eq!(report.events, report.applied, "every event applies");
    // Then the API shows exactly what it showed before
    assert_eq!(app.snapshot().await, live.0);
    assert_eq!(
        transfers_snapshot(&app, &transfers, &accounts).await,
        live.1
    );

    // And the live projection goes on over the swapped tables
    let next = Transfer::new(&accounts[0].0, &accounts[1].0, "1.00", "MAD");
    store_events(
        &app,
        &[&next.requested(30), &next.failed("invalid_state", 31)],
    )
    .await;
    assert_eq!(transfer(&app, &next.id, 10_000).await["status"], "FAILED");
    app.stop().await;
}

#[tokio::test]
async fn an_existing_read_models_balance_sheet_starts_from_its_accounts() {
    use sqlx::migrate::MigrateDatabase as _;
    use test_support::servers::{Server, mysql_url, require};

    require(&[Server::MySql]);
    let database = test_support::names::fresh_database("qs_test_migrate");
    let leftovers = test_support::Leftovers {
        mysql_databases: vec![database.clone()],
        ..test_support::Leftovers::default()
    };
    let url = mysql_url(&database);
    // Given a read model of the release before transfers, holding accounts
    sqlx::MySql::create_database(&url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let mut mysql = sqlx::MySqlConnection::connect(&url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    sqlx::migrate!("./migrations")
        .run_to(20_261_201_000_003, &mut mysql)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let accounts = (0..24).map(|index| match index % 4 {
        0 => ("MAD", "ACTIVE", "10.25"),
        1 => ("MAD", "SUSPENDED", "1.50"),
        2 => ("MAD", "CLOSED", "0"),
        _ => ("JPY", "ACTIVE", "700"),
    });
    for (currency, status, balance) in accounts {
        sqlx::query(
            "INSERT INTO accounts (id, owner, status, currency, balance, version, created_at, updated_at) \
             VALUES (?, 'alice', ?, ?, ?, 3, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(status)
        .bind(currency)
        .bind(as_decimal(balance))
        .execute(&mut mysql)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    }
    // When this release opens it (and migrates it)
    query_service::store::ReadStore::open(&service_kit::settings::SecretUrl::new(url.clone()), 2)
        .await
        .unwrap_or_else(|error| panic!("cannot open the read model: {error}"));
    // Then the balance sheet holds its accounts' totals, spread over the slots
    let totals: Vec<(String, String, i64, String, i64)> = sqlx::query_as(
        "SELECT currency, CAST(SUM(balance) AS CHAR), CAST(SUM(accounts) AS SIGNED), \
                CAST(SUM(in_transit) AS CHAR), CAST(MAX(slot) AS SIGNED) \
           FROM balance_sheet GROUP BY currency ORDER BY currency",
    )
    .fetch_all(&mut mysql)
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    let totals: Vec<_> = totals
        .into_iter()
        .map(|(currency, balance, accounts, in_transit, highest_slot)| {
            assert!(highest_slot < 8, "slot {highest_slot}");
            (
                currency,
                as_decimal(&balance),
                accounts,
                as_decimal(&in_transit),
            )
        })
        .collect();
    assert_eq!(
        totals,
        [
            ("JPY".to_owned(), as_decimal("4200"), 6, as_decimal("0")),
            ("MAD".to_owned(), as_decimal("70.50"), 12, as_decimal("0")),
        ]
    );
    drop(mysql);
    leftovers.remove().await;
}
