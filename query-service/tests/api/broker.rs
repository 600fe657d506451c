//! What the broker may do: duplicates, junk, reordering, lost messages, outages.

use std::time::Duration;

use serde_json::{Value, json};

use test_support::Broker;

use crate::helpers::{Options, TestApp, eventually, spawn_app, spawn_app_with};

/// Messages ready in the query service's projection queues (not yet delivered).
async fn ready_messages(app: &TestApp) -> u32 {
    let broker = Broker::connect().await;
    let mut ready = 0;
    for queue in app.settings.projection_queues() {
        ready += broker.depth(&queue).await.map_or(0, |depth| depth.messages);
    }
    broker.close().await;
    ready
}

#[tokio::test]
async fn duplicates_apply_once_and_junk_is_dead_lettered_without_blocking() {
    let app = spawn_app().await;
    let id = app.active_account("10.00", "MAD").await;
    app.command(&id, "credit", json!({"amount": "5.00"})).await;
    app.account_at(&id, 3).await;
    let events = app.stream(&id).await;

    let publisher = app.publisher().await;
    let mut invalid_credit = events[2].clone();
    invalid_credit["version"] = json!(4);
    invalid_credit["event_id"] = json!(uuid::Uuid::new_v4());
    invalid_credit["data"]["amount"] = json!("-5.00");
    let mut unknown_type = events[1].clone();
    unknown_type["type"] = json!("AccountTeleported");
    unknown_type["version"] = json!(4);
    let mut version_zero = events[1].clone();
    version_zero["version"] = json!(0);
    let mut other_currency = events[2].clone();
    other_currency["version"] = json!(4);
    other_currency["event_id"] = json!(uuid::Uuid::new_v4());
    other_currency["data"] = json!({"amount": "1.00", "currency": "EUR", "balance": "16.00"});
    let junk: Vec<Vec<u8>> = vec![
        b"not json at all".to_vec(),
        br#"{"hello": "world"}"#.to_vec(),
        serde_json::to_vec(&unknown_type).unwrap(),
        serde_json::to_vec(&invalid_credit).unwrap(),
        serde_json::to_vec(&version_zero).unwrap(),
        serde_json::to_vec(&other_currency).unwrap(),
    ];
    let duplicates_before = app
        .metric(
            "projection_events_total",
            &["outcome=\"duplicate\"", "path=\"broker\""],
        )
        .await;
    for round in 0..3 {
        for event in events.iter().rev() {
            publisher.publish_event(event).await;
        }
        publisher
            .publish("account.credited", &junk[round * 2], Some("junk"))
            .await;
        publisher
            .publish("account.credited", &junk[round * 2 + 1], None)
            .await;
    }
    // Wait until everything published was consumed: the junk dead-lettered, the nine
    // duplicates counted, nothing left in the queue. Only then may the read model be
    // judged, and only then does the next command's event meet a settled projection.
    let mut dead = app.await_dead_letters(junk.len()).await;
    let drained = eventually(Duration::from_secs(10), || async {
        let duplicates = app
            .metric(
                "projection_events_total",
                &["outcome=\"duplicate\"", "path=\"broker\""],
            )
            .await;
        duplicates - duplicates_before >= 9.0 && ready_messages(&app).await == 0
    })
    .await;
    assert!(drained, "the queue drains");
    let account = app.account_at(&id, 3).await;
    assert_eq!(
        (&account["version"], &account["balance"]),
        (&json!(3), &json!("15.00")),
        "neither the duplicates nor the junk changed the account"
    );

    let version = app.command(&id, "credit", json!({"amount": "1.00"})).await;
    let account = app.account_at(&id, version).await;
    assert_eq!(account["balance"], "16.00");
    assert_eq!(account["version"], 4);

    let operations = app.query_get(&format!("/accounts/{id}/operations")).await;
    let operations = operations.body["operations"].as_array().unwrap().clone();
    assert_eq!(
        operations
            .iter()
            .map(|o| (o["version"].as_u64().unwrap(), o["balance_after"].clone()))
            .collect::<Vec<_>>(),
        [(3, json!("15.00")), (4, json!("16.00"))]
    );

    dead.extend(app.dead_letters().await);
    dead.sort();
    let mut expected = junk.clone();
    expected.sort();
    assert_eq!(dead, expected, "exactly the junk is dead-lettered");
    assert!(
        app.metric("projection_dead_lettered_total", &[]).await >= junk.len() as f64,
        "poison messages are counted"
    );
    app.stop().await;
}

