//! Outages of the broker or of the read model's database, cut through a proxy so that
//! the shared servers stay up for the other tests.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Options, eventually, spawn_app_with};
use crate::proxy::TcpProxy;

#[tokio::test]
async fn reads_go_on_while_the_broker_is_away_and_projection_resumes_after() {
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(Options {
        follow_feed: false,
        query_amqp_url: format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port),
        ..Options::default()
    })
    .await;
    app.wait_for_broker().await;
    let id = app.active_account("1.00", "MAD").await;
    app.account_at(&id, 2).await;

    proxy.cut();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let ready = app.query_get("/health/ready").await;
            ready.status == 200 && ready.body["broker"] == "down"
        })
        .await,
        "ready, with the broker reported down"
    );
    let version = app.command(&id, "credit", json!({"amount": "2.00"})).await;
    assert!(
        eventually(Duration::from_secs(10), || async { proxy.refused() >= 2 }).await,
        "the consumer keeps trying to reconnect during the outage ({} refused)",
        proxy.refused()
    );
    let reply = app.query_get(&format!("/accounts/{id}")).await;
    assert_eq!(reply.status, 200, "reads are served during the outage");
    assert_eq!(
        (&reply.body["version"], &reply.body["balance"]),
        (&json!(2), &json!("1.00")),
        "the read served during the outage is the state before the credit"
    );

    proxy.restore();
    let account = app.account_at(&id, version).await;
    assert_eq!(account["balance"], "3.00");
    app.stop().await;
}

#[tokio::test]
async fn a_database_outage_is_retried_and_never_dead_letters() {
    let proxy = TcpProxy::start("127.0.0.1:3306").await;
    let app = spawn_app_with(Options {
        follow_feed: false,
        query_mysql_server: format!("mysql://root@127.0.0.1:{}", proxy.port),
        ..Options::default()
    })
    .await;
    let id = app.active_account("1.00", "MAD").await;
    app.account_at(&id, 2).await;

    proxy.cut();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let ready = app.query_get("/health/ready").await;
            ready.status == 503 && ready.body["database"] == "down"
        })
        .await,
        "unready while the database is away"
    );
    let reply = app.query_get(&format!("/accounts/{id}")).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.body["code"], "service_unavailable");
    let retries = app_retries(&app).await;
    let version = app.command(&id, "credit", json!({"amount": "2.00"})).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app_retries(&app).await > retries
        })
        .await,
        "the consumer tried to project the credit, failed and put it back to retry"
    );

    proxy.restore();
    let account = app.account_at(&id, version).await;
    assert_eq!(account["balance"], "3.00");
    assert!(
        app.dead_letters().await.is_empty(),
        "nothing was dead-lettered"
    );
    assert_eq!(app.query_get("/health/ready").await.status, 200);
    app.stop().await;
}

/// Messages the consumer put back to the queue after a failed projection (the
/// process's counter: other tests may add to it, never take from it).
async fn app_retries(app: &crate::helpers::TestApp) -> f64 {
    app.metric("projection_retries_total", &[]).await
}
