//! `query-service rebuild`: the same read model from the global feed, swapped in at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use sqlx::Executor;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Options, TestApp, eventually, spawn_app, spawn_app_with};

async fn some_history(app: &TestApp) -> Vec<(String, u64)> {
    let mut accounts = Vec::new();
    for (currency, balance) in [("MAD", "100.00"), ("JPY", "500"), ("KWD", "1.250")] {
        let id = app.active_account(balance, currency).await;
        app.command(&id, "credit", json!({"amount": "1"})).await;
        let version = app.command(&id, "debit", json!({"amount": "1"})).await;
        accounts.push((id, version));
    }
    let suspended = app.active_account("7.00", "EUR").await;
    let version = app
        .command(&suspended, "suspend", json!({"reason": null}))
        .await;
    accounts.push((suspended, version));
    let closed = app.active_account("0", "EUR").await;
    let version = app.command(&closed, "close", json!({})).await;
    accounts.push((closed, version));
    let created = app.create("3.00", "USD").await;
    accounts.push((created, 1));
    for (id, version) in &accounts {
        app.account_at(id, *version).await;
    }
    accounts
}

#[tokio::test]
async fn rebuild_reproduces_the_live_read_model_exactly() {
    let app = spawn_app().await;
    let accounts = some_history(&app).await;
    let live = app.snapshot().await;
    assert_eq!(live["accounts"].as_array().unwrap().len(), accounts.len());

    // Damage the live model: the rebuild must not depend on it.
    let mut mysql = app.mysql().await;
    mysql.execute("DELETE FROM operations").await.unwrap();
    mysql
        .execute("UPDATE accounts SET balance = 0, status = 'CLOSED'")
        .await
        .unwrap();
    assert_ne!(app.snapshot().await, live);

    let report = query_service::rebuild::run(&app.settings, CancellationToken::new())
        .await
        .unwrap();
    let feed_length = app.command_get("/events?limit=1000").await["events"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert_eq!((report.events, report.applied), (feed_length, feed_length));
    assert_eq!(report.position, feed_length);
    assert_eq!(app.snapshot().await, live);

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() \
         AND (table_name LIKE '%\\_old' OR table_name LIKE '%\\_rebuild')",
    )
    .fetch_all(&mut mysql)
    .await
    .unwrap();
    assert!(tables.is_empty(), "leftover tables: {tables:?}");

    // The swapped tables carry statistics of their rows, not those of the empty tables
    // they were created as (which make MySQL scan a whole table for a page's reads).
    let counted: Vec<(String, u64)> = sqlx::query_as(
        "SELECT table_name, n_rows FROM mysql.innodb_table_stats WHERE database_name = DATABASE() \
         AND table_name IN ('accounts', 'account_versions', 'operations')",
    )
    .fetch_all(&mut mysql)
    .await
    .unwrap();
    assert_eq!(counted.len(), 3, "statistics: {counted:?}");
    assert!(
        counted.iter().all(|(_, rows)| *rows > 0),
        "statistics: {counted:?}"
    );

    // The live projection goes on over the swapped tables.
    let (id, version) = &accounts[0];
    let next = app.command(id, "credit", json!({"amount": "2.50"})).await;
    assert_eq!(next, version + 1);
    assert_eq!(app.account_at(id, next).await["balance"], "102.50");
    app.stop().await;
}

/// The position of the newest event of the command service's global feed.
#[expect(
    clippy::unwrap_used,
    reason = "test helper: a failure is the test's failure"
)]
async fn feed_head(app: &TestApp) -> u64 {
    let mut head = 0;
    loop {
        let page = app
            .command_get(&format!("/events?after={head}&limit=1000"))
            .await;
        let next = page["next_after"].as_u64().unwrap();
        if page["events"].as_array().unwrap().is_empty() || next == head {
            return head;
        }
        head = next;
    }
}

