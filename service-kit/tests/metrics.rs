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

#[test]
fn histogram_samples_are_folded_by_a_thread_of_their_own_whether_or_not_metrics_are_scraped() {
    // Given the recorder installed
    let _handle = service_kit::ops::metrics_handle();

    // Then the process runs the thread that folds recorded samples into their buckets,
    // so that they do not pile up between scrapes (a new thread names itself once it
    // runs, so its name may show a moment after it is spawned)
    let thread_names = || -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut threads = thread_names();
    while !threads.iter().any(|name| name == "metrics-upkeep")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
        threads = thread_names();
    }
    assert!(
        threads.iter().any(|name| name == "metrics-upkeep"),
        "threads: {threads:?}"
    );
}
