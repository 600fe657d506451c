//! What the broker may hand the query service: duplicates, reordering, and junk that
//! can never be applied, forged messages from a user other than the command service's
//! included.

use std::time::{Duration, Instant};

use e2e_tests::StackConfig;
use lapin::BasicProperties;
use reqwest::Url;
use serde_json::{Value, json};
use test_support::Broker;
use test_support::amqp::{correlation_header, json_properties, routing_key};
use test_support::servers::amqp_url;
use uuid::Uuid;

/// A message that can never be applied, and why.
struct Junk {
    what: &'static str,
    routing_key: String,
    body: Vec<u8>,
    /// Published with the publisher's `user_id`, as the relay does; otherwise without.
    trusted: bool,
}

/// The broker user of the tests' connection: the command service's, hence the only
/// publisher the query service trusts (`AMQP_PUBLISHER_USER` defaults to it).
#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure here is the test's failure"
)]
fn publisher() -> String {
    Url::parse(&amqp_url()).unwrap().username().to_owned()
}

/// The properties the relay gives an event: JSON, persistent, `message_id`, `type`,
/// the `correlation_id` header when there is one, and its broker user as `user_id`.
fn relay_properties(event: &Value) -> BasicProperties {
    let mut properties = json_properties()
        .with_message_id(event["event_id"].as_str().unwrap_or_default().into())
        .with_type(event["type"].as_str().unwrap_or_default().into())
        .with_user_id(publisher().into());
    if let Some(correlation_id) = event["metadata"]["correlation_id"].as_str() {
        properties = properties.with_headers(correlation_header(correlation_id));
    }
    properties
}

#[expect(
    clippy::unwrap_used,
    reason = "a test helper: a failure here is the test's failure"
)]
fn junk(what: &'static str, event: &Value) -> Junk {
    Junk {
        what,
        routing_key: routing_key(event["type"].as_str().unwrap_or("AccountCredited")),
        body: serde_json::to_vec(event).unwrap(),
        trusted: true,
    }
}

/// Junk aimed at `quiet`, an active MAD account at `version` that gets no more
/// commands, so that each piece claims to be its next event; `credit` is a real credit
/// event of another account.
fn junk_for(quiet: &Value, version: u64, credit: &Value) -> Vec<Junk> {
    let next = |kind: &str, data: Value| {
        let mut event = quiet.clone();
        event["event_id"] = json!(Uuid::new_v4());
        event["version"] = json!(version + 1);
        event["type"] = json!(kind);
        event["data"] = data;
        event
    };
    let movement = |amount: &str, currency: &str, balance: &str| json!({"amount": amount, "currency": currency, "balance": balance});
    let mut stolen_id = next("AccountCredited", movement("1.00", "MAD", "1.00"));
    stolen_id["event_id"] = credit["event_id"].clone();
    let mut version_zero = next("AccountCredited", movement("1.00", "MAD", "1.00"));
    version_zero["version"] = json!(0);
    let mut future_schema = next("AccountCredited", movement("1.00", "MAD", "1.00"));
    future_schema["schema_version"] = json!(99);
    let mut not_a_uuid = next("AccountCredited", movement("1.00", "MAD", "1.00"));
    not_a_uuid["account_id"] = json!("not-a-uuid");
    let mut unknown_account = next("AccountCredited", movement("1.00", "MAD", "1.00"));
    unknown_account["account_id"] = json!(Uuid::new_v4());
    unknown_account["version"] = json!(3);
    vec![
        Junk {
            what: "a body that is not JSON",
            routing_key: "account.credited".into(),
            body: b"\xff\xfe not json {".to_vec(),
            trusted: true,
        },
        Junk {
            what: "JSON that is not an event",
            routing_key: "account.credited".into(),
            body: br#"{"hello": "world"}"#.to_vec(),
            trusted: true,
        },
        junk("an unknown event type", &next("AccountFrozen", json!({}))),
        junk("an unsupported schema version", &future_schema),
        junk("version 0 (versions are 1-based)", &version_zero),
        junk("an account id that is not a UUID", &not_a_uuid),
        junk(
            "a negative amount",
            &next("AccountCredited", movement("-5.00", "MAD", "95.00")),
        ),
        junk(
            "more fraction digits than the currency has",
            &next("AccountCredited", movement("1.5", "JPY", "101.5")),
        ),
        junk(
            "a negative balance",
            &next("AccountDebited", movement("1.00", "MAD", "-1.00")),
        ),
        junk(
            "a movement in another currency than the account's",
            &next("AccountCredited", movement("5.00", "EUR", "105.00")),
        ),
        junk("the event id of another account's credit", &stolen_id),
        junk(
            "a gap on an account the command service does not know",
            &unknown_account,
        ),
        Junk {
            trusted: false,
            ..junk(
                "a well-formed next credit from a publisher other than the command service",
                &next(
                    "AccountCredited",
                    movement("1000000.00", "MAD", "1000100.00"),
                ),
            )
        },
    ]
}

