//! Identity as a client sees it: who may see and move which account, what a request
//! without a valid token gets, who the audit trail names, and the `token` subcommand.

use std::process::Command;

use e2e_tests::Stack;
use e2e_tests::binaries::Binary;
use e2e_tests::stack::CUSTOMER;
use serde_json::{Value, json};
use test_support::Api;
use test_support::auth::{
    ADMIN_SCOPES, CUSTOMER_SCOPES, TEST_JWT_SECRET, customer_token, now, sign, token,
};

/// What a refused request answered: status, the problem's code, `WWW-Authenticate`.
#[derive(Debug)]
struct Refusal {
    status: u16,
    code: Option<String>,
    challenge: Option<String>,
}

/// Sends `GET` or `POST` (with an empty JSON object) to `path`, with `token` as the
/// bearer when there is one, and reads the headers a `Reply` does not keep.
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure here is the test's failure"
)]
async fn send(api: &Api, method: &str, path: &str, token: Option<&str>) -> Refusal {
    let request = match method {
        "POST" => api.http().post(api.url(path)).json(&json!({})),
        _ => api.http().get(api.url(path)),
    };
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Refusal {
        status,
        code: body["code"].as_str().map(str::to_owned),
        challenge,
    }
}

#[tokio::test]
async fn a_customer_cannot_see_or_move_another_customers_account() {
    let stack = Stack::start().await;
    // Given an active account of the stack's customer, with a credit.
    let account = stack.active_account("100.00", "MAD").await;
    let credited = stack
        .act(&account.id, "credit", json!({"amount": "5.00"}))
        .await;
    let before = stack.read(&account.id, credited.version).await;
    let id = &account.id;

    // When another customer names it, it does not exist for them, everywhere.
    let mallory = customer_token("mallory");
    let command = stack.command_with(Some(&mallory));
    let query = stack.query_with(Some(&mallory));
    for verb in ["credit", "debit"] {
        command
            .post(
                &format!("/accounts/{id}/{verb}"),
                &json!({"amount": "1.00"}),
            )
            .await
            .assert_problem(404, "not_found");
    }
    command
        .get(&format!("/accounts/{id}/events"))
        .await
        .assert_problem(404, "not_found");
    query
        .get(&format!("/accounts/{id}"))
        .await
        .assert_problem(404, "not_found");
    query
        .get(&format!("/accounts/{id}/operations"))
        .await
        .assert_problem(404, "not_found");
    let listed = stack
        .pages_of(&query, "/accounts?limit=50", "accounts")
        .await;
    assert_eq!(
        listed.iter().flatten().count(),
        0,
        "mallory lists none of the stack customer's accounts: {listed:?}"
    );

    // A customer lacks the scopes of the lifecycle, the balance sheet and the feed,
    // whoever owns the account: 403, before ownership is looked at.
    for (api, path) in [
        (&command, format!("/accounts/{id}/suspend")),
        (stack.customer_command(), format!("/accounts/{id}/close")),
    ] {
        api.post(&path, &json!({}))
            .await
            .assert_problem(403, "forbidden");
    }
    query
        .get("/balance-sheet")
        .await
        .assert_problem(403, "forbidden");
    command
        .get("/events?after=0")
        .await
        .assert_problem(403, "forbidden");
    // Naming someone else as the owner takes an admin; naming oneself does not.
    command
        .post(
            "/accounts",
            &json!({"initial_balance": "1.00", "currency": "MAD", "owner": CUSTOMER}),
        )
        .await
        .assert_problem(403, "forbidden");
    let own = command
        .post(
            "/accounts",
            &json!({"initial_balance": "1.00", "currency": "MAD", "owner": "mallory"}),
        )
        .await
        .expect(201, "an account of mallory's own");
    assert!(own["id"].is_string(), "{own}");

    // Then nothing moved, and the owner still sees the account as before.
    let after = stack.read(id, credited.version).await;
    assert_eq!(after, before, "the account is unchanged");
    assert_eq!(
        stack.events(id).await.len() as u64,
        credited.version,
        "no event was written"
    );
    stack
        .customer_query()
        .get(&format!(
            "/accounts/{}",
            own["id"].as_str().unwrap_or_default()
        ))
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test]
async fn without_a_valid_token_every_endpoint_answers_401_with_a_bearer_challenge() {
    let stack = Stack::start().await;
    let account = stack.active_account("10.00", "EUR").await;
    let id = &account.id;
    let command = stack.command();
    let query = stack.query();
    let protected = [
        (command, "POST", "/accounts".to_owned()),
        (command, "POST", format!("/accounts/{id}/activate")),
        (command, "POST", format!("/accounts/{id}/suspend")),
        (command, "POST", format!("/accounts/{id}/reactivate")),
        (command, "POST", format!("/accounts/{id}/close")),
        (command, "POST", format!("/accounts/{id}/credit")),
        (command, "POST", format!("/accounts/{id}/debit")),
        (command, "GET", format!("/accounts/{id}/events")),
        (command, "GET", "/events?after=0".to_owned()),
        (query, "GET", "/accounts".to_owned()),
        (query, "GET", format!("/accounts/{id}")),
        (query, "GET", format!("/accounts/{id}/operations")),
        (query, "GET", "/balance-sheet".to_owned()),
    ];
    let another_key = {
        let claims = json!({"sub": "admin", "scope": ADMIN_SCOPES, "exp": now() + 600});
        jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-of-at-least-32-bytes!!")
            .and_then(|key| jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key))
            .unwrap_or_else(|error| panic!("{error}"))
    };
    let expired = sign(&json!({"sub": "admin", "scope": ADMIN_SCOPES, "exp": now() - 3600}));
    let bad_tokens = [
        ("no token", None, false),
        ("a token that is no JWT", Some("not-a-jwt"), true),
        (
            "a token signed with another key",
            Some(another_key.as_str()),
            true,
        ),
        ("an expired token", Some(expired.as_str()), true),
    ];
    for (api, method, path) in &protected {
        for (what, token, invalid) in &bad_tokens {
            let answer = send(api, method, path, *token).await;
            let challenge = answer.challenge.clone().unwrap_or_default();
            assert!(
                answer.status == 401
                    && answer.code.as_deref() == Some("unauthorized")
                    && challenge.starts_with("Bearer")
                    && (!invalid || challenge.contains("error=\"invalid_token\"")),
                "{method} {}{path} with {what}: {answer:?}",
                api.base
            );
        }
    }
    // Health, metrics and the API documents stay open.
    for api in [command, query] {
        for path in ["/health/live", "/health/ready", "/metrics", "/openapi.json"] {
            let answer = send(api, "GET", path, None).await;
            assert_eq!(answer.status, 200, "GET {}{path}: {answer:?}", api.base);
        }
    }
    // And nothing was written by the refused commands.
    assert_eq!(stack.events(id).await.len() as u64, account.version);
}

