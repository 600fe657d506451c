//! Commands through the command service, read back from the query service.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::http::assert_problem;

use crate::helpers::{eventually, spawn_app};

#[tokio::test]
async fn every_command_is_readable_at_its_version() {
    let app = spawn_app().await;
    let id = app.create("100.5", "MAD").await;
    let account = app.account_at(&id, 1).await;
    assert_eq!(account["status"], "CREATED");
    assert_eq!(account["balance"], "100.50");
    assert_eq!(account["currency"], "MAD");
    assert_eq!(account["version"], 1);
    assert_eq!(account["created_at"], account["updated_at"]);

    let steps = [
        ("activate", json!({}), "ACTIVE", "100.50"),
        ("credit", json!({"amount": "49.50"}), "ACTIVE", "150.00"),
        ("debit", json!({"amount": 150}), "ACTIVE", "0.00"),
        ("suspend", json!({"reason": "audit"}), "SUSPENDED", "0.00"),
        ("reactivate", json!({}), "ACTIVE", "0.00"),
        ("close", json!({}), "CLOSED", "0.00"),
    ];
    for (command, body, status, balance) in steps {
        let version = app.command(&id, command, body).await;
        let account = app.account_at(&id, version).await;
        assert_eq!(account["version"], version, "{command}");
        assert_eq!(account["status"], status, "{command}");
        assert_eq!(account["balance"], balance, "{command}");
    }

    let events = app.stream(&id).await;
    let account = app.query_get(&format!("/accounts/{id}")).await.body;
    assert_eq!(account["created_at"], events[0]["occurred_at"]);
    assert_eq!(account["updated_at"], events[6]["occurred_at"]);
    let created_at = account["created_at"].as_str().unwrap();
    assert!(created_at.ends_with('Z') && created_at.len() == "2026-11-22T10:00:00.123456Z".len());

    let operations = app
        .query_get(&format!("/accounts/{id}/operations"))
        .await
        .body;
    assert_eq!(operations["next"], Value::Null);
    let operations = operations["operations"].as_array().unwrap();
    assert_eq!(operations.len(), 2);
    for (operation, (event, kind, amount, after)) in operations.iter().zip([
        (&events[2], "CREDIT", "49.50", "150.00"),
        (&events[3], "DEBIT", "150.00", "0.00"),
    ]) {
        assert_eq!(operation["type"], kind);
        assert_eq!(operation["amount"], amount);
        assert_eq!(operation["balance_after"], after);
        assert_eq!(operation["currency"], "MAD");
        assert_eq!(operation["event_id"], event["event_id"]);
        assert_eq!(operation["version"], event["version"]);
        assert_eq!(operation["occurred_at"], event["occurred_at"]);
    }
    app.stop().await;
}

#[tokio::test]
async fn amounts_have_exactly_the_currency_fraction_digits() {
    let app = spawn_app().await;
    for (balance, currency, rendered, credit, after) in [
        ("7", "JPY", "7", "3", "10"),
        ("1.5", "KWD", "1.500", "0.001", "1.501"),
        ("0", "EUR", "0.00", "999999999999.99", "999999999999.99"),
    ] {
        let id = app.active_account(balance, currency).await;
        assert_eq!(app.account_at(&id, 2).await["balance"], rendered);
        app.command(&id, "credit", json!({"amount": credit})).await;
        assert_eq!(app.account_at(&id, 3).await["balance"], after);
        let operations = app.query_get(&format!("/accounts/{id}/operations")).await;
        assert_eq!(operations.body["operations"][0]["amount"], credit);
    }
    app.stop().await;
}