#[tokio::test]
async fn duplicates_reordering_and_junk_leave_the_read_model_exact_and_junk_dead_lettered() {
    // The feed follower is off: only the broker path can carry events, so a consumer
    // blocked by junk would show as reads that never catch up.
    let stack = StackConfig::default()
        .query_setting("FEED_FOLLOW_ENABLED", "false")
        .start()
        .await;
    let broker = Broker::connect().await;
    stack.wait_for_consumer(&broker).await;

    // Given accounts with histories, all projected, and a quiet account.
    let mut ids = Vec::new();
    for (currency, initial, amount) in [
        ("MAD", "100.00", "10.25"),
        ("JPY", "500", "75"),
        ("KWD", "2.500", "0.125"),
    ] {
        let account = stack.active_account(initial, currency).await;
        for verb in ["credit", "debit", "credit", "credit", "debit"] {
            stack
                .act(&account.id, verb, json!({"amount": amount}))
                .await;
        }
        ids.push(account.id);
    }
    let quiet = stack.active_account("100.00", "MAD").await;
    ids.push(quiet.id.clone());
    stack.assert_read_model_exact(&ids).await;
    let feed = stack.feed().await;
    let quiet_event = feed
        .iter()
        .rev()
        .find(|event| event["account_id"] == quiet.id.as_str())
        .unwrap();
    let credit = feed
        .iter()
        .find(|event| event["type"] == "AccountCredited")
        .unwrap();

    // When junk comes first, then every real event three more times, out of order...
    let junk = junk_for(quiet_event, quiet.version, credit);
    for piece in &junk {
        let mut properties =
            BasicProperties::default().with_content_type("application/json".into());
        if piece.trusted {
            properties = properties.with_user_id(publisher().into());
        }
        broker
            .publish(
                &stack.names.exchange,
                &piece.routing_key,
                &piece.body,
                properties,
            )
            .await;
    }
    let mut reversed = feed.clone();
    reversed.reverse();
    let mut rotated = feed.clone();
    rotated.rotate_left(feed.len() / 2);
    let interleaved: Vec<Value> = feed
        .iter()
        .skip(1)
        .step_by(2)
        .chain(feed.iter().step_by(2))
        .cloned()
        .collect();
    for round in [reversed, rotated, interleaved] {
        for event in &round {
            let kind = event["type"].as_str().unwrap_or_default();
            let body = serde_json::to_vec(event).unwrap();
            broker
                .publish(
                    &stack.names.exchange,
                    &routing_key(kind),
                    &body,
                    relay_properties(event),
                )
                .await;
        }
    }
    // ...and new commands follow.
    for id in &ids[..3] {
        stack.act(id, "credit", json!({"amount": "1"})).await;
    }

    // Then the good messages got through: every account is exact...
    stack.assert_read_model_exact(&ids).await;
    let listed = stack.pages("/accounts?limit=500", "accounts").await;
    assert_eq!(
        listed.iter().flatten().count(),
        ids.len(),
        "junk made no account appear"
    );
    // ...and the junk, all of it and nothing else, sits in the dead-letter queue.
    let dead_letters = stack.names.dead_letter_queue();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut depth = None;
    while Instant::now() < deadline {
        depth = broker.depth(&dead_letters).await;
        let drained = stack.projection_backlog(&broker).await == Some(0);
        if drained && depth.is_some_and(|d| d.messages as usize >= junk.len()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let whats: Vec<&str> = junk.iter().map(|piece| piece.what).collect();
    assert_eq!(
        depth.map(|d| d.messages as usize),
        Some(junk.len()),
        "dead letters for the junk: {whats:#?}\n{}",
        stack.log_tails()
    );
    let mut dead: Vec<Vec<u8>> = broker.drain(&dead_letters).await;
    let mut sent: Vec<Vec<u8>> = junk.into_iter().map(|piece| piece.body).collect();
    dead.sort();
    sent.sort();
    assert!(
        dead == sent,
        "the dead-letter queue holds exactly the junk, as sent"
    );
    broker.close().await;
}