/// A query service that only gets what the test publishes: its exchange is not the
/// command service's, and it does not follow the feed.
fn isolated() -> Options {
    Options {
        shared_exchange: false,
        follow_feed: false,
        ..Options::default()
    }
}

#[tokio::test]
async fn a_gap_longer_than_one_statement_holds_is_filled_in_one_go() {
    let app = spawn_app_with(isolated()).await;
    let id = app.active_account("10.00", "MAD").await;
    // 9,000 credits of 1.00 straight into the command service's store: more rows than
    // one multi-row insert has placeholders for (65,535 / 8 columns).
    let last = 9_002_i64;
    let mut postgres = <sqlx::PgConnection as sqlx::Connection>::connect(&app.postgres_url)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)
         SELECT gen_random_uuid(), $1::uuid, v, 'AccountCredited', 1,
                jsonb_build_object('amount', '1.00', 'currency', 'MAD',
                                   'balance', (10 + v - 2)::text || '.00'),
                '{\"correlation_id\": null, \"causation_id\": null, \"idempotency_key\": null}'::jsonb,
                now()
           FROM generate_series(3::bigint, $2::bigint) AS v",
    )
    .bind(&id)
    .bind(last)
    .execute(&mut postgres)
    .await
    .unwrap();
    let events = app.stream(&id).await;
    assert_eq!(events.len(), 9_002);

    app.publisher().await.publish_event(&events[9_001]).await;
    let account = app.account_at(&id, 9_002).await;
    assert_eq!(account["balance"], "9010.00");
}