#[tokio::test]
async fn listing_filters_by_status_and_currency_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    let mut expected: Vec<(String, &str, &str)> = Vec::new();
    for (currency, activate) in [
        ("MAD", true),
        ("MAD", false),
        ("EUR", true),
        ("MAD", true),
        ("EUR", false),
        ("MAD", true),
        ("USD", true),
    ] {
        let id = app.create("10.00", currency).await;
        let status = if activate {
            app.command(&id, "activate", json!({})).await;
            "ACTIVE"
        } else {
            "CREATED"
        };
        app.account_at(&id, if activate { 2 } else { 1 }).await;
        expected.push((id, status, currency));
    }
    let ids = |filter: &dyn Fn(&(String, &str, &str)) -> bool| -> BTreeSet<String> {
        expected
            .iter()
            .filter(|e| filter(e))
            .map(|e| e.0.clone())
            .collect()
    };
    let listed = |accounts: Vec<Value>| -> Vec<String> {
        accounts
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = listed(app.all_accounts("").await);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "accounts come in id order");
    assert_eq!(all.iter().cloned().collect::<BTreeSet<_>>(), ids(&|_| true));
    assert_eq!(all.len(), 7, "no page repeats or skips an account");

    let active_mad = listed(app.all_accounts("&status=ACTIVE&currency=MAD").await);
    assert_eq!(
        active_mad.into_iter().collect::<BTreeSet<_>>(),
        ids(&|e| e.1 == "ACTIVE" && e.2 == "MAD")
    );
    let created = listed(app.all_accounts("&status=CREATED").await);
    assert_eq!(
        created.into_iter().collect::<BTreeSet<_>>(),
        ids(&|e| e.1 == "CREATED")
    );
    let eur = listed(app.all_accounts("&currency=EUR").await);
    assert_eq!(
        eur.into_iter().collect::<BTreeSet<_>>(),
        ids(&|e| e.2 == "EUR")
    );

    let first = app.query_get("/accounts?limit=7").await.body;
    assert_eq!(first["accounts"].as_array().unwrap().len(), 7);
    assert_eq!(first["next"], Value::Null, "a last full page has no next");
    let none = app.query_get("/accounts?currency=JPY").await.body;
    assert_eq!(none, json!({"accounts": [], "next": null}));

    for bad in [
        "limit=0",
        "limit=501",
        "limit=many",
        "status=OPEN",
        "currency=XXX",
        "currency=mad",
        "after=zzz",
        "colour=red",
    ] {
        let reply = app.query_get(&format!("/accounts?{bad}")).await;
        assert_problem(&reply, 400, "invalid_request");
    }
    let operations_cursor = app.query_get(&format!("/accounts?after=o{:016x}", 1)).await;
    assert_problem(&operations_cursor, 400, "invalid_request");
    app.stop().await;
}

#[tokio::test]
async fn operations_page_oldest_first() {
    let app = spawn_app().await;
    let id = app.active_account("0", "EUR").await;
    for cents in 1..=5 {
        app.command(&id, "credit", json!({"amount": format!("0.0{cents}")}))
            .await;
    }
    app.account_at(&id, 7).await;
    let mut seen = Vec::new();
    let mut path = format!("/accounts/{id}/operations?limit=2");
    loop {
        let page = app.query_get(&path).await;
        assert_eq!(page.status, 200);
        for operation in page.body["operations"].as_array().unwrap() {
            seen.push((
                operation["version"].as_u64().unwrap(),
                operation["balance_after"].as_str().unwrap().to_owned(),
            ));
        }
        match page.body["next"].as_str() {
            Some(next) => path = format!("/accounts/{id}/operations?limit=2&after={next}"),
            None => break,
        }
    }
    let balances = ["0.01", "0.03", "0.06", "0.10", "0.15"];
    assert_eq!(
        seen,
        (3..=7)
            .zip(balances)
            .map(|(v, b)| (v, b.to_owned()))
            .collect::<Vec<_>>()
    );
    let reply = app
        .query_get(&format!("/accounts/{id}/operations?limit=501"))
        .await;
    assert_problem(&reply, 400, "invalid_request");
    app.stop().await;
}

