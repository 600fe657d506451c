//! The HTTP middleware stack every service uses, and serving with graceful shutdown.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::extract::MAX_BODY_BYTES;
use crate::{ErrorCode, Problem};

/// Header carrying the request id, which is also the correlation id of every event
/// and message the request causes.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps a service's routes with the common stack: request id, tracing span,
/// metrics, body limit, timeout, panic-to-problem, and problem documents for
/// unknown routes and methods.
pub fn with_common_layers(routes: Router) -> Router {
    routes
        .fallback(|| async { Problem::not_found("no such resource") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                ErrorCode::MethodNotAllowed,
                "this method is not allowed on this resource",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(record_metrics))
        .layer(CatchPanicLayer::custom(|_| {
            Problem::internal(&"handler panicked").into_response()
        }))
        .layer(middleware::from_fn(time_limit))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let request_id = request
                    .extensions()
                    .get::<RequestId>()
                    .and_then(|id| id.header_value().to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id,
                )
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// A service's whole HTTP application: its own routes, the operational routes
/// (health with `probe`, metrics, `openapi`, docs) and the common layers.
pub fn application(
    routes: Router,
    probe: std::sync::Arc<dyn crate::ops::ReadinessProbe>,
    openapi: utoipa::openapi::OpenApi,
) -> Router {
    with_common_layers(routes.merge(crate::ops::routes(probe, openapi)))
}

/// Binds the HTTP listener (port 0 picks a free port).
pub async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))
}

/// The request id of a request (set by [`with_common_layers`]).
pub fn request_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.chars().take(128).collect())
}

/// Longest a request may take before it is answered with a 503 problem document.
const REQUEST_TIME_LIMIT: Duration = Duration::from_secs(30);

async fn time_limit(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIME_LIMIT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            ErrorCode::ServiceUnavailable,
            "the request took too long; retry later",
        )
        .into_response(),
    }
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains in-flight
/// requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