#[tokio::test]
async fn events_committed_during_a_rebuild_reach_the_new_model() {
    let app = spawn_app_with(Options {
        feed_poll_ms: 100,
        ..Options::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.active_account("0", "MAD").await);
    }
    // Credits go on until the rebuild is over (at most 400 per account: one page of
    // operations).
    let rebuilt = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicUsize::new(0));
    let writer = {
        let ids = ids.clone();
        let command = app.command.clone();
        let client = app.client.clone();
        let (rebuilt, commits) = (Arc::clone(&rebuilt), Arc::clone(&commits));
        tokio::spawn(async move {
            let mut last = vec![2_u64; ids.len()];
            for _ in 0..400 {
                if rebuilt.load(Ordering::SeqCst) {
                    break;
                }
                for (index, id) in ids.iter().enumerate() {
                    let reply: serde_json::Value = client
                        .post(format!("{command}/accounts/{id}/credit"))
                        .bearer_auth(test_support::auth::admin_token())
                        .json(&json!({"amount": "1.00"}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    last[index] = reply["version"].as_u64().unwrap();
                    commits.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            last
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            commits.load(Ordering::SeqCst) >= 3
        })
        .await,
        "the writer is under way"
    );
    // A rebuild of this small feed can be quicker than one credit: rebuild again until
    // commits landed while one ran.
    let mut overlapped = false;
    for _ in 0..10 {
        let started_at = feed_head(&app).await;
        query_service::rebuild::run(&app.settings, CancellationToken::new())
            .await
            .unwrap();
        let ended_at = feed_head(&app).await;
        if ended_at > started_at {
            overlapped = true;
            break;
        }
    }
    rebuilt.store(true, Ordering::SeqCst);
    let last = writer.await.unwrap();
    assert!(overlapped, "no commit landed while any of ten rebuilds ran");
    for (id, version) in ids.iter().zip(last) {
        let credits = version - 2;
        let account = app.account_at(id, version).await;
        assert_eq!(account["version"], version);
        assert_eq!(account["balance"], format!("{credits}.00"));
        let operations = app
            .query_get(&format!("/accounts/{id}/operations?limit=500"))
            .await;
        assert_eq!(
            operations.body["operations"].as_array().unwrap().len() as u64,
            credits
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_second_rebuild_at_the_same_time_is_refused() {
    let app = spawn_app().await;
    let mut lock = app.mysql().await;
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(CONCAT('query-service-rebuild:', DATABASE()), 0)")
            .fetch_one(&mut lock)
            .await
            .unwrap();
    assert_eq!(locked, Some(1));
    let error = query_service::rebuild::run(&app.settings, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("another rebuild"), "{error}");
    drop(lock);
    app.stop().await;
}

/// A stream written by the release before owners existed (`AccountCreated` at schema
/// version 1, no actor), stored byte for byte as it was, beside new ones.
#[expect(
    clippy::unwrap_used,
    reason = "test helper: a failure is the test's failure"
)]
async fn store_a_version_1_stream(app: &TestApp) -> String {
    let id = uuid::Uuid::now_v7();
    let mut postgres = <sqlx::PgConnection as sqlx::Connection>::connect(&app.postgres_url)
        .await
        .unwrap();
    sqlx::query("INSERT INTO streams (stream_id, version) VALUES ($1, 3)")
        .bind(id)
        .execute(&mut postgres)
        .await
        .unwrap();
    let events = [
        (
            "AccountCreated",
            json!({"initial_balance": "40.00", "currency": "MAD"}),
        ),
        ("AccountActivated", json!({})),
        (
            "AccountCredited",
            json!({"amount": "2.00", "currency": "MAD", "balance": "42.00"}),
        ),
    ];
    for (version, (kind, data)) in (1_i64..).zip(events) {
        sqlx::query(
            "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, \
             data, metadata, occurred_at) VALUES ($1, $2, $3, $4, 1, $5, $6, now())",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(id)
        .bind(version)
        .bind(kind)
        .bind(data)
        .bind(json!({"correlation_id": "v1", "causation_id": null, "idempotency_key": null}))
        .execute(&mut postgres)
        .await
        .unwrap();
    }
    id.to_string()
}

#[tokio::test]
async fn rebuild_reads_a_feed_that_mixes_streams_of_both_schema_versions() {
    // Given a version-1 stream from before owners existed, and a customer's account
    let app = spawn_app().await;
    let old = store_a_version_1_stream(&app).await;
    let customer = test_support::auth::customer_token("carol");
    let owned = test_support::Api::new(&app.command)
        .with_token(customer.clone())
        .post(
            "/accounts",
            &json!({"initial_balance": "5.00", "currency": "MAD"}),
        )
        .await
        .expect(201, "a customer opens an account")["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // When the read model is rebuilt from the feed
    query_service::rebuild::run(&app.settings, CancellationToken::new())
        .await
        .unwrap();

    // Then the old account is there with no owner (admins only), the new one is its
    // owner's, and the old events are still as they were stored
    let as_admin = app
        .query_get(&format!("/accounts/{old}"))
        .await
        .expect(200, "admin");
    assert_eq!(
        (as_admin["version"].as_u64(), as_admin["balance"].as_str()),
        (Some(3), Some("42.00"))
    );
    app.query_as(Some(&customer), &format!("/accounts/{old}"))
        .await
        .assert_problem(404, "not_found");
    app.query_as(Some(&customer), &format!("/accounts/{owned}"))
        .await
        .expect(200, "the owner reads its account");
    let stored = app.command_get(&format!("/accounts/{old}/events")).await;
    assert_eq!(stored["events"][0]["schema_version"], 1);
    assert_eq!(
        stored["events"][0]["data"],
        json!({"initial_balance": "40.00", "currency": "MAD"})
    );
}

#[tokio::test]
async fn rebuild_projects_a_stream_that_cannot_go_on_apart_and_the_pages_after_it_still_add_up() {
    // Given three accounts over three pages of the feed, the first of which has a
    // credit it cannot take (in euros) at version 100, on the first page
    let app = spawn_app().await;
    let credits = 900;
    let ids = store_interleaved_histories(&app, 3, credits, Some((1, 100))).await;

    // When the read model is rebuilt
    let report = query_service::rebuild::run(&app.settings, CancellationToken::new())
        .await
        .unwrap();

    // Then the first account stops before that credit and every event of it from there
    // on is skipped, while the others are carried to their last version
    assert_eq!(
        (report.events, report.applied, report.skipped),
        (2706, 2706 - 803, 803)
    );
    let expected = [(99, "197.00"), (902, "1000.00"), (902, "1000.00")];
    for (id, (version, balance)) in ids.iter().zip(expected) {
        let account = app
            .query_get(&format!("/accounts/{id}"))
            .await
            .expect(200, "rebuilt account");
        assert_eq!(
            (account["version"].as_u64(), account["balance"].as_str()),
            (Some(version), Some(balance))
        );
    }
}

/// Stores, straight into the event store, `accounts` accounts of 100.00 MAD each credited
/// 1.00 `credits` times, their events interleaved in the feed; returns their ids. The
/// credit at version `impossible.1` of the account numbered `impossible.0` (from 1) is in
/// euros, which its account cannot take.
#[expect(
    clippy::unwrap_used,
    reason = "test helper: a failure is the test's failure"
)]
async fn store_interleaved_histories(
    app: &TestApp,
    accounts: usize,
    credits: i64,
    impossible: Option<(i64, i64)>,
) -> Vec<String> {
    let ids: Vec<uuid::Uuid> = (0..accounts).map(|_| uuid::Uuid::now_v7()).collect();
    let mut postgres = <sqlx::PgConnection as sqlx::Connection>::connect(&app.postgres_url)
        .await
        .unwrap();
    sqlx::query("INSERT INTO streams (stream_id, version) SELECT unnest($1::uuid[]), $2")
        .bind(&ids)
        .bind(credits + 2)
        .execute(&mut postgres)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, \
         metadata, occurred_at)
         SELECT gen_random_uuid(), s.id, v,
                CASE v WHEN 1 THEN 'AccountCreated' WHEN 2 THEN 'AccountActivated' ELSE 'AccountCredited' END,
                1,
                CASE v WHEN 1 THEN '{\"initial_balance\": \"100.00\", \"currency\": \"MAD\"}'::jsonb
                       WHEN 2 THEN '{}'::jsonb
                       ELSE jsonb_build_object('amount', '1.00',
                                               'currency', CASE WHEN (s.n, v) = ($3, $4) THEN 'EUR' ELSE 'MAD' END,
                                               'balance', to_char(98 + v, 'FM999999990.00')) END,
                '{\"correlation_id\": \"pages\", \"causation_id\": null, \"idempotency_key\": null}'::jsonb,
                now()
           FROM generate_series(1, $2 + 2) AS v, unnest($1::uuid[]) WITH ORDINALITY AS s (id, n)
          ORDER BY v, s.n",
    )
    .bind(&ids)
    .bind(credits)
    .bind(impossible.map_or(0, |(account, _)| account))
    .bind(impossible.map_or(0, |(_, version)| version))
    .execute(&mut postgres)
    .await
    .unwrap();
    ids.iter().map(uuid::Uuid::to_string).collect()
}

#[tokio::test]
async fn rebuild_carries_each_account_from_page_to_page_of_the_feed() {
    // Given three accounts whose histories run over three pages of the feed (1,000
    // events a page), interleaved
    let app = spawn_app().await;
    let credits = 900;
    let ids = store_interleaved_histories(&app, 3, credits, None).await;

    // When the read model is rebuilt
    let report = query_service::rebuild::run(&app.settings, CancellationToken::new())
        .await
        .unwrap();

    // Then every event is applied, and each account ends at its last version and
    // balance with one operation per credit
    assert_eq!((report.events, report.applied), (2706, 2706));
    let mut mysql = app.mysql().await;
    for id in &ids {
        let account = app
            .query_get(&format!("/accounts/{id}"))
            .await
            .expect(200, "rebuilt account");
        assert_eq!(
            (account["version"].as_u64(), account["balance"].as_str()),
            (Some(902), Some("1000.00"))
        );
        let operations: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM operations WHERE account_id = ? AND type = 'CREDIT'",
        )
        .bind(id)
        .fetch_one(&mut mysql)
        .await
        .unwrap();
        assert_eq!(operations, credits);
    }
}
