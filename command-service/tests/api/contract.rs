//! The command service over HTTP, against the real Postgres and RabbitMQ.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::helpers::{TestApp, bind_queue, spawn_app};
use serde_json::{Value, json};

#[tokio::test]
async fn an_account_lives_through_its_whole_lifecycle() {
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            "/accounts",
            json!({"initial_balance": "100.5", "currency": "MAD"}),
        )
        .await;
    assert_eq!((status, created["version"].as_u64()), (201, Some(1)));
    let id = created["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);

    let steps = [
        ("activate", json!({}), 2, None),
        (
            "credit",
            json!({"amount": "49.50", "currency": "MAD"}),
            3,
            Some("150.00"),
        ),
        ("debit", json!({"amount": 150}), 4, Some("0.00")),
        ("suspend", json!({"reason": "customer request"}), 5, None),
        ("reactivate", json!({}), 6, None),
        ("close", json!({}), 7, None),
    ];
    for (command, body, version, balance) in steps {
        let (status, reply) = app.post(&format!("/accounts/{id}/{command}"), body).await;
        assert_eq!(status, 200, "{command}: {reply}");
        assert_eq!(reply["version"], version, "{command}");
        assert_eq!(reply["id"], id);
        if let Some(balance) = balance {
            assert_eq!(reply["balance"], balance, "{command}");
        }
    }

    let (status, stream) = app.get(&format!("/accounts/{id}/events")).await;
    assert_eq!(status, 200);
    let events = stream["events"].as_array().unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "AccountCreated",
            "AccountActivated",
            "AccountCredited",
            "AccountDebited",
            "AccountSuspended",
            "AccountReactivated",
            "AccountClosed"
        ]
    );
    assert_eq!(
        events[0]["data"],
        json!({"initial_balance": "100.50", "currency": "MAD", "owner": "admin"})
    );
    assert_eq!(
        events[2]["data"],
        json!({"amount": "49.50", "currency": "MAD", "balance": "150.00"})
    );
    assert_eq!(events[4]["data"], json!({"reason": "customer request"}));
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event["version"], index as u64 + 1);
        assert_eq!(event["account_id"], id);
        let schema_version = if index == 0 { 2 } else { 1 };
        assert_eq!(event["schema_version"], schema_version);
        assert!(event["occurred_at"].as_str().unwrap().ends_with('Z'));
        assert!(event["metadata"]["correlation_id"].is_string());
        assert_eq!(
            event["metadata"]["actor"],
            json!({"sub": "admin", "client_id": null})
        );
    }
    let (_, tail) = app
        .get(&format!("/accounts/{id}/events?from_version=6"))
        .await;
    assert_eq!(tail["events"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_status_of_an_account_gates_every_command() {
    let app = spawn_app().await;
    let (_, created) = app
        .post(
            "/accounts",
            json!({"initial_balance": "10.00", "currency": "EUR"}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let path = |command: &str| format!("/accounts/{id}/{command}");

    app.expect_problem(
        &path("credit"),
        json!({"amount": "1"}),
        409,
        "invalid_state",
    )
    .await;
    app.expect_problem(&path("close"), json!({}), 409, "invalid_state")
        .await;
    app.post(&path("activate"), json!({})).await;
    app.expect_problem(&path("activate"), json!({}), 409, "invalid_state")
        .await;
    app.expect_problem(&path("reactivate"), json!({}), 409, "invalid_state")
        .await;
    app.expect_problem(&path("close"), json!({}), 409, "invalid_state")
        .await;
    app.expect_problem(
        &path("debit"),
        json!({"amount": "10.01"}),
        422,
        "insufficient_funds",
    )
    .await;
    app.expect_problem(
        &path("credit"),
        json!({"amount": "1", "currency": "MAD"}),
        422,
        "currency_mismatch",
    )
    .await;
    app.post(&path("suspend"), json!({})).await;
    app.expect_problem(&path("debit"), json!({"amount": "1"}), 409, "invalid_state")
        .await;
    app.expect_problem(&path("suspend"), json!({}), 409, "invalid_state")
        .await;

    let (_, stream) = app.get(&format!("/accounts/{id}/events")).await;
    assert_eq!(
        stream["events"].as_array().unwrap().len(),
        3,
        "refusals wrote nothing"
    );
}

#[tokio::test]
async fn a_balance_never_passes_ten_to_the_fifteen() {
    let app = spawn_app().await;
    let id = app.active_account("1000000000000", "JPY").await;
    for _ in 0..999 {
        let (status, _) = app
            .post(
                &format!("/accounts/{id}/credit"),
                json!({"amount": "1000000000000"}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (_, full) = app
        .post(&format!("/accounts/{id}/credit"), json!({"amount": "0"}))
        .await;
    assert_eq!(full["code"], "invalid_request");
    app.expect_problem(
        &format!("/accounts/{id}/credit"),
        json!({"amount": "1"}),
        422,
        "balance_limit_exceeded",
    )
    .await;
    let (_, debited) = app
        .post(&format!("/accounts/{id}/debit"), json!({"amount": "1"}))
        .await;
    assert_eq!(debited["balance"], "999999999999999");
}

#[tokio::test]
async fn creating_an_account_with_an_existing_id_is_refused() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({"initial_balance": "0", "currency": "KWD", "id": id});
    let response = app
        .client
        .post(format!("{}/accounts", app.address))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["location"],
        format!("/accounts/{id}").as_str()
    );
    app.expect_problem("/accounts", body, 409, "account_exists")
        .await;
}

/// Requests that must be refused with 4xx and change nothing.
#[tokio::test]
async fn bad_input_of_every_kind_is_refused_and_writes_nothing() {
    let app = spawn_app().await;
    let id = app.active_account("5.00", "MAD").await;
    let before = app.all_events().await.len();
    let credit = format!("/accounts/{id}/credit");

    let invalid_openings = [
        json!({"currency": "MAD"}),
        json!({"initial_balance": "1", "currency": "XYZ"}),
        json!({"initial_balance": "1", "currency": "mad"}),
        json!({"initial_balance": "-1", "currency": "MAD"}),
        json!({"initial_balance": "1.001", "currency": "MAD"}),
        json!({"initial_balance": "1.5", "currency": "JPY"}),
        json!({"initial_balance": "1000000000000.01", "currency": "MAD"}),
        json!({"initial_balance": "1", "currency": "MAD", "id": "nope"}),
        json!({"initial_balance": true, "currency": "MAD"}),
        json!({"initial_balance": "1", "currency": "MAD", "extra": 1}),
        json!([1, 2]),
    ];
    let invalid_credits = [
        json!({"amount": "0"}),
        json!({"amount": "-5"}),
        json!({"amount": "abc"}),
        json!({"amount": "1e400"}),
        json!({"amount": "0.001"}),
        json!({"amount": 0.001}),
        json!({"amount": "1000000000000.01"}),
        json!({"amount": null}),
        json!({}),
        json!({"amount": "1", "currency": 5}),
    ];
    let mut bodies: Vec<(String, Value, u16, &str)> = Vec::new();
    for body in invalid_openings {
        bodies.push(("/accounts".into(), body, 400, "invalid_request"));
    }
    for body in invalid_credits {
        bodies.push((credit.clone(), body, 400, "invalid_request"));
    }
    bodies.extend([
        (
            "/accounts/not-a-uuid/credit".into(),
            json!({"amount": "1"}),
            400,
            "invalid_request",
        ),
        (
            format!("/accounts/{}/credit", uuid::Uuid::new_v4()),
            json!({"amount": "1"}),
            404,
            "not_found",
        ),
        (
            format!("/accounts/{id}/suspend"),
            json!({"reason": "x".repeat(501)}),
            400,
            "invalid_request",
        ),
        (
            format!("/accounts/{id}/activate"),
            json!({"unexpected": true}),
            400,
            "invalid_request",
        ),
    ]);
    let refused = bodies.len();
    for (path, body, status, code) in bodies {
        app.expect_problem(&path, body, status, code).await;
    }
    assert_eq!(refused, 25);

    let raw = |body: &'static [u8], content_type: Option<&'static str>| {
        let mut request = app
            .client
            .post(format!("{}{credit}", app.address))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request
    };
    let cases = [
        (
            raw(b"{\"amount\": ", Some("application/json")),
            400,
            "invalid_request",
        ),
        (
            raw(b"amount=1", Some("application/x-www-form-urlencoded")),
            415,
            "unsupported_media_type",
        ),
        (
            raw(b"{\"amount\": \"1\"}", None),
            415,
            "unsupported_media_type",
        ),
        (
            app.client
                .post(format!("{}{credit}", app.address))
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"amount\": \"1\", \"pad\": \"{}\"}}",
                    "x".repeat(70_000)
                )),
            413,
            "payload_too_large",
        ),
        (
            app.client
                .post(format!("{}{credit}", app.address))
                .header("idempotency-key", "")
                .json(&json!({"amount": "1"})),
            400,
            "invalid_request",
        ),
        (
            app.client
                .post(format!("{}{credit}", app.address))
                .header("idempotency-key", "k".repeat(129))
                .json(&json!({"amount": "1"})),
            400,
            "invalid_request",
        ),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code);
    }

    for query in [
        "/events?limit=0",
        "/events?limit=1001",
        "/events?after=-1",
        "/events?after=x",
    ] {
        let (status, problem) = app.get(query).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (400, Some("invalid_request")),
            "{query}"
        );
    }
    let (status, problem) = app
        .get(&format!("/accounts/{}/events", uuid::Uuid::new_v4()))
        .await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")));
    let (status, problem) = app.get("/no/such/route").await;
    assert_eq!((status, problem["code"].as_str()), (404, Some("not_found")));

    assert_eq!(
        app.all_events().await.len(),
        before,
        "bad input wrote events"
    );
}

#[tokio::test]
async fn a_hundred_concurrent_debits_on_37_leave_exactly_37_successes() {
    let app = spawn_app().await;
    let id = app.active_account("37.00", "MAD").await;
    let path = format!("/accounts/{id}/debit");
    let debits = (0..100).map(|_| app.post(&path, json!({"amount": "1.00"})));
    let results = futures::future::join_all(debits).await;

    let mut outcomes: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for (status, body) in &results {
        let code = body["code"].as_str().unwrap_or("ok").to_owned();
        *outcomes.entry((*status, code)).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ((200, "ok".to_owned()), 37),
            ((422, "insufficient_funds".to_owned()), 63)
        ])
    );
    let balances: HashSet<_> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body["balance"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(balances.len(), 37, "every success saw its own balance");
    let (_, stream) = app.get(&format!("/accounts/{id}/events")).await;
    let events = stream["events"].as_array().unwrap();
    assert_eq!(events.len(), 2 + 37);
    assert_eq!(events.last().unwrap()["data"]["balance"], "0.00");
}

