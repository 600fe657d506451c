//! Live updates: `GET /accounts/{id}/updates` as Server-Sent Events.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::auth::{admin_token, customer_token};
use test_support::http::assert_problem;

use crate::helpers::{TestApp, spawn_app};

/// One `account` message of a stream.
#[derive(Debug)]
struct Message {
    id: u64,
    account: Value,
    received: Instant,
}

/// A client's end of an update stream, parsed as it arrives.
struct UpdateStream {
    response: reqwest::Response,
    buffer: String,
    comments: usize,
}

impl UpdateStream {
    async fn open(app: &TestApp, id: &str, last_event_id: Option<&str>) -> Self {
        let mut request = app
            .client
            .get(format!("{}/accounts/{id}/updates", app.query))
            .bearer_auth(admin_token());
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("cannot open the stream: {error}"));
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next message within `within`; `None` when the stream ended or nothing came.
    async fn next(&mut self, within: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                let mut event = None;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().parse().ok();
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = serde_json::from_str(value.trim()).ok();
                    }
                }
                if let (Some(id), Some(account)) = (id, data) {
                    assert_eq!(event.as_deref(), Some("account"));
                    return Some(Message {
                        id,
                        account,
                        received: Instant::now(),
                    });
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(Ok(None) | Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Whether the server ended the stream within `within`.
    async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return true,
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }
}

#[tokio::test]
async fn a_stream_starts_with_the_account_and_gets_every_version_as_it_is_projected() {
    // Given an active account and a client listening to its updates
    let app = spawn_app().await;
    let id = app.active_account("100.00", "MAD").await;
    app.account_at(&id, 2).await;
    let mut stream = UpdateStream::open(&app, &id, None).await;
    let first = stream
        .next(Duration::from_secs(5))
        .await
        .expect("the current account");
    assert_eq!((first.id, &first.account["version"]), (2, &json!(2)));
    assert_eq!(first.account["status"], "ACTIVE");

    let mut delays = Vec::new();
    for (step, amount) in ["10.00", "20.00", "30.00"].iter().enumerate() {
        // When a credit is projected, woken like a `min_version` read
        let version = app.command(&id, "credit", json!({"amount": amount})).await;
        let waiter = app.account_at(&id, version).await;
        let read_at = Instant::now();
        // Then the stream pushes the account at that version, at once
        let message = stream
            .next(Duration::from_secs(5))
            .await
            .expect("an update");
        assert_eq!(message.id, version);
        assert_eq!(message.account, waiter);
        assert_eq!(message.account["version"], 3 + step);
        delays.push(message.received.saturating_duration_since(read_at));
    }
    // The best of three, so that a loaded machine's pauses do not decide.
    let fastest = delays.iter().min().copied().unwrap_or_default();
    assert!(
        fastest < Duration::from_millis(50),
        "pushed {delays:?} after a read woken by the same projection saw it"
    );

    // Several commands in a row arrive one message per version, in order
    let mut last = 5;
    for _ in 0..5 {
        last = app.command(&id, "debit", json!({"amount": "1.00"})).await;
    }
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let message = stream
            .next(Duration::from_secs(5))
            .await
            .expect("an update");
        seen.push(message.id);
    }
    assert_eq!(seen, (6..=last).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_stream_resumes_after_the_last_event_id() {
    let app = spawn_app().await;
    let id = app.active_account("50.00", "EUR").await;
    let mut version = 2;
    for _ in 0..3 {
        version = app.command(&id, "credit", json!({"amount": "1"})).await;
    }
    app.account_at(&id, version).await;

    // Resuming after version 2 sends versions 3, 4 and 5, each as it stood
    let mut resumed = UpdateStream::open(&app, &id, Some("2")).await;
    for (expected, balance) in [(3, "51.00"), (4, "52.00"), (5, "53.00")] {
        let message = resumed
            .next(Duration::from_secs(5))
            .await
            .expect("a version");
        assert_eq!(message.id, expected);
        assert_eq!(message.account["balance"], balance);
    }
    // Up to date: nothing more until the next version
    assert!(resumed.next(Duration::from_millis(300)).await.is_none());

    // A Last-Event-ID that is the current version sends nothing until the next one
    let mut current = UpdateStream::open(&app, &id, Some("5")).await;
    assert!(current.next(Duration::from_millis(300)).await.is_none());
    let next = app.command(&id, "debit", json!({"amount": "3"})).await;
    let message = current
        .next(Duration::from_secs(5))
        .await
        .expect("the next version");
    assert_eq!(
        (message.id, &message.account["balance"]),
        (next, &json!("50.00"))
    );

    // One that is not a number, or beyond the current version, starts from the current state
    for last in ["abc", "-1", "99", "1.5"] {
        let mut stream = UpdateStream::open(&app, &id, Some(last)).await;
        let message = stream
            .next(Duration::from_secs(5))
            .await
            .expect("the current account");
        assert_eq!(message.id, next, "Last-Event-ID {last}");
    }
}

#[tokio::test]
async fn a_client_far_behind_is_skipped_ahead_to_the_latest_state() {
    // Given an account 110 versions long
    let app = spawn_app().await;
    let id = app.active_account("0.00", "MAD").await;
    let mut version = 2;
    for _ in 0..108 {
        version = app.command(&id, "credit", json!({"amount": "1"})).await;
    }
    app.account_at(&id, version).await;

    // When a client resumes from more than 100 versions back
    let mut stream = UpdateStream::open(&app, &id, Some("3")).await;

    // Then it gets the latest state at once, not the 107 versions in between
    let message = stream
        .next(Duration::from_secs(5))
        .await
        .expect("the latest state");
    assert_eq!(
        (message.id, &message.account["balance"]),
        (version, &json!("108.00"))
    );
    assert!(stream.next(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn unknown_and_foreign_accounts_are_refused_before_any_stream() {
    let app = spawn_app().await;
    let id = app.active_account("1.00", "MAD").await;
    let unknown = uuid::Uuid::new_v4();
    assert_problem(
        &app.query_get(&format!("/accounts/{unknown}/updates")).await,
        404,
        "not_found",
    );
    assert_problem(
        &app.query_as(
            Some(&customer_token("mallory")),
            &format!("/accounts/{id}/updates"),
        )
        .await,
        404,
        "not_found",
    );
    assert_problem(
        &app.query_as(None, &format!("/accounts/{id}/updates")).await,
        401,
        "unauthorized",
    );
    assert_problem(
        &app.query_get("/accounts/not-a-uuid/updates").await,
        400,
        "invalid_request",
    );
}

#[tokio::test]
async fn shutting_down_ends_every_open_stream() {
    let app = spawn_app().await;
    let id = app.active_account("1.00", "MAD").await;
    app.account_at(&id, 2).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = UpdateStream::open(&app, &id, None).await;
        stream
            .next(Duration::from_secs(5))
            .await
            .expect("the current account");
        streams.push(stream);
    }
    let ended = tokio::spawn(async move {
        let mut ended = 0;
        for mut stream in streams {
            if stream.ends_within(Duration::from_secs(8)).await {
                ended += 1;
            }
        }
        ended
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // `stop` fails the test unless the service stops within 10 s
    app.stop().await;
    assert_eq!(ended.await.unwrap(), 20, "every stream ends cleanly");
}
