//! Reads as of an instant: `GET /accounts/{id}?as_of=`.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use test_support::http::assert_problem;

use test_support::auth::customer_token;

use crate::helpers::{TestApp, spawn_app};

/// The instant of an event, shifted by `offset_us` microseconds, as RFC 3339.
fn instant(event: &Value, offset_us: i64) -> String {
    let Some(at) = event["occurred_at"].as_str() else {
        panic!("no occurred_at in {event}");
    };
    let at: DateTime<Utc> = at
        .parse()
        .unwrap_or_else(|error| panic!("occurred_at {at}: {error}"));
    (at + Duration::microseconds(offset_us)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn as_of(app: &TestApp, id: &str, at: &str) -> test_support::http::Reply {
    app.query_get(&format!("/accounts/{id}?as_of={at}")).await
}

#[tokio::test]
async fn an_account_reads_as_it_stood_at_each_of_its_events() {
    // Given an account that went through its whole life
    let app = spawn_app().await;
    let id = app.create("100.00", "MAD").await;
    let steps = [
        ("activate", json!({})),
        ("credit", json!({"amount": "50.00"})),
        ("debit", json!({"amount": "150.00"})),
        ("suspend", json!({"reason": "audit"})),
        ("close", json!({})),
    ];
    let mut version = 1;
    for (command, body) in steps {
        version = app.command(&id, command, body).await;
    }
    app.account_at(&id, version).await;
    let events = app.stream(&id).await;
    let expected = [
        ("CREATED", "100.00"),
        ("ACTIVE", "100.00"),
        ("ACTIVE", "150.00"),
        ("ACTIVE", "0.00"),
        ("SUSPENDED", "0.00"),
        ("CLOSED", "0.00"),
    ];

    for (index, (event, (status, balance))) in events.iter().zip(expected).enumerate() {
        // When it is read as of the instant of each event, and just before the next one
        for at in [instant(event, 0), instant(&events[(index + 1).min(5)], -1)] {
            if index == 5 && at != instant(event, 0) {
                continue;
            }
            let account = as_of(&app, &id, &at).await.expect(200, &at);
            // Then it is the account as that event left it
            assert_eq!(account["version"], index + 1, "as of {at}");
            assert_eq!(account["status"], status, "as of {at}");
            assert_eq!(account["balance"], balance, "as of {at}");
            assert_eq!(account["currency"], "MAD");
            assert_eq!(account["created_at"], events[0]["occurred_at"]);
            assert_eq!(account["updated_at"], event["occurred_at"]);
        }
    }

    // Before its first event it did not exist
    assert_problem(
        &as_of(&app, &id, &instant(&events[0], -1)).await,
        404,
        "not_found",
    );
    assert_problem(
        &as_of(&app, &id, "1969-12-31T23:59:59Z").await,
        404,
        "not_found",
    );
    assert_problem(
        &as_of(&app, &id, "0001-01-01T00:00:00Z").await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn the_future_and_other_zones_answer_like_the_present() {
    let app = spawn_app().await;
    let id = app.active_account("10.00", "EUR").await;
    let version = app.command(&id, "credit", json!({"amount": "5"})).await;
    let current = app.account_at(&id, version).await;

    // An instant in the future answers the current state
    let tomorrow = (Utc::now() + Duration::days(1)).to_rfc3339();
    let future = app
        .query_get(&format!(
            "/accounts/{id}?as_of={}",
            tomorrow.replace('+', "%2B")
        ))
        .await
        .expect(200, "future");
    assert_eq!(future, current);
    assert_eq!(
        as_of(&app, &id, "9999-12-31T23:59:59Z")
            .await
            .expect(200, "far future"),
        current
    );

    // The same instant in another zone, percent-encoded or with its `+` sent raw
    let events = app.stream(&id).await;
    let at: DateTime<Utc> = events[2]["occurred_at"].as_str().unwrap().parse().unwrap();
    let in_casablanca = at
        .with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
    for raw in [in_casablanca.replace('+', "%2B"), in_casablanca.clone()] {
        let account = as_of(&app, &id, &raw).await.expect(200, &raw);
        assert_eq!(account["version"], 3, "{raw}");
        assert_eq!(account["balance"], "15.00", "{raw}");
    }

    // With min_version, the wait comes first, then the past is read
    let account = app
        .query_get(&format!(
            "/accounts/{id}?min_version={version}&wait_ms=1000&as_of={}",
            instant(&events[0], 0)
        ))
        .await
        .expect(200, "min_version and as_of");
    assert_eq!(account["version"], 1);
}

#[tokio::test]
async fn a_malformed_instant_is_refused_and_foreign_accounts_stay_hidden() {
    let app = spawn_app().await;
    let id = app.active_account("10.00", "MAD").await;
    for bad in [
        "2026-11-30T12:00:00",
        "2026-11-30",
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-11-30T25:00:00Z",
        "10000-01-01T00:00:00Z",
        "",
    ] {
        let reply = as_of(&app, &id, bad).await;
        assert_problem(&reply, 400, "invalid_request");
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("as_of"),
            "{bad}: {}",
            reply.body
        );
    }

    // Another customer's account is a 404 as of any instant, as it is now
    let stranger = customer_token("someone-else");
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let reply = app
        .query_as(Some(&stranger), &format!("/accounts/{id}?as_of={now}"))
        .await;
    assert_problem(&reply, 404, "not_found");
}
