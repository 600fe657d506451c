//! Identity and access (contract "Identity and access"): every endpoint × no token,
//! bad token, missing scope, another owner; listings filtered by owner in SQL; the
//! balance sheet for admins only; accounts without an owner for admins only.

#![expect(
    clippy::unwrap_used,
    reason = "test: a failure here is the test's failure"
)]

use serde_json::{Value, json};
use test_support::auth::{admin_token, customer_token, now, sign, token};

use crate::helpers::{Options, TestApp, seed, spawn_app_with};

/// A query service that projects only what the test publishes.
fn isolated() -> Options {
    Options {
        shared_exchange: false,
        follow_feed: false,
        ..Options::default()
    }
}

/// An admin token whose signature was tampered with.
fn badly_signed_token() -> String {
    let token = admin_token();
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    format!("{signed}.{flipped}{}", &signature[1..])
}

/// The `WWW-Authenticate` header of a GET with `token`.
async fn challenge(app: &TestApp, token: Option<&str>, path: &str) -> String {
    let mut request = app.client.get(format!("{}{path}", app.query));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn ids(reply: &Value) -> Vec<String> {
    let mut ids: Vec<String> = reply["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|account| account["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_or_invalid_token_and_a_missing_scope() {
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let expired = sign(&json!({"sub": "alice", "scope": "accounts:read", "exp": now() - 120}));
    let not_yet = sign(&json!({
        "sub": "alice", "scope": "accounts:read", "nbf": now() + 600, "exp": now() + 1200
    }));
    let write_only = token("alice", "accounts:write");
    let paths = [
        "/accounts".to_owned(),
        format!("/accounts/{alices}"),
        format!("/accounts/{alices}?min_version=3&wait_ms=0"),
        format!("/accounts/{alices}/operations"),
        "/balance-sheet".to_owned(),
        format!("/transfers/{}", uuid::Uuid::now_v7()),
        format!("/accounts/{alices}/transfers"),
    ];
    for path in &paths {
        app.query_as(None, path)
            .await
            .assert_problem(401, "unauthorized");
        assert_eq!(challenge(&app, None, path).await, "Bearer", "{path}");
        for bad in ["not-a-jwt", &expired, &not_yet, &badly_signed_token()] {
            app.query_as(Some(bad), path)
                .await
                .assert_problem(401, "unauthorized");
            assert_eq!(
                challenge(&app, Some(bad), path).await,
                r#"Bearer error="invalid_token""#,
                "{path}"
            );
        }
        // accounts:write alone reads nothing; events:read is not accounts:read either.
        for scopes in [&write_only, &token("alice", "events:read")] {
            let reply = app.query_as(Some(scopes), path).await;
            reply.assert_problem(403, "forbidden");
        }
    }
    // The operational routes stay open.
    for path in ["/health/live", "/health/ready", "/metrics", "/openapi.json"] {
        assert_eq!(app.query_as(None, path).await.status, 200, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_customer_sees_its_own_accounts_and_another_owners_are_404_like_unknown_ones() {
    let app = spawn_app_with(isolated()).await;
    let alices = seed(&app, Some("alice"), "MAD").await;
    let alices_eur = seed(&app, Some("alice"), "EUR").await;
    let bobs = seed(&app, Some("bob"), "MAD").await;
    let ownerless = seed(&app, None, "MAD").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let alice = customer_token("alice");
    let reader = token("alice", "accounts:read");

    for token in [&alice, &reader] {
        let own = app
            .query_as(Some(token), &format!("/accounts/{alices}"))
            .await;
        assert_eq!(own.status, 200, "{:?}", own.body);
        assert_eq!(own.body["balance"], "15.00");
        let operations = app
            .query_as(Some(token), &format!("/accounts/{alices}/operations"))
            .await;
        assert_eq!(operations.status, 200);
        assert_eq!(
            operations.body["operations"].as_array().map(Vec::len),
            Some(1)
        );
    }
    // Bob's account and an account without owner answer exactly like an unknown one,
    // also to a waiter (min_version) and on operations.
    for other in [&bobs, &ownerless, &unknown] {
        for path in [
            format!("/accounts/{other}"),
            format!("/accounts/{other}?min_version=0"),
            format!("/accounts/{other}/operations"),
        ] {
            app.query_as(Some(&alice), &path)
                .await
                .assert_problem(404, "not_found");
        }
        let waited = app
            .query_as(
                Some(&alice),
                &format!("/accounts/{other}?min_version=1&wait_ms=100"),
            )
            .await;
        waited.assert_problem(504, "not_yet_projected");
        assert!(
            waited.body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("up to version 0")),
            "a waiter learns nothing of a foreign account: {:?}",
            waited.body
        );
    }

    // Listings: alice's own accounts only, filters still apply; bob's own; admin all.
    let mut expected = vec![alices.clone(), alices_eur.clone()];
    expected.sort();
    let listed = app.query_as(Some(&alice), "/accounts").await;
    assert_eq!(listed.status, 200);
    assert_eq!(ids(&listed.body), expected);
    let listed = app
        .query_as(Some(&alice), "/accounts?currency=EUR&status=ACTIVE")
        .await;
    assert_eq!(ids(&listed.body), vec![alices_eur.clone()]);
    let paged = app.query_as(Some(&alice), "/accounts?limit=1").await;
    assert_eq!(paged.body["accounts"].as_array().map(Vec::len), Some(1));
    let next = paged.body["next"].as_str().unwrap().to_owned();
    let rest = app
        .query_as(Some(&alice), &format!("/accounts?limit=1&after={next}"))
        .await;
    assert_eq!(ids(&rest.body), vec![expected[1].clone()]);
    assert_eq!(rest.body["next"], Value::Null);
    let listed = app
        .query_as(Some(&customer_token("bob")), "/accounts")
        .await;
    assert_eq!(ids(&listed.body), vec![bobs.clone()]);
    let listed = app
        .query_as(Some(&customer_token("carol")), "/accounts")
        .await;
    assert_eq!(ids(&listed.body), Vec::<String>::new());

    // An admin reads every account, the ownerless one included.
    let admin = admin_token();
    let mut all = vec![alices, alices_eur, bobs, ownerless.clone()];
    all.sort();
    assert_eq!(
        ids(&app.query_as(Some(&admin), "/accounts").await.body),
        all
    );
    let reply = app
        .query_as(
            Some(&token("ops", "accounts:admin")),
            &format!("/accounts/{ownerless}/operations"),
        )
        .await;
    assert_eq!(reply.status, 200);
    app.stop().await;
}

#[tokio::test]
async fn the_balance_sheet_is_for_admins_only() {
    let app = spawn_app_with(isolated()).await;
    seed(&app, Some("alice"), "MAD").await;
    for scopes in ["accounts:read accounts:write", "accounts:read events:read"] {
        app.query_as(Some(&token("alice", scopes)), "/balance-sheet")
            .await
            .assert_problem(403, "forbidden");
    }
    let sheet = app
        .query_as(Some(&token("ops", "accounts:admin")), "/balance-sheet")
        .await;
    assert_eq!(sheet.status, 200);
    assert_eq!(sheet.body["totals"][0]["balance"], "15.00");
    app.stop().await;
}

#[tokio::test]
async fn the_openapi_document_offers_a_bearer_and_documents_401_and_403() {
    let app = spawn_app_with(isolated()).await;
    let document = app.query_as(None, "/openapi.json").await.body;
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, operation) in document["paths"].as_object().unwrap() {
        let responses = &operation["get"]["responses"];
        for status in ["401", "403"] {
            assert!(responses.get(status).is_some(), "{path} documents {status}");
        }
    }
    app.stop().await;
}
