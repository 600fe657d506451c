//! `/metrics` speaks Prometheus histograms: latencies come as cumulative buckets that
//! add up across replicas, not as per-process quantiles.

use axum::Router;
use axum::routing::get;
use service_kit::amqp::BrokerStatus;
use service_kit::http::{ConnectionLimits, serve_with_limits};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn request_durations_are_exposed_as_histogram_buckets() {
    let routes = Router::new().route("/ok", get(|| async { "ok" }));
    let probe = service_kit::ops::database_and_broker(|| async { true }, BrokerStatus::new("up"));
    let app = service_kit::http::application(routes, probe, utoipa::openapi::OpenApi::default());
    let listener = service_kit::http::bind("127.0.0.1", 0).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let served = tokio::spawn(async move {
        serve_with_limits(listener, app, stop, &ConnectionLimits::default()).await
    });
    let client = reqwest::Client::new();
    let ok = client
        .get(format!("http://{addr}/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let bucket = |le: &str| {
        format!(r#"http_request_duration_seconds_bucket{{method="GET",route="/ok",le="{le}"}} 1"#)
    };
    for le in ["10", "+Inf"] {
        assert!(
            metrics.contains(&bucket(le)),
            "no bucket le={le} in:\n{metrics}"
        );
    }
    assert!(metrics.contains(r#"http_request_duration_seconds_count{method="GET",route="/ok"} 1"#));
    assert!(
        !metrics.contains("quantile="),
        "a summary is still exposed:\n{metrics}"
    );
    shutdown.cancel();
    served.await.unwrap().unwrap();
}