#[tokio::test]
async fn balance_sheet_totals_accounts_that_are_not_closed() {
    let app = spawn_app().await;
    let a = app.active_account("100.25", "MAD").await;
    let b = app.create("0.75", "MAD").await;
    let c = app.active_account("5", "JPY").await;
    let closed = app.active_account("0", "MAD").await;
    let version = app.command(&closed, "close", json!({})).await;
    app.command(&a, "debit", json!({"amount": "0.25"})).await;
    app.account_at(&a, 3).await;
    app.account_at(&b, 1).await;
    app.account_at(&c, 2).await;
    app.account_at(&closed, version).await;
    let sheet = app.query_get("/balance-sheet").await;
    assert_eq!(sheet.status, 200);
    assert_eq!(
        sheet.body,
        json!({"totals": [
            {"currency": "JPY", "balance": "5", "accounts": 1, "in_transit": "0"},
            {"currency": "MAD", "balance": "100.75", "accounts": 2, "in_transit": "0.00"},
        ]})
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_accounts_and_unreached_versions_are_problems() {
    let app = spawn_app().await;
    let unknown = uuid::Uuid::new_v4();
    assert_problem(
        &app.query_get(&format!("/accounts/{unknown}")).await,
        404,
        "not_found",
    );
    assert_problem(
        &app.query_get(&format!("/accounts/{unknown}/operations"))
            .await,
        404,
        "not_found",
    );
    assert_problem(
        &app.query_get("/accounts/not-a-uuid").await,
        400,
        "invalid_request",
    );
    assert_problem(
        &app.query_get(&format!("/accounts/{unknown}?min_version=-1"))
            .await,
        400,
        "invalid_request",
    );

    let id = app.active_account("1.00", "MAD").await;
    app.account_at(&id, 2).await;
    let started = Instant::now();
    let reply = app
        .query_get(&format!("/accounts/{id}?min_version=3&wait_ms=300"))
        .await;
    assert_problem(&reply, 504, "not_yet_projected");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_problem(
        &app.query_get(&format!("/accounts/{unknown}?min_version=1&wait_ms=0"))
            .await,
        504,
        "not_yet_projected",
    );
    // `min_version=0` waits for nothing: an unknown account is a 404 at once, not a
    // 504 after the default wait.
    let started = Instant::now();
    assert_problem(
        &app.query_get(&format!("/accounts/{unknown}?min_version=0"))
            .await,
        404,
        "not_found",
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(500), "{waited:?}");
    let reply = app
        .query_get(&format!("/accounts/{id}?min_version=2&wait_ms=0"))
        .await;
    assert_eq!(reply.status, 200);

    // A waiting read is woken by the projection itself: registered first, it answers
    // well under a second after the commit (a poller would not).
    let waiter = {
        let client = app.client.clone();
        let url = format!("{}/accounts/{id}?min_version=3&wait_ms=10000", app.query);
        tokio::spawn(async move {
            let response = client
                .get(url)
                .bearer_auth(test_support::auth::admin_token())
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the read waits for version 3");
    let committing = Instant::now();
    app.command(&id, "credit", json!({"amount": "1.00"})).await;
    let (status, answered) = waiter.await.unwrap();
    assert_eq!(status, 200);
    let after_commit = answered.duration_since(committing);
    assert!(
        after_commit < Duration::from_millis(500),
        "woken {after_commit:?} after the commit"
    );
    app.stop().await;
}

#[tokio::test]
async fn operational_endpoints_answer() {
    let app = spawn_app().await;
    let live = app.query_get("/health/live").await;
    assert_eq!(live.status, 200);
    let ready = app.query_get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body, json!({"database": "up", "broker": "up"}));

    let id = app.create("1.00", "MAD").await;
    app.account_at(&id, 1).await;
    for name in [
        "projection_events_total",
        "projection_lag_seconds_bucket",
        r#"event_pipeline_seconds_bucket{stage="delivered""#,
        r#"event_pipeline_seconds_bucket{stage="applied""#,
        r#"event_pipeline_seconds_bucket{stage="projected""#,
        "http_request_duration_seconds_bucket",
        "http_requests_total",
    ] {
        // Counters are bumped right after the commit that woke the read.
        let found = eventually(Duration::from_secs(2), || async {
            let metrics = app.query_get("/metrics").await;
            metrics.status == 200 && metrics.body.as_str().unwrap_or_default().contains(name)
        })
        .await;
        assert!(found, "{name} missing from /metrics");
    }

    let openapi = app.query_get("/openapi.json").await;
    assert_eq!(openapi.status, 200);
    assert!(openapi.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/accounts",
        "/accounts/{id}",
        "/accounts/{id}/operations",
        "/balance-sheet",
        "/transfers/{id}",
        "/accounts/{id}/transfers",
    ] {
        assert!(openapi.body["paths"][path]["get"].is_object(), "{path}");
    }
    for schema in [
        "Transfer",
        "TransferPage",
        "TransferStatus",
        "CurrencyTotal",
    ] {
        assert!(
            openapi.body["components"]["schemas"][schema].is_object(),
            "{schema}"
        );
    }
    let docs = app.query_get("/docs/").await;
    assert_eq!(docs.status, 200);
    assert_problem(&app.query_get("/nowhere").await, 404, "not_found");
    app.stop().await;
}
