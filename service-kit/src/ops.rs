//! Operational endpoints: `/health/live`, `/health/ready`, `/metrics`,
//! `/openapi.json` and `/docs` (Swagger UI, assets vendored in the binary).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use utoipa_swagger_ui::SwaggerUi;

/// Reports each dependency as up or down; the service is ready when the
/// dependencies marked required are up.
pub trait ReadinessProbe: Send + Sync + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = Vec<Dependency>> + Send + '_>>;
}

/// One dependency's state in the readiness report.
#[derive(Debug, Clone)]
pub struct Dependency {
    pub name: &'static str,
    /// `"up"`, `"down"`, or another word for a state that is neither (`"standby"`).
    pub state: &'static str,
    /// Whether the service is unready unless this dependency is up.
    pub required: bool,
}

/// The probe of a service with one database (required) and one broker (reported,
/// never required: commands and reads go on without it).
pub fn database_and_broker<F, Fut>(
    ping: F,
    broker: crate::amqp::BrokerStatus,
) -> Arc<dyn ReadinessProbe>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    Arc::new(DatabaseAndBroker { ping, broker })
}

struct DatabaseAndBroker<F> {
    ping: F,
    broker: crate::amqp::BrokerStatus,
}

impl<F, Fut> ReadinessProbe for DatabaseAndBroker<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    fn check(&self) -> Pin<Box<dyn Future<Output = Vec<Dependency>> + Send + '_>> {
        let database = (self.ping)();
        Box::pin(async move {
            vec![
                Dependency {
                    name: "database",
                    state: if database.await { "up" } else { "down" },
                    required: true,
                },
                Dependency {
                    name: "broker",
                    state: self.broker.describe(),
                    required: false,
                },
            ]
        })
    }
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Bucket bounds, in seconds, of every histogram whose name ends in `_seconds`:
/// Prometheus histograms (not summaries), so that replicas' figures add up.
pub const SECONDS_BUCKETS: [f64; 24] = [
    0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.0075, 0.009, 0.01, 0.0125, 0.015, 0.02,
    0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of the batch-size histograms ([`BATCH_SIZE_METRICS`]).
pub const BATCH_SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The histograms counting items per batch.
pub const BATCH_SIZE_METRICS: [&str; 2] = ["command_batch_size", "projection_batch_size"];

/// The recorder's builder: histograms with [`SECONDS_BUCKETS`] and
/// [`BATCH_SIZE_BUCKETS`]; other histograms stay summaries.
#[expect(
    clippy::expect_used,
    reason = "start-up; the bucket lists are constant and not empty, the builder's only refusal"
)]
fn builder() -> PrometheusBuilder {
    let sizes = BATCH_SIZE_METRICS
        .iter()
        .map(|name| (Matcher::Full((*name).to_owned()), &BATCH_SIZE_BUCKETS[..]));
    std::iter::once((Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS[..]))
        .chain(sizes)
        .fold(PrometheusBuilder::new(), |builder, (matcher, buckets)| {
            builder
                .set_buckets_for_metric(matcher, buckets)
                .expect("non-empty buckets")
        })
}

/// How often the recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
///
/// The recorder keeps every histogram sample until an upkeep folds it into the
/// buckets; a thread of its own does that every [`METRICS_UPKEEP`], so that memory
/// stays flat whether or how often `/metrics` is scraped. Without it the command
/// service grew by about 20 MiB over `bench/run.sh`'s cqrs-es runs (8,000 credits
/// a second, seven samples each).
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = builder().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, in which case
            // this handle just renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            let upkept = handle.clone();
            let upkeep = std::thread::Builder::new()
                .name("metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP);
                        upkept.run_upkeep();
                    }
                });
            if let Err(error) = upkeep {
                tracing::warn!(error = %error, "no metrics upkeep thread; histograms are folded only when /metrics is scraped");
            }
            handle
        })
        .clone()
}

/// utoipa documents an optional body (`Option<T>`) as "`null` or `T`"; the services take
/// no body or a `T`, never `null`, so the `null` branch is dropped.
fn without_null_bodies(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{Schema, SchemaType, Type};
    let is_null = |schema: &RefOr<Schema>| {
        matches!(schema, RefOr::T(Schema::Object(object))
            if object.schema_type == SchemaType::Type(Type::Null))
    };
    let operations = openapi
        .paths
        .paths
        .values_mut()
        .flat_map(|item| [&mut item.post, &mut item.put, &mut item.patch])
        .flatten();
    for operation in operations {
        let Some(RefOr::T(body)) = operation.request_body.as_mut() else {
            continue;
        };
        for content in body.content.values_mut() {
            let RefOr::T(content) = content else {
                continue;
            };
            if let Some(RefOr::T(Schema::OneOf(one_of))) = &mut content.schema
                && one_of.items.iter().any(is_null)
            {
                one_of.items.retain(|item| !is_null(item));
                if one_of.items.len() == 1 {
                    content.schema = one_of.items.pop();
                }
            }
        }
    }
    openapi
}

/// Routes for health, metrics and API documentation.
pub fn routes(probe: Arc<dyn ReadinessProbe>, openapi: utoipa::openapi::OpenApi) -> Router {
    let openapi = without_null_bodies(openapi);
    let metrics = metrics_handle();
    Router::new()
        .route(
            "/health/live",
            get(|| async { axum::Json(serde_json::json!({"status": "up"})) }),
        )
        .route(
            "/health/ready",
            get(move || {
                let probe = Arc::clone(&probe);
                async move {
                    let dependencies = probe.check().await;
                    let ready = dependencies.iter().all(|d| d.state == "up" || !d.required);
                    let report: BTreeMap<_, _> =
                        dependencies.iter().map(|d| (d.name, d.state)).collect();
                    let status = if ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(report))
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    metrics.run_upkeep();
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                        .into_response()
                }
            }),
        )
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
}