#[tokio::test]
async fn a_repeated_idempotent_request_returns_the_first_response_and_changes_nothing() {
    let app = spawn_app().await;
    let id = app.active_account("100.00", "MAD").await;
    let path = format!("/accounts/{id}/debit");
    let key = [("idempotency-key", "debit-42")];

    let repeats = (0..10).map(|_| app.post_with(&path, json!({"amount": "10.00"}), &key));
    let results = futures::future::join_all(repeats).await;
    let first = &results[0];
    assert_eq!(first.0, 200);
    assert_eq!(first.1["balance"], "90.00");
    assert!(results.iter().all(|result| result == first), "{results:?}");

    let (status, problem) = app.post_with(&path, json!({"amount": "11.00"}), &key).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );

    let (_, stream) = app.get(&format!("/accounts/{id}/events")).await;
    let events = stream["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["metadata"]["idempotency_key"], "debit-42");

    let refused = [("idempotency-key", "too-much")];
    let (status, first_refusal) = app
        .post_with(&path, json!({"amount": "1000"}), &refused)
        .await;
    assert_eq!(status, 422);
    let (status, credited) = app
        .post(&format!("/accounts/{id}/credit"), json!({"amount": "5000"}))
        .await;
    assert_eq!(
        (status, credited["balance"].as_str()),
        (200, Some("5090.00")),
        "the credit that would let the refused debit through: {credited}"
    );
    let again = app
        .post_with(&path, json!({"amount": "1000"}), &refused)
        .await;
    assert_eq!(
        again,
        (422, first_refusal),
        "a refusal is the first response too"
    );

    let other = app.active_account("100.00", "MAD").await;
    let shared = [("idempotency-key", "shared-by-two-accounts")];
    let racing = futures::future::join_all([
        app.post_with(&path, json!({"amount": "1.00"}), &shared),
        app.post_with(
            &format!("/accounts/{other}/debit"),
            json!({"amount": "1.00"}),
            &shared,
        ),
    ])
    .await;
    let mut statuses: Vec<u16> = racing.iter().map(|(status, _)| *status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 422],
        "one key, two requests: one wins, the other is refused"
    );

    let create = json!({"initial_balance": "1", "currency": "EUR"});
    let created = [("idempotency-key", "open-1")];
    let first = app.post_with("/accounts", create.clone(), &created).await;
    let second = app.post_with("/accounts", create, &created).await;
    assert_eq!((first.0, &first.1), (201, &second.1));
}

