//! Answers that never lie about an outcome (`outcome_unknown`), a stream written by
//! the release before identities, and what the relay tells the broker about itself.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;
use test_support::auth::{customer_token, token};
use test_support::servers::{Server, amqp_url};
use test_support::{TcpProxy, names};

use crate::helpers::{
    TestApp, bind_queue, fresh_database_url, fresh_exchange, spawn_app, spawn_app_on,
    spawn_app_with_settings, test_settings,
};

/// A connection of the test's own holding the `streams` row of account `id` locked,
/// so that an append to it waits inside its transaction.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn lock_stream(database_url: &str, id: &str) -> sqlx::PgConnection {
    let mut holder = sqlx::PgConnection::connect(database_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM streams WHERE stream_id = $1::uuid FOR UPDATE")
        .bind(id)
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}

/// Waits until `count` sessions of the database wait on a lock.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn wait_for_lock_waiters(database_url: &str, count: i64) {
    let mut observer = sqlx::PgConnection::connect(database_url).await.unwrap();
    for _ in 0..250 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut observer)
        .await
        .unwrap();
        if waiting >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no append ever waited on the locked stream");
}

/// The events of account `id`, as the admin reads them.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn stream_of(app: &TestApp, id: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/accounts/{id}/events")).await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_connection_broken_during_the_append_answers_outcome_unknown_and_a_retry_tells_the_truth()
{
    let proxy = TcpProxy::to(Server::Postgres).await;
    let database = names::fresh_database("cs_test");
    let direct_url = test_support::servers::postgres_url(&database);
    let app = spawn_app_on(
        &format!("{}/{database}", proxy.url()),
        &fresh_exchange(),
        &amqp_url(),
    )
    .await;
    let id = app.active_account("10.00", "MAD").await;
    let credit = format!("/accounts/{id}/credit");

    let mut holder = lock_stream(&direct_url, &id).await;
    let waiting = keyed_credit_in_background(&app, &credit, "2.50", "k-cut");
    wait_for_lock_waiters(&direct_url, 1).await;
    proxy.cut();
    let answer = waiting.await.unwrap();
    answer.assert_problem(503, "outcome_unknown");

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    proxy.restore();
    let mut retried = None;
    for _ in 0..50 {
        let reply = app
            .admin()
            .post_with_headers(
                &credit,
                &json!({"amount": "2.50"}),
                &[("Idempotency-Key", "k-cut")],
            )
            .await;
        if reply.status != 503 {
            retried = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retried = retried
        .expect("the retry never got through")
        .expect(200, "retry");
    assert_eq!(retried["version"], 3);
    assert_eq!(retried["balance"], "12.50");
    let events = stream_of(&app, &id).await;
    assert_eq!(events.len(), 3, "the credit is in the stream exactly once");
}

#[tokio::test]
async fn a_command_whose_caller_stopped_waiting_before_its_transaction_is_never_committed() {
    let database_url = fresh_database_url();
    let mut settings = test_settings(&database_url, &fresh_exchange(), &amqp_url());
    settings.command_timeout_secs = 1;
    let app = spawn_app_with_settings(settings).await;
    let id = app.active_account("10.00", "MAD").await;
    let credit = format!("/accounts/{id}/credit");

    // The first credit waits inside its transaction; the second waits behind it for
    // the account's writer, and its caller's deadline passes meanwhile.
    let mut holder = lock_stream(&database_url, &id).await;
    let first = keyed_credit_in_background(&app, &credit, "1.00", "first");
    wait_for_lock_waiters(&database_url, 1).await;
    let second = app
        .admin()
        .post_with_headers(
            &credit,
            &json!({"amount": "2.00"}),
            &[("Idempotency-Key", "second")],
        )
        .await;
    second.assert_problem(503, "outcome_unknown");
    first.await.unwrap().assert_problem(503, "outcome_unknown");
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    // The first commits once the lock is gone (its outcome was unknown, not refused);
    // the second is dropped: the writer sees its deadline passed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = stream_of(&app, &id).await;
    let amounts: Vec<&Value> = events[2..].iter().map(|e| &e["data"]["amount"]).collect();
    assert_eq!(
        amounts,
        [&json!("1.00")],
        "the abandoned credit was written"
    );

    let first = app
        .admin()
        .post_with_headers(
            &credit,
            &json!({"amount": "1.00"}),
            &[("Idempotency-Key", "first")],
        )
        .await
        .expect(200, "the first credit's retry");
    assert_eq!(
        (first["version"].clone(), first["balance"].clone()),
        (json!(3), json!("11.00"))
    );
    let second = app
        .admin()
        .post_with_headers(
            &credit,
            &json!({"amount": "2.00"}),
            &[("Idempotency-Key", "second")],
        )
        .await
        .expect(200, "the second credit's retry runs it now");
    assert_eq!(
        (second["version"].clone(), second["balance"].clone()),
        (json!(4), json!("13.00"))
    );
}

#[tokio::test]
async fn a_stream_stored_by_the_previous_release_is_replayed_and_only_an_admin_acts_on_it() {
    let database_url = fresh_database_url();
    event_store::EventStore::connect(&database_url, 1)
        .await
        .unwrap();
    let id = uuid::Uuid::now_v7();
    let mut db = sqlx::PgConnection::connect(&database_url).await.unwrap();
    // As the previous release wrote them: AccountCreated at schema version 1 (no
    // owner), metadata without actor, and a schema-1 snapshot (no owner).
    let created = json!({"initial_balance": "10.00", "currency": "MAD"});
    let metadata =
        json!({"correlation_id": "legacy", "causation_id": "c1", "idempotency_key": null});
    for (version, kind, data) in [
        (1_i64, "AccountCreated", created.clone()),
        (2, "AccountActivated", json!({})),
    ] {
        sqlx::query(
            "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)
             VALUES ($1, $2, $3, $4, 1, $5, $6, now())",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(id)
        .bind(version)
        .bind(kind)
        .bind(data)
        .bind(&metadata)
        .execute(&mut db)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO streams (stream_id, version, snapshot_version, snapshot_schema, snapshot)
         VALUES ($1, 2, 2, 1, $2)",
    )
    .bind(id)
    .bind(json!({"status": "ACTIVE", "balance": {"amount": "10.00", "currency": "MAD"}, "version": 2}))
    .execute(&mut db)
    .await
    .unwrap();

    let app = spawn_app_on(&database_url, &fresh_exchange(), &amqp_url()).await;
    let customer = app.as_caller(Some(&customer_token("alice")));
    customer
        .post(
            &format!("/accounts/{id}/credit"),
            &json!({"amount": "1.00"}),
        )
        .await
        .assert_problem(404, "not_found");
    customer
        .get(&format!("/accounts/{id}/events"))
        .await
        .assert_problem(404, "not_found");

    let credited = app
        .admin()
        .post(
            &format!("/accounts/{id}/credit"),
            &json!({"amount": "1.00"}),
        )
        .await
        .expect(200, "an admin credits the legacy account");
    assert_eq!(
        (credited["version"].clone(), credited["balance"].clone()),
        (json!(3), json!("11.00"))
    );
    let snapshot_schema: i32 =
        sqlx::query_scalar("SELECT snapshot_schema FROM streams WHERE stream_id = $1")
            .bind(id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(
        snapshot_schema, 2,
        "the snapshot is rewritten at the current schema"
    );
    let debited = app
        .admin()
        .post(&format!("/accounts/{id}/debit"), &json!({"amount": "0.50"}))
        .await
        .expect(200, "and then decided from the new snapshot");
    assert_eq!(debited["balance"], "10.50");

    let events = app
        .as_caller(Some(&token("auditor", "events:read")))
        .get(&format!("/accounts/{id}/events"))
        .await
        .expect(200, "events:read reads the legacy stream");
    let events = events["events"].as_array().unwrap();
    assert_eq!(
        events[0]["schema_version"], 1,
        "stored events stay as stored"
    );
    assert_eq!(events[0]["data"], created);
    assert_eq!(events[0]["metadata"].get("actor"), None);
    assert_eq!(events[2]["metadata"]["actor"]["sub"], "admin");
}

#[tokio::test]
async fn the_relay_names_its_broker_user_and_the_account_of_every_message() {
    let app = spawn_app().await;
    let mut subscription = bind_queue(&app.exchange).await;
    let id = app.active_account("1.00", "MAD").await;
    let broker_user = amqp_url()
        .parse::<lapin::uri::AMQPUri>()
        .unwrap()
        .authority
        .userinfo
        .username;
    let received = subscription.receive(2, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 2, "the account's two events arrive");
    for message in received {
        assert_eq!(message.user_id, Some(broker_user.clone()));
        assert_eq!(message.account_id.as_deref(), Some(id.as_str()));
    }
}

/// A credit with an idempotency key, sent by a task of its own so the test can act
/// while it waits.
fn keyed_credit_in_background(
    app: &TestApp,
    credit: &str,
    amount: &'static str,
    key: &'static str,
) -> tokio::task::JoinHandle<test_support::Reply> {
    let api = app.admin().clone();
    let credit = credit.to_owned();
    tokio::spawn(async move {
        api.post_with_headers(
            &credit,
            &json!({"amount": amount}),
            &[("Idempotency-Key", key)],
        )
        .await
    })
}
