//! `cqrs-peer`: the service a user choosing a Rust event store would write instead of
//! ours, for the benchmark to measure beside the command service. An account aggregate
//! (`account`) on cqrs-es 0.5, persisted by postgres-es 0.5 with the library's defaults
//! (`default_postgress_pool`, `postgres_cqrs`: events only, no snapshots, no query
//! processors), behind axum (`http`) with the command service's request paths and bodies.
//!
//! Settings from the environment, like the command service's: `DATABASE_URL` (required;
//! the database must exist, the library's tables are created when missing), `HTTP_HOST`
//! (default 127.0.0.1), `HTTP_PORT` (default 8080), `RUST_LOG`, `LOG_FORMAT=json`.
//! SIGTERM or Ctrl-C stops it after the requests in flight.

mod account;
mod http;
#[cfg(test)]
mod tests;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// The library's tables (postgres-es `db/init.sql`).
const SCHEMA: &str = include_str!("schema.sql");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let host = std::env::var("HTTP_HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let port = std::env::var("HTTP_PORT").unwrap_or_else(|_| "8080".to_owned());

    let app = app(&url).await?;
    let listener = TcpListener::bind(format!("{host}:{port}"))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    tracing::info!(address = %listener.local_addr()?, "cqrs-peer listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(stopped())
        .await
        .context("the server failed")
}

/// The routes over the database at `url`, its tables created when missing.
async fn app(url: &str) -> anyhow::Result<Router> {
    let pool = postgres_es::default_postgress_pool(url).await;
    sqlx_08::raw_sql(SCHEMA)
        .execute(&pool)
        .await
        .context("cannot create the events and snapshots tables")?;
    Ok(http::router(postgres_es::postgres_cqrs(
        pool,
        Vec::new(),
        (),
    )))
}

fn init_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stopped() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
