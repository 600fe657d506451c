//! Identity and access (contract "Identity and access"): every endpoint refuses a
//! missing, malformed, badly signed or expired token (401), a token without the
//! operation's scope (403), and, to a caller who neither owns the account nor is an
//! admin, answers as for an account that does not exist (404); nothing is written.

use serde_json::{Value, json};
use test_support::auth::{admin_token, customer_token, now, sign, token};
use test_support::servers::Server;

use crate::helpers::{TestApp, spawn_app};

/// A request of the contract: method, path, body.
struct Endpoint {
    method: &'static str,
    path: String,
    body: Value,
}

impl Endpoint {
    fn post(path: String, body: Value) -> Self {
        Self {
            method: "POST",
            path,
            body,
        }
    }

    fn get(path: String) -> Self {
        Self {
            method: "GET",
            path,
            body: Value::Null,
        }
    }
}

/// Status, `WWW-Authenticate` and body of a request sent with `token`.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn send(
    app: &TestApp,
    endpoint: &Endpoint,
    token: Option<&str>,
) -> (u16, Option<String>, Value, String) {
    let http = reqwest::Client::new();
    let url = format!("{}{}", app.address, endpoint.path);
    let mut request = match endpoint.method {
        "GET" => http.get(url),
        _ => http.post(url).json(&endpoint.body),
    };
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let challenge = header(reqwest::header::WWW_AUTHENTICATE);
    let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, challenge, body, content_type)
}

/// Every endpoint of the command service, on account `id`.
fn endpoints(id: &str) -> Vec<Endpoint> {
    vec![
        Endpoint::post(
            "/accounts".into(),
            json!({"initial_balance": "1.00", "currency": "MAD"}),
        ),
        Endpoint::post(format!("/accounts/{id}/activate"), json!({})),
        Endpoint::post(format!("/accounts/{id}/credit"), json!({"amount": "1.00"})),
        Endpoint::post(format!("/accounts/{id}/debit"), json!({"amount": "1.00"})),
        Endpoint::post(format!("/accounts/{id}/suspend"), json!({})),
        Endpoint::post(format!("/accounts/{id}/reactivate"), json!({})),
        Endpoint::post(format!("/accounts/{id}/close"), json!({})),
        Endpoint::get(format!("/accounts/{id}/events")),
        Endpoint::get("/events?after=0".into()),
    ]
}

/// A token signed with the test secret whose signature no longer verifies.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
fn badly_signed() -> String {
    let good = customer_token("alice");
    let (unsigned, signature) = good.rsplit_once('.').unwrap();
    let flipped: String = signature
        .chars()
        .rev()
        .collect::<String>()
        .replace('A', "B");
    format!("{unsigned}.{flipped}")
}

/// An account of alice's, active, with 100.00 MAD; its id.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn alices_account(app: &TestApp) -> String {
    let alice = app.as_caller(Some(&customer_token("alice")));
    let created = alice
        .post(
            "/accounts",
            &json!({"initial_balance": "100.00", "currency": "MAD"}),
        )
        .await
        .expect(201, "alice opens an account");
    let id = created["id"].as_str().unwrap().to_owned();
    app.admin()
        .post(&format!("/accounts/{id}/activate"), &json!({}))
        .await
        .expect(200, "an admin activates it");
    id
}

