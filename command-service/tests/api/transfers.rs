//! Transfers over HTTP, against the real Postgres: the synchronous refusals, then each
//! way a transfer ends, as the event store records it (the transfer's own stream and
//! the legs on the accounts' streams).

use std::time::Duration;

use serde_json::{Value, json};
use test_support::auth::customer_token;
use test_support::http::Api;

use crate::helpers::{TestApp, spawn_app};

/// The events of stream `id` (an account's or a transfer's), as the admin reads them,
/// page after page.
async fn stream(app: &TestApp, id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = Some(1);
    while let Some(version) = from {
        let page = app
            .admin()
            .get(&format!("/accounts/{id}/events?from_version={version}"))
            .await
            .expect(200, "stream");
        events.extend(page["events"].as_array().cloned().unwrap_or_default());
        from = page["next_from_version"].as_u64();
    }
    events
}

/// Waits until transfer `id` ends; returns its stream's event types.
async fn ended(app: &TestApp, id: &str) -> Vec<String> {
    for _ in 0..500 {
        let types: Vec<String> = stream(app, id)
            .await
            .iter()
            .filter_map(|event| event["type"].as_str().map(str::to_owned))
            .collect();
        if types.iter().any(|kind| {
            matches!(
                kind.as_str(),
                "TransferCompleted" | "TransferFailed" | "TransferRefunded"
            )
        }) {
            return types;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("transfer {id} never ended");
}

/// The transfer legs of account `id`: (kind, amount, balance after).
async fn legs(app: &TestApp, id: &str) -> Vec<(String, String, String)> {
    stream(app, id)
        .await
        .iter()
        .filter(|event| event["data"]["transfer_id"].is_string())
        .map(|event| {
            let text = |field: &str| event["data"][field].as_str().unwrap_or_default().to_owned();
            (text("kind"), text("amount"), text("balance"))
        })
        .collect()
}

async fn balance(app: &TestApp, id: &str) -> String {
    let events = stream(app, id).await;
    let last = events
        .iter()
        .rev()
        .find_map(|event| {
            event["data"]["balance"]
                .as_str()
                .or(event["data"]["initial_balance"].as_str())
        })
        .unwrap_or_default();
    last.to_owned()
}

async fn transfer(api: &Api, from: &str, to: &str, amount: &str) -> Value {
    api.post(
        "/transfers",
        &json!({"from": from, "to": to, "amount": amount}),
    )
    .await
    .expect(202, "transfer")
}

#[tokio::test]
async fn a_transfer_between_two_active_accounts_completes_once() {
    // Given two active accounts
    let app = spawn_app().await;
    let from = app.active_account("100.00", "MAD").await;
    let to = app.active_account("5.00", "MAD").await;

    // When the admin transfers 25.00 from one to the other
    let reply = app
        .admin()
        .post(
            "/transfers",
            &json!({"from": from, "to": to, "amount": "25.00", "currency": "MAD",
                    "reference": "rent"}),
        )
        .await;

    // Then it is PENDING at once, and soon COMPLETED: the source debited once, the
    // destination credited once, each leg marked with the transfer
    let body = reply.expect(202, "transfer");
    assert_eq!(body["status"], "PENDING");
    assert_eq!(body["amount"], "25.00");
    assert_eq!(body["currency"], "MAD");
    assert_eq!(body["reference"], "rent");
    assert_eq!(body["reason"], Value::Null);
    assert_eq!(body["created_at"], body["updated_at"]);
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let types = ended(&app, &id).await;
    assert_eq!(
        types,
        ["TransferRequested", "TransferDebited", "TransferCompleted"]
    );
    assert_eq!(
        legs(&app, &from).await,
        [("TRANSFER_OUT".into(), "25.00".into(), "75.00".into())]
    );
    assert_eq!(
        legs(&app, &to).await,
        [("TRANSFER_IN".into(), "25.00".into(), "30.00".into())]
    );
    let leg = stream(&app, &to).await.pop().unwrap_or_default();
    assert_eq!(leg["data"]["transfer_id"], id.as_str());
    assert_eq!(leg["metadata"]["actor"]["sub"], "admin");
}

#[tokio::test]
async fn a_source_without_the_funds_or_not_active_fails_the_transfer_and_nothing_moves() {
    let app = spawn_app().await;
    let poor = app.active_account("10.00", "MAD").await;
    let suspended = app.active_account("100.00", "MAD").await;
    app.admin()
        .post(&format!("/accounts/{suspended}/suspend"), &json!({}))
        .await
        .expect(200, "suspend");
    let to = app.active_account("0.00", "MAD").await;

    for (from, reason) in [(&poor, "insufficient_funds"), (&suspended, "invalid_state")] {
        // When a transfer asks for more than the source can give
        let id = transfer(app.admin(), from, &to, "10.01").await["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        // Then it fails with the source's refusal as the reason, and no leg exists
        assert_eq!(
            ended(&app, &id).await,
            ["TransferRequested", "TransferFailed"]
        );
        let failed = stream(&app, &id).await.pop().unwrap_or_default();
        assert_eq!(failed["data"]["reason"], reason);
        assert!(legs(&app, from).await.is_empty());
    }
    assert!(legs(&app, &to).await.is_empty());
    assert_eq!(balance(&app, &to).await, "0.00");
}

#[tokio::test]
async fn a_destination_that_refuses_the_credit_gets_nothing_and_the_source_is_refunded() {
    let app = spawn_app().await;
    let admin = app.admin();
    let closed = app.active_account("0.00", "MAD").await;
    admin
        .post(&format!("/accounts/{closed}/close"), &json!({}))
        .await
        .expect(200, "close");
    let suspended = app.active_account("0.00", "MAD").await;
    admin
        .post(&format!("/accounts/{suspended}/suspend"), &json!({}))
        .await
        .expect(200, "suspend");
    let euros = app.active_account("0.00", "EUR").await;
    let full = app.active_account("1000000000000.00", "MAD").await;
    let path = format!("/accounts/{full}/credit");
    let most = json!({"amount": "1000000000000"});
    for _ in 0..62 {
        let credits = (0..16).map(|_| admin.post(&path, &most));
        for credit in futures::future::join_all(credits).await {
            credit.expect(200, "credit");
        }
    }
    for _ in 0..(998 - 62 * 16) {
        admin.post(&path, &most).await.expect(200, "credit");
    }
    // Given an account 39.00 short of the balance limit
    admin
        .post(&path, &json!({"amount": "999999999961"}))
        .await
        .expect(200, "credit");

    let from = app.active_account("100.00", "MAD").await;
    for (to, reason) in [
        (&closed, "invalid_state"),
        (&suspended, "invalid_state"),
        (&euros, "currency_mismatch"),
        (&full, "balance_limit_exceeded"),
    ] {
        let id = transfer(admin, &from, to, "40.00").await["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            ended(&app, &id).await,
            ["TransferRequested", "TransferDebited", "TransferRefunded"],
            "to {reason}"
        );
        let refunded = stream(&app, &id).await.pop().unwrap_or_default();
        assert_eq!(refunded["data"]["reason"], reason);
        assert!(legs(&app, to).await.is_empty());
    }
    // The source was debited and refunded four times, and holds what it held
    let source_legs = legs(&app, &from).await;
    assert_eq!(source_legs.len(), 8);
    for pair in source_legs.chunks(2) {
        assert_eq!(pair[0].0, "TRANSFER_OUT");
        assert_eq!(pair[1].0, "TRANSFER_REFUND");
    }
    assert_eq!(balance(&app, &from).await, "100.00");
}

#[tokio::test]
async fn requests_that_cannot_be_a_transfer_are_refused_at_once_and_change_nothing() {
    let app = spawn_app().await;
    let from = app.active_account("100.00", "MAD").await;
    let to = app.active_account("0.00", "MAD").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let admin = app.admin();
    let cases = [
        (
            json!({"from": from, "to": from, "amount": "1.00"}),
            422,
            "same_account",
        ),
        (
            json!({"from": from, "to": unknown, "amount": "1.00"}),
            404,
            "not_found",
        ),
        (
            json!({"from": unknown, "to": to, "amount": "1.00"}),
            404,
            "not_found",
        ),
        (
            json!({"from": from, "to": to, "amount": "1.00", "currency": "EUR"}),
            422,
            "currency_mismatch",
        ),
        (
            json!({"from": from, "to": to, "amount": "1.001"}),
            400,
            "invalid_request",
        ),
        (
            json!({"from": from, "to": to, "amount": "0"}),
            400,
            "invalid_request",
        ),
        (
            json!({"from": from, "to": to, "amount": "-5"}),
            400,
            "invalid_request",
        ),
        (
            json!({"from": from, "to": to, "amount": "1.00", "reference": "x".repeat(141)}),
            400,
            "invalid_request",
        ),
        (
            json!({"from": from, "to": to, "amount": "1.00", "surprise": 1}),
            400,
            "invalid_request",
        ),
        (
            json!({"from": "nope", "to": to, "amount": "1.00"}),
            400,
            "invalid_request",
        ),
        (json!({"to": to, "amount": "1.00"}), 400, "invalid_request"),
    ];
    for (body, status, code) in cases {
        admin
            .post("/transfers", &body)
            .await
            .assert_problem(status, code);
    }

    // A customer transfers from its own accounts only: another's is unknown to it
    let alice = app.as_caller(Some(&customer_token("alice")));
    let mine = alice
        .post(
            "/accounts",
            &json!({"initial_balance": "10.00", "currency": "MAD"}),
        )
        .await
        .expect(201, "open")["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    alice
        .post(
            "/transfers",
            &json!({"from": from, "to": mine, "amount": "1.00"}),
        )
        .await
        .assert_problem(404, "not_found");
    let reader = app.as_caller(Some(&test_support::auth::token("bob", "accounts:read")));
    reader
        .post(
            "/transfers",
            &json!({"from": from, "to": to, "amount": "1.00"}),
        )
        .await
        .assert_problem(403, "forbidden");

    // Nothing was written but the accounts
    let types: Vec<String> = app
        .all_events()
        .await
        .iter()
        .filter_map(|event| event["type"].as_str().map(str::to_owned))
        .collect();
    assert!(
        types.iter().all(|kind| kind.starts_with("Account")),
        "{types:?}"
    );
}

#[tokio::test]
async fn a_repeated_request_is_one_transfer_and_its_first_answer() {
    let app = spawn_app().await;
    let from = app.active_account("100.00", "MAD").await;
    let to = app.active_account("0.00", "MAD").await;
    let body = json!({"from": from, "to": to, "amount": "30.00"});
    let key = [("Idempotency-Key", "pay-rent-december")];

    let first = app
        .admin()
        .post_with_headers("/transfers", &body, &key)
        .await;
    let again = app
        .admin()
        .post_with_headers("/transfers", &body, &key)
        .await;
    assert_eq!((first.status, again.status), (202, 202));
    assert_eq!(first.body, again.body);
    let other = json!({"from": from, "to": to, "amount": "31.00"});
    app.admin()
        .post_with_headers("/transfers", &other, &key)
        .await
        .assert_problem(422, "idempotency_key_reused");

    let id = first.body["id"].as_str().unwrap_or_default().to_owned();
    ended(&app, &id).await;
    assert_eq!(legs(&app, &from).await.len(), 1);
    assert_eq!(balance(&app, &from).await, "70.00");
    assert_eq!(balance(&app, &to).await, "30.00");
}

#[tokio::test]
async fn a_transfer_id_is_no_account() {
    let app = spawn_app().await;
    let from = app.active_account("100.00", "MAD").await;
    let to = app.active_account("0.00", "MAD").await;
    let id = transfer(app.admin(), &from, &to, "1.00").await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.expect_problem(
        &format!("/accounts/{id}/credit"),
        json!({"amount": "1"}),
        404,
        "not_found",
    )
    .await;
    app.expect_problem(
        "/accounts",
        json!({"id": id, "initial_balance": "1", "currency": "MAD"}),
        409,
        "account_exists",
    )
    .await;
}

#[tokio::test]
async fn transfers_requested_while_no_process_leads_are_driven_by_the_next_leader() {
    use sqlx::Connection;

    // Given another process holding the transfer process's lead before the service starts
    let database_url = crate::helpers::fresh_database_url();
    <sqlx::Postgres as sqlx::migrate::MigrateDatabase>::create_database(&database_url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let mut other = sqlx::PgConnection::connect(&database_url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let led: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(7305954634617839619)")
        .fetch_one(&mut other)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(led, "the test took the lead");
    let app = crate::helpers::spawn_app_on(
        &database_url,
        &crate::helpers::fresh_exchange(),
        &test_support::servers::amqp_url(),
    )
    .await;
    let from = app.active_account("100.00", "MAD").await;
    let to = app.active_account("0.00", "MAD").await;

    // When transfers are requested, nothing drives them
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = transfer(app.admin(), &from, &to, "10.00").await["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(legs(&app, &from).await.is_empty());

    // Then once the lead is free, the service's process takes it and ends every one
    other
        .close()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    for id in &ids {
        assert_eq!(
            ended(&app, id).await,
            ["TransferRequested", "TransferDebited", "TransferCompleted"]
        );
    }
    assert_eq!(balance(&app, &from).await, "70.00");
    assert_eq!(balance(&app, &to).await, "30.00");
}

#[tokio::test]
async fn a_refund_taken_but_not_recorded_ends_the_transfer_refunded_and_the_credit_is_never_tried()
{
    use shared_events::{LegKind, TransferId, TransferLeg};
    use sqlx::Connection;

    // Given a transfer whose source an earlier attempt debited and refunded (its
    // destination refused) without recording either, and whose idempotency records have
    // expired, while no process leads
    let database_url = crate::helpers::fresh_database_url();
    <sqlx::Postgres as sqlx::migrate::MigrateDatabase>::create_database(&database_url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let mut db = sqlx::PgConnection::connect(&database_url)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let led: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(7305954634617839619)")
        .fetch_one(&mut db)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(led);
    let app = crate::helpers::spawn_app_on(
        &database_url,
        &crate::helpers::fresh_exchange(),
        &test_support::servers::amqp_url(),
    )
    .await;
    let from = app.active_account("100.00", "MAD").await;
    let to = app.active_account("0.00", "MAD").await;
    let id = transfer(app.admin(), &from, &to, "40.00").await["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let transfer_id: TransferId = id.parse().unwrap_or_else(|error| panic!("{error}"));
    let leg = |kind| TransferLeg { transfer_id, kind }.event_id();
    let insert = "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)
                  VALUES ($1, $2::uuid, $3, $4, 1, $5, '{}'::jsonb, now())";
    let account_leg = |kind: &str, balance: &str| {
        json!({"amount": "40.00", "currency": "MAD", "balance": balance,
               "transfer_id": id, "kind": kind})
    };
    for (event_id, stream, version, kind, data) in [
        (
            leg(LegKind::TransferOut),
            &from,
            3_i64,
            "AccountDebited",
            account_leg("TRANSFER_OUT", "60.00"),
        ),
        (
            leg(LegKind::TransferRefund),
            &from,
            4,
            "AccountCredited",
            account_leg("TRANSFER_REFUND", "100.00"),
        ),
        (uuid::Uuid::now_v7(), &id, 2, "TransferDebited", json!({})),
    ] {
        sqlx::query(insert)
            .bind(event_id)
            .bind(stream)
            .bind(version)
            .bind(kind)
            .bind(data)
            .execute(&mut db)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }
    sqlx::query("UPDATE streams SET version = 4 WHERE stream_id = $1::uuid")
        .bind(&from)
        .execute(&mut db)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    sqlx::query("UPDATE streams SET version = 2 WHERE stream_id = $1::uuid")
        .bind(&id)
        .execute(&mut db)
        .await
        .unwrap_or_else(|error| panic!("{error}"));

    // When a process leads again (the destination would take a credit now)
    db.close().await.unwrap_or_else(|error| panic!("{error}"));

    // Then the transfer ends refunded, the destination is never credited, and the source
    // holds what it held
    assert_eq!(
        ended(&app, &id).await,
        ["TransferRequested", "TransferDebited", "TransferRefunded"]
    );
    let refunded = stream(&app, &id).await.pop().unwrap_or_default();
    assert_eq!(refunded["data"]["reason"], "destination_refused");
    assert!(legs(&app, &to).await.is_empty());
    assert_eq!(balance(&app, &from).await, "100.00");
}