#[tokio::test]
async fn every_event_names_the_caller_whose_token_made_it() {
    let stack = Stack::start().await;
    // A customer's app (client_id `mobile-app`) opens and moves an account; the
    // operator (no client_id) runs its lifecycle.
    let carol = sign(&json!({
        "sub": "carol",
        "scope": CUSTOMER_SCOPES,
        "client_id": "mobile-app",
        "exp": now() + 600,
    }));
    let carol_api = stack.command_with(Some(&carol));
    let created = carol_api
        .post(
            "/accounts",
            &json!({"initial_balance": "20.00", "currency": "USD"}),
        )
        .await
        .expect(201, "carol opens an account");
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    stack.act(&id, "activate", json!({})).await;
    for verb in ["credit", "debit"] {
        carol_api
            .post(
                &format!("/accounts/{id}/{verb}"),
                &json!({"amount": "1.00"}),
            )
            .await
            .expect(200, verb);
    }
    stack.act(&id, "suspend", json!({"reason": "review"})).await;
    // The stack's own customer and operator on another account.
    let other = stack.active_account("1.00", "USD").await;
    stack
        .act(&other.id, "credit", json!({"amount": "1.00"}))
        .await;

    let carol_events = |event: &&Value| event["account_id"] == id.as_str();
    let feed = stack.feed().await;
    assert_eq!(feed.len(), 8, "every event is in the feed: {feed:#?}");
    for event in &feed {
        let kind = event["type"].as_str().unwrap_or_default();
        let lifecycle = matches!(kind, "AccountActivated" | "AccountSuspended");
        let expected = match (carol_events(&event), lifecycle) {
            (_, true) => ("admin", None),
            (true, false) => ("carol", Some("mobile-app")),
            (false, false) => (CUSTOMER, None),
        };
        let actor = &event["metadata"]["actor"];
        assert_eq!(
            (actor["sub"].as_str(), actor["client_id"].as_str()),
            (Some(expected.0), expected.1),
            "{kind}: {event}"
        );
    }
    // The opening event says who owns the account, at schema version 2.
    let opened = feed
        .iter()
        .find(|event| carol_events(event) && event["type"] == "AccountCreated")
        .unwrap_or_else(|| panic!("no AccountCreated for {id}"));
    assert_eq!(
        (&opened["schema_version"], &opened["data"]["owner"]),
        (&json!(2), &json!("carol")),
        "{opened}"
    );
    // The owner's view of its account's events is the same audit trail.
    let own: Vec<Value> = carol_api
        .get(&format!("/accounts/{id}/events"))
        .await
        .expect(200, "carol's events")["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let in_feed: Vec<&Value> = feed.iter().filter(carol_events).collect();
    assert_eq!(own.iter().collect::<Vec<_>>(), in_feed);
}

/// `<binary> token ARGS` with the tests' secret; what it printed, trimmed.
fn minted_by(binary: Binary, arguments: &[&str]) -> String {
    let output = Command::new(binary.path())
        .arg("token")
        .args(arguments)
        .env_clear()
        .env("AUTH_JWT_SECRET", TEST_JWT_SECRET)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", binary.name()));
    assert!(
        output.status.success(),
        "{} token {}: {}\n{}",
        binary.name(),
        arguments.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn the_token_subcommand_of_each_binary_prints_a_token_the_services_accept() {
    let stack = Stack::start().await;
    let scopes = ["--scope", "accounts:read accounts:write"];
    let from_command = minted_by(
        Binary::CommandService,
        &[&["--sub", "dave"][..], &scopes].concat(),
    );
    let from_query = minted_by(
        Binary::QueryService,
        &[&["--sub", "dave"][..], &scopes].concat(),
    );
    assert_eq!(from_command.split('.').count(), 3, "a JWT: {from_command}");

    // Dave opens an account with the command service's token and reads it with the
    // query service's: both name the same caller.
    let created = stack
        .command_with(Some(&from_command))
        .post(
            "/accounts",
            &json!({"initial_balance": "3.00", "currency": "EUR"}),
        )
        .await
        .expect(201, "dave opens an account");
    let id = created["id"].as_str().unwrap_or_default();
    let read = stack
        .query_with(Some(&from_query))
        .get(&format!("/accounts/{id}?min_version=1&wait_ms=10000"))
        .await
        .expect(200, "dave reads it");
    assert_eq!(read["balance"], "3.00");
    let events = stack
        .command_with(Some(&from_query))
        .get(&format!("/accounts/{id}/events"))
        .await
        .expect(
            200,
            "the query service's token works at the command service",
        );
    assert_eq!(events["events"][0]["metadata"]["actor"]["sub"], "dave");

    // A token without a scope it needs is refused with 403, not 401.
    let reader = minted_by(
        Binary::CommandService,
        &["--sub", "dave", "--scope", "accounts:read"],
    );
    stack
        .command_with(Some(&reader))
        .post(
            &format!("/accounts/{id}/credit"),
            &json!({"amount": "1.00"}),
        )
        .await
        .assert_problem(403, "forbidden");
    // Someone else's token does not reach dave's account.
    stack
        .query_with(Some(&token("erin", "accounts:read")))
        .get(&format!("/accounts/{id}"))
        .await
        .assert_problem(404, "not_found");
}
