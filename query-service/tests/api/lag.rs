//! Measures how long after a command's response its effect is readable (run with
//! `cargo test -p query-service --test api -- --ignored --nocapture lag`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn projection_lag_after_a_command() {
    let app = spawn_app().await;
    let id = app.active_account("0", "EUR").await;
    app.account_at(&id, 2).await;
    let mut lags = Vec::new();
    for _ in 0..300 {
        let version = app.command(&id, "credit", json!({"amount": "0.01"})).await;
        let answered = Instant::now();
        app.account_at(&id, version).await;
        lags.push(answered.elapsed());
    }
    lags.sort();
    let at = |percent: usize| lags[(lags.len() - 1) * percent / 100];
    eprintln!(
        "read-your-write lag over {} commands: median {:?}, p95 {:?}, max {:?}",
        lags.len(),
        at(50),
        at(95),
        lags[lags.len() - 1]
    );
    assert!(at(50) < Duration::from_secs(1));
    app.stop().await;
}