/// A raw answer: status, the headers a replay must repeat, and the body's bytes.
#[derive(Debug, PartialEq)]
struct RawAnswer {
    status: u16,
    content_type: Option<String>,
    location: Option<String>,
    body: String,
}

#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure fails the test"
)]
async fn post_raw(app: &TestApp, path: &str, body: &Value, key: &str) -> (RawAnswer, bool) {
    let response = app
        .client
        .post(format!("{}{path}", app.address))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    let replayed = header("idempotent-replayed").is_some_and(|value| value == "true");
    let answer = RawAnswer {
        status: response.status().as_u16(),
        content_type: header("content-type"),
        location: header("location"),
        body: String::new(),
    };
    let body = response.text().await.unwrap();
    (RawAnswer { body, ..answer }, replayed)
}

#[tokio::test]
async fn a_replay_repeats_the_first_answer_byte_for_byte_refusals_included() {
    let app = spawn_app().await;
    let id = app.active_account("10.00", "EUR").await;
    let requests = [
        (
            "/accounts".to_owned(),
            json!({"initial_balance": "1.00", "currency": "EUR"}),
            201,
        ),
        (
            format!("/accounts/{id}/credit"),
            json!({"amount": "2.50"}),
            200,
        ),
        (
            format!("/accounts/{id}/suspend"),
            json!({"reason": "audit"}),
            200,
        ),
        (
            format!("/accounts/{id}/debit"),
            json!({"amount": "1.00"}),
            409,
        ),
        (format!("/accounts/{id}/reactivate"), json!({}), 200),
        (
            format!("/accounts/{id}/debit"),
            json!({"amount": "99.00"}),
            422,
        ),
    ];
    for (n, (path, body, status)) in requests.iter().enumerate() {
        let key = format!("raw-{n}");
        let (first, first_replayed) = post_raw(&app, path, body, &key).await;
        assert_eq!(first.status, *status, "{path}: {first:?}");
        assert!(!first_replayed, "{path}: the first answer is no replay");
        let (again, replayed) = post_raw(&app, path, body, &key).await;
        assert!(replayed, "{path}: a repeat is marked as a replay");
        assert_eq!(again, first, "{path}");
    }
}