#[tokio::test]
async fn every_endpoint_refuses_what_the_token_does_not_allow_and_writes_nothing() {
    let app = spawn_app().await;
    let id = alices_account(&app).await;
    let before = app.all_events().await.len();

    let expired = sign(&json!({
        "sub": "alice", "scope": "accounts:read accounts:write",
        "iat": now() - 7200, "exp": now() - 3600,
    }));
    let not_yet_valid = sign(&json!({
        "sub": "alice", "scope": "accounts:read accounts:write",
        "nbf": now() + 3600, "exp": now() + 7200,
    }));
    let oversized = token(&"a".repeat(9 * 1024), "accounts:admin");
    let no_contract_scope = token("alice", "openid profile");
    let refused_tokens: [(&str, Option<&str>); 7] = [
        ("no token", None),
        ("malformed", Some("not-a-jwt")),
        ("truncated", Some(&admin_token()[..40])),
        ("badly signed", Some(&badly_signed())),
        ("expired", Some(&expired)),
        ("not yet valid", Some(&not_yet_valid)),
        ("oversized", Some(&oversized)),
    ];
    for endpoint in endpoints(&id) {
        for (what, token) in &refused_tokens {
            let (status, challenge, body, content_type) = send(&app, &endpoint, *token).await;
            let case = format!("{} {} with {what}: {body}", endpoint.method, endpoint.path);
            assert_eq!(
                (status, body["code"].as_str()),
                (401, Some("unauthorized")),
                "{case}"
            );
            assert!(
                content_type.starts_with("application/problem+json"),
                "{case}"
            );
            assert!(
                challenge.unwrap_or_default().starts_with("Bearer"),
                "{case}"
            );
        }
        let (status, challenge, body, _) = send(&app, &endpoint, Some(&no_contract_scope)).await;
        let case = format!(
            "{} {} without scope: {body}",
            endpoint.method, endpoint.path
        );
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("forbidden")),
            "{case}"
        );
        assert!(
            challenge
                .unwrap_or_default()
                .contains(r#"error="insufficient_scope""#),
            "{case}"
        );
    }

    // Scope before ownership: bob lacks accounts:admin for the lifecycle commands and
    // events:read for the feed; for the rest, alice's account is not there for him.
    let bob = customer_token("bob");
    let expected_for_bob = [
        (201, None),
        (403, Some("forbidden")),
        (404, Some("not_found")),
        (404, Some("not_found")),
        (403, Some("forbidden")),
        (403, Some("forbidden")),
        (403, Some("forbidden")),
        (404, Some("not_found")),
        (403, Some("forbidden")),
    ];
    let mut opened_by_bob = 0;
    for (endpoint, expected) in endpoints(&id).iter().zip(expected_for_bob) {
        let (status, _, body, _) = send(&app, endpoint, Some(&bob)).await;
        let case = format!("{} {} by bob: {body}", endpoint.method, endpoint.path);
        if status == 201 {
            opened_by_bob += 1;
            assert_eq!(expected, (201, None), "{case}");
            continue;
        }
        assert_eq!((status, body["code"].as_str()), expected, "{case}");
    }

    // Narrower scopes: reading is not writing, writing is not reading, and admin is
    // not the global feed.
    let all = endpoints(&id);
    let narrow = [
        (token("alice", "accounts:read"), &all[2]),
        (token("alice", "accounts:write"), &all[7]),
        (token("ops", "accounts:admin"), &all[8]),
        (customer_token("alice"), &all[1]),
    ];
    for (token, endpoint) in &narrow {
        let (status, _, body, _) = send(&app, endpoint, Some(token)).await;
        let case = format!("{} {}: {body}", endpoint.method, endpoint.path);
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("forbidden")),
            "{case}"
        );
    }

    let after = app.all_events().await.len();
    assert_eq!(
        after,
        before + opened_by_bob,
        "only bob's own account was opened"
    );
}

#[tokio::test]
async fn an_owner_moves_its_own_money_and_reads_its_own_events_and_nothing_else() {
    let app = spawn_app().await;
    let id = alices_account(&app).await;
    let alice = app.as_caller(Some(&customer_token("alice")));
    let credited = alice
        .post(
            &format!("/accounts/{id}/credit"),
            &json!({"amount": "5.00"}),
        )
        .await
        .expect(200, "alice credits her account");
    assert_eq!(credited["balance"], "105.00");
    alice
        .post(&format!("/accounts/{id}/debit"), &json!({"amount": "1.00"}))
        .await
        .expect(200, "alice debits her account");
    let events = alice
        .get(&format!("/accounts/{id}/events"))
        .await
        .expect(200, "alice reads her events");
    let events = events["events"].as_array().unwrap();
    assert_eq!(events[0]["schema_version"], 2);
    assert_eq!(events[0]["data"]["owner"], "alice");
    assert_eq!(
        events[2]["metadata"]["actor"],
        json!({"sub": "alice", "client_id": null})
    );
    assert_eq!(events[1]["metadata"]["actor"]["sub"], "admin");

    // The client a token came through is recorded as well.
    let via_app = sign(&json!({
        "sub": "alice", "scope": "accounts:write accounts:read", "azp": "mobile-app",
        "exp": now() + 600,
    }));
    let reply = app
        .as_caller(Some(&via_app))
        .post(
            &format!("/accounts/{id}/credit"),
            &json!({"amount": "1.00"}),
        )
        .await
        .expect(200, "credit through an app");
    let version = reply["version"].as_u64().unwrap();
    let events = app.all_events().await;
    let event = events
        .iter()
        .find(|e| e["account_id"] == id && e["version"] == version)
        .unwrap();
    assert_eq!(
        event["metadata"]["actor"],
        json!({"sub": "alice", "client_id": "mobile-app"})
    );

    // An auditor with events:read reads any account's events, and the feed.
    let auditor = app.as_caller(Some(&token("auditor", "events:read")));
    auditor
        .get(&format!("/accounts/{id}/events"))
        .await
        .expect(200, "events:read reads any account's events");
    auditor
        .get("/events")
        .await
        .expect(200, "events:read reads the feed");
}