#[tokio::test]
async fn a_gap_is_filled_from_the_command_service_before_the_event() {
    let app = spawn_app_with(isolated()).await;
    let id = app.active_account("10.00", "EUR").await;
    app.command(&id, "credit", json!({"amount": "1.00"})).await;
    app.command(&id, "debit", json!({"amount": "2.00"})).await;
    let events = app.stream(&id).await;
    assert_eq!(events.len(), 4);
    let publisher = app.publisher().await;

    publisher.publish_event(&events[0]).await;
    assert_eq!(app.account_at(&id, 1).await["status"], "CREATED");

    publisher.publish_event(&events[2]).await;
    let account = app.account_at(&id, 3).await;
    assert_eq!(account["status"], "ACTIVE", "version 2 was filled in first");
    assert_eq!(account["version"], 4, "the whole stream was fetched");
    assert_eq!(account["balance"], "9.00");
    publisher.publish_event(&events[1]).await;
    publisher.publish_event(&events[3]).await;

    let operations = app.query_get(&format!("/accounts/{id}/operations")).await;
    assert_eq!(
        operations.body["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["event_id"].clone())
            .collect::<Vec<_>>(),
        [events[2]["event_id"].clone(), events[3]["event_id"].clone()]
    );
    assert!(
        app.metric("projection_backfilled_events_total", &[]).await >= 2.0,
        "backfilled events are counted"
    );

    // What the command service does not have can never be applied.
    let mut beyond = events[3].clone();
    beyond["version"] = json!(9);
    beyond["event_id"] = json!(uuid::Uuid::new_v4());
    publisher.publish_event(&beyond).await;
    let mut stranger = events[1].clone();
    stranger["account_id"] = json!(uuid::Uuid::new_v4());
    stranger["version"] = json!(2);
    publisher.publish_event(&stranger).await;
    let dead = app.await_dead_letters(2).await;
    let dead: Vec<Value> = dead
        .iter()
        .map(|body| serde_json::from_slice(body).unwrap())
        .collect();
    assert!(dead.contains(&beyond) && dead.contains(&stranger));
    assert_eq!(app.account_at(&id, 4).await["version"], 4);
    app.stop().await;
}

#[tokio::test]
async fn a_burst_in_any_order_ends_in_the_same_state() {
    let app = spawn_app_with(isolated()).await;
    let mut ids = Vec::new();
    let mut all = Vec::new();
    for currency in ["MAD", "EUR", "JPY"] {
        let id = app.active_account("100", currency).await;
        for amount in ["1", "2", "3"] {
            app.command(&id, "credit", json!({"amount": amount})).await;
        }
        app.command(&id, "debit", json!({"amount": "50"})).await;
        all.extend(app.stream(&id).await);
        ids.push(id);
    }
    let publisher = app.publisher().await;
    // Newest first, twice: almost every message opens a gap or is a duplicate.
    for _ in 0..2 {
        for event in all.iter().rev() {
            publisher.publish_event(event).await;
        }
    }
    for (id, balance) in ids.iter().zip(["56.00", "56.00", "56"]) {
        let account = app.account_at(id, 6).await;
        assert_eq!(account["balance"], balance);
        let operations = app.query_get(&format!("/accounts/{id}/operations")).await;
        assert_eq!(operations.body["operations"].as_array().unwrap().len(), 4);
    }
    assert!(app.dead_letters().await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_feed_follower_catches_events_the_broker_never_delivered() {
    let app = spawn_app_with(Options {
        shared_exchange: false,
        follow_feed: true,
        feed_poll_ms: 100,
        ..Options::default()
    })
    .await;
    let id = app.active_account("3.00", "USD").await;
    let version = app.command(&id, "debit", json!({"amount": "1.00"})).await;
    let account = app.account_at(&id, version).await;
    assert_eq!(account["balance"], "2.00");
    let second = app.create("4.00", "USD").await;
    app.account_at(&second, 1).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            let mut mysql = app.mysql().await;
            let position: i64 = sqlx::query_scalar(
                "SELECT position FROM projection_checkpoint WHERE name = 'feed'",
            )
            .fetch_one(&mut mysql)
            .await
            .unwrap();
            position >= 4
        })
        .await,
        "the checkpoint follows the feed"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_feed_follower_passes_over_what_the_broker_delivered_without_applying_it_again() {
    let app = spawn_app_with(Options {
        follow_feed: true,
        feed_poll_ms: 1500,
        ..Options::default()
    })
    .await;
    let id = app.active_account("3.00", "USD").await;
    app.command(&id, "credit", json!({"amount": "1.00"})).await;
    let version = app.command(&id, "credit", json!({"amount": "1.00"})).await;
    assert_eq!(app.account_at(&id, version).await["balance"], "5.00");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let mut mysql = app.mysql().await;
            let position: i64 = sqlx::query_scalar(
                "SELECT position FROM projection_checkpoint WHERE name = 'feed'",
            )
            .fetch_one(&mut mysql)
            .await
            .unwrap();
            position >= 4
        })
        .await,
        "the follower read the whole feed"
    );
    let mut mysql = app.mysql().await;
    let recorded: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM account_versions WHERE account_id = ?")
            .bind(&id)
            .fetch_one(&mut mysql)
            .await
            .unwrap();
    assert_eq!(recorded, 4);
    let operations = app.query_get(&format!("/accounts/{id}/operations")).await;
    assert_eq!(operations.body["operations"].as_array().unwrap().len(), 2);
    assert_eq!(app.account_at(&id, version).await["balance"], "5.00");
    app.stop().await;
}