#[tokio::test]
async fn every_committed_event_reaches_the_exchange_in_order_per_account() {
    let app = spawn_app().await;
    let mut queue = bind_queue(&app.exchange).await;
    let accounts: Vec<String> =
        futures::future::join_all((0..4).map(|_| app.active_account("10.00", "MAD"))).await;
    let movements = accounts.iter().flat_map(|id| {
        (0..5).map(move |n| {
            let command = if n % 2 == 0 { "credit" } else { "debit" };
            (
                format!("/accounts/{id}/{command}"),
                json!({"amount": "1.00"}),
            )
        })
    });
    for (path, body) in movements {
        assert_eq!(app.post(&path, body).await.0, 200);
    }
    let committed = app.all_events().await;
    let received = queue
        .receive(committed.len(), Duration::from_secs(20))
        .await;
    assert_eq!(received.len(), committed.len());

    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for message in &received {
        let event = &message.body;
        versions
            .entry(event["account_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(event["version"].as_u64().unwrap());
        let kind = event["type"].as_str().unwrap();
        assert_eq!(message.kind.as_deref(), Some(kind));
        assert_eq!(message.message_id.as_deref(), event["event_id"].as_str());
        assert_eq!(message.content_type.as_deref(), Some("application/json"));
        assert_eq!(message.delivery_mode, Some(2));
        let correlation = event["metadata"]["correlation_id"]
            .as_str()
            .unwrap()
            .replace('-', "");
        let traceparent = message.traceparent.as_deref().unwrap();
        assert!(
            traceparent.starts_with(&format!("00-{correlation}-")),
            "{traceparent}"
        );
        let expected_key = format!(
            "account.{}",
            kind.trim_start_matches("Account").to_lowercase()
        );
        assert_eq!(message.routing_key, expected_key);
    }
    for (account, seen) in versions {
        assert_eq!(seen, (1..=7).collect::<Vec<_>>(), "account {account}");
    }
    let bodies: HashSet<String> = received.iter().map(|m| m.body.to_string()).collect();
    let feed: HashSet<String> = committed.iter().map(Value::to_string).collect();
    assert_eq!(bodies, feed, "messages are the feed's events");
}

#[tokio::test]
async fn operational_endpoints_answer() {
    let app = spawn_app().await;
    let (status, _) = app.get("/health/live").await;
    assert_eq!(status, 200);
    let (status, ready) = app.get("/health/ready").await;
    assert_eq!((status, &ready["database"]), (200, &json!("up")));
    let (status, openapi) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/accounts",
        "/accounts/{id}/debit",
        "/events",
        "/accounts/{id}/events",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} undocumented");
    }
    let docs = app
        .client
        .get(format!("{}/docs/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
    app.active_account("1", "EUR").await;
    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    let text = metrics.text().await.unwrap();
    assert!(text.contains("http_requests_total"), "{text}");
    assert!(text.contains("commands_total"), "{text}");
}

#[tokio::test]
async fn a_stream_is_read_page_by_page() {
    // Given an account of five events
    let app = spawn_app().await;
    let id = app.active_account("10.00", "MAD").await;
    for _ in 0..3 {
        app.admin()
            .post(&format!("/accounts/{id}/credit"), &json!({"amount": "1"}))
            .await
            .expect(200, "credit");
    }

    // When it is read two events at a time, each page says where the next starts
    let mut versions = Vec::new();
    let mut from = Some(1);
    let mut pages = 0;
    while let Some(start) = from {
        let page = app
            .admin()
            .get(&format!(
                "/accounts/{id}/events?from_version={start}&limit=2"
            ))
            .await
            .expect(200, "page");
        versions.extend(
            page["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|event| event["version"].as_u64()),
        );
        from = page["next_from_version"].as_u64();
        pages += 1;
    }

    // Then the pages hold the stream once, in order; a page may not be empty or too big
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
    let whole = app
        .admin()
        .get(&format!("/accounts/{id}/events"))
        .await
        .expect(200, "default page");
    assert_eq!(whole["events"].as_array().map(Vec::len), Some(5));
    assert_eq!(whole["next_from_version"], Value::Null);
    for limit in ["0", "1001", "x"] {
        app.admin()
            .get(&format!("/accounts/{id}/events?limit={limit}"))
            .await
            .assert_problem(400, "invalid_request");
    }
}
