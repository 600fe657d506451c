//! The HTTP middleware stack every service uses, and serving with graceful shutdown
//! within [`ConnectionLimits`] (header timeout, connection and in-flight bounds).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::backoff::Backoff;
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

/// Limits that keep slow or numerous clients from exhausting a replica. Flatten them
/// into a service's settings (`#[serde(flatten)] connections: ConnectionLimits`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ConnectionLimits {
    /// `HTTP_HEADER_TIMEOUT_SECS`: seconds a client has to send a request's headers,
    /// counted from the connection's start or the end of its previous response, so
    /// it is also how long an idle keep-alive connection is kept (default 10).
    pub http_header_timeout_secs: u64,
    /// `HTTP_MAX_CONNECTIONS`: open connections at most; beyond it new connections
    /// wait in the listen backlog until one closes (default 10,000).
    pub http_max_connections: usize,
    /// `HTTP_MAX_IN_FLIGHT`: requests being handled at most; the excess is answered at
    /// once with 503 `service_unavailable` and `Retry-After` (default 1,024). Health
    /// probes and metrics are never refused.
    pub http_max_in_flight: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            http_header_timeout_secs: 10,
            http_max_connections: 10_000,
            http_max_in_flight: 1_024,
        }
    }
}

impl ConnectionLimits {
    fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.http_header_timeout_secs.max(1))
    }

    fn max_connections(&self) -> usize {
        self.http_max_connections.clamp(1, Semaphore::MAX_PERMITS)
    }

    fn max_in_flight(&self) -> usize {
        self.http_max_in_flight.clamp(1, Semaphore::MAX_PERMITS)
    }
}

/// Seconds a client shed for overload is asked to wait.
const OVERLOAD_RETRY_AFTER_SECS: u64 = 1;

/// Serves `app` on `listener` with the default [`ConnectionLimits`] until `shutdown`
/// is cancelled, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with_limits(listener, app, shutdown, &ConnectionLimits::default()).await
}

/// Serves `app` on `listener` within `limits` until `shutdown` is cancelled; then
/// stops accepting, lets in-flight requests finish, closes idle connections and
/// returns once every connection is closed.
pub async fn serve_with_limits(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    limits: &ConnectionLimits,
) -> std::io::Result<()> {
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight()));
    let service =
        TowerToHyperService::new(app.layer(middleware::from_fn_with_state(in_flight, shed_excess)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(limits.max_connections()));
    let graceful = GracefulShutdown::new();
    let mut accept_backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) if is_per_connection(&error) => continue,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept connections; pausing");
                    if !accept_backoff.wait(&shutdown).await {
                        break;
                    }
                    continue;
                }
            },
        };
        accept_backoff.reset();
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Accept errors that concern one connection only: accept the next at once.
fn is_per_connection(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Answers 503 at once when `in_flight` has no permit left; health probes and
/// metrics always pass, so an overloaded replica is not restarted for it.
async fn shed_excess(
    State(in_flight): State<Arc<Semaphore>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path.starts_with("/health/") || path == "/metrics" {
        return next.run(request).await;
    }
    let Ok(_permit) = in_flight.try_acquire() else {
        metrics::counter!("http_requests_shed_total").increment(1);
        let mut response = Problem::new(
            ErrorCode::ServiceUnavailable,
            "too many requests in progress; retry later",
        )
        .into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(OVERLOAD_RETRY_AFTER_SECS),
        );
        return response;
    };
    next.run(request).await
}