#[tokio::test]
async fn only_an_admin_names_another_owner() {
    let app = spawn_app().await;
    let opening = |owner: &str| json!({"initial_balance": "0", "currency": "EUR", "owner": owner});
    let alice = app.as_caller(Some(&customer_token("alice")));
    alice
        .post("/accounts", &opening("bob"))
        .await
        .assert_problem(403, "forbidden");
    let own = alice
        .post("/accounts", &opening("alice"))
        .await
        .expect(201, "alice names herself");
    let carols = app
        .admin()
        .post("/accounts", &opening("carol"))
        .await
        .expect(201, "an admin opens an account for carol");
    let carols = carols["id"].as_str().unwrap();
    app.admin()
        .post(&format!("/accounts/{carols}/activate"), &json!({}))
        .await
        .expect(200, "activate");
    app.as_caller(Some(&customer_token("carol")))
        .post(
            &format!("/accounts/{carols}/credit"),
            &json!({"amount": "3"}),
        )
        .await
        .expect(200, "carol credits the account opened for her");
    alice
        .post(
            &format!("/accounts/{carols}/credit"),
            &json!({"amount": "3"}),
        )
        .await
        .assert_problem(404, "not_found");
    let events = app.all_events().await;
    let owners: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "AccountCreated")
        .map(|e| &e["data"]["owner"])
        .collect();
    assert_eq!(owners, [&json!("alice"), &json!("carol")], "{own}");
}

#[tokio::test]
async fn an_idempotency_key_belongs_to_its_caller() {
    let app = spawn_app().await;
    let alices = alices_account(&app).await;
    let alice = app.as_caller(Some(&customer_token("alice")));
    let bob = app.as_caller(Some(&customer_token("bob")));
    let key = [("Idempotency-Key", "pay-1")];
    let credit = json!({"amount": "7.00"});
    let first = alice
        .post_with_headers(&format!("/accounts/{alices}/credit"), &credit, &key)
        .await
        .expect(200, "alice credits");

    // The same request under the same key from bob is bob's own request: it does not
    // replay alice's answer.
    bob.post_with_headers(&format!("/accounts/{alices}/credit"), &credit, &key)
        .await
        .assert_problem(404, "not_found");
    // And carol's first request under that key is a new request, not a reused key.
    let carols = app
        .as_caller(Some(&customer_token("carol")))
        .post_with_headers(
            "/accounts",
            &json!({"initial_balance": "0", "currency": "MAD"}),
            &key,
        )
        .await
        .expect(201, "carol's own request under the same key");
    assert_ne!(carols["id"], first["id"]);

    let again = alice
        .post_with_headers(&format!("/accounts/{alices}/credit"), &credit, &key)
        .await
        .expect(200, "alice's replay");
    assert_eq!(again, first);
    let events = app.all_events().await;
    let credits = events
        .iter()
        .filter(|e| e["type"] == "AccountCredited")
        .count();
    assert_eq!(credits, 1);
    let stored_key = events
        .iter()
        .find(|e| e["type"] == "AccountCredited")
        .map(|e| e["metadata"]["idempotency_key"].clone());
    assert_eq!(
        stored_key,
        Some(json!("pay-1")),
        "the client's key, as sent"
    );
}

#[tokio::test]
async fn health_metrics_and_the_documents_stay_open_and_the_document_offers_a_bearer() {
    let app = spawn_app().await;
    let open = app.as_caller(None);
    for path in ["/health/live", "/health/ready", "/metrics", "/docs/"] {
        let reply = open.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let document = open.get("/openapi.json").await.expect(200, "openapi");
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = document["paths"].as_object().unwrap();
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            for status in ["401", "403"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path} documents no {status}"
                );
            }
        }
    }
}

#[tokio::test]
async fn without_a_key_source_the_service_refuses_to_start_and_says_what_to_set() {
    test_support::servers::require(&[Server::Postgres]);
    let mut settings = crate::helpers::test_settings(
        &crate::helpers::fresh_database_url(),
        &crate::helpers::fresh_exchange(),
        &test_support::servers::amqp_url(),
    );
    settings.auth = service_kit::auth::AuthSettings::default();
    let error = command_service::Application::build(settings)
        .await
        .err()
        .map(|error| format!("{error:#}"))
        .unwrap_or_default();
    assert!(error.contains("AUTH_JWT_SECRET"), "{error}");
    assert!(error.contains("AUTH_JWKS_FILE"), "{error}");
}
