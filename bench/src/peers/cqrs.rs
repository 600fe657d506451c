//! The Rust peer: `cqrs-peer` (`bench/cqrs-peer`), cqrs-es and postgres-es behind axum
//! with the command service's paths and bodies, started from its release binary like the
//! services and loaded by the same HTTP load generator.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;

use crate::context::Ctx;
use crate::load::{Conn, Target};
use crate::pg;
use crate::procs::Service;

/// The peer's role among the run's processes.
pub(crate) const ROLE: &str = "cqrs-es peer";
/// Its binary, built by `bench/run.sh` next to the services'.
const BINARY: &str = "cqrs-peer";
/// Connections seeding the accounts.
const SEED_CONNECTIONS: usize = 16;

/// Starts the peer on `database` (an existing, empty database; the peer makes its tables)
/// and waits until it answers.
pub(crate) async fn start(ctx: &mut Ctx, database: &str) -> anyhow::Result<()> {
    let binary = ctx.binary(BINARY);
    let env = [(
        "DATABASE_URL",
        pg::database_url(&ctx.opts.postgres, database),
    )];
    let log = ctx.dir.join(format!("{BINARY}.log"));
    let mut service = Service::start(ROLE, &binary, &[], &env, &log)?;
    service
        .wait_ready(&ctx.http, Duration::from_secs(60))
        .await?;
    ctx.services.insert(ROLE, service);
    Ok(())
}

/// Opens and activates the seeded accounts `1..=count` through the peer's own requests
/// (with 1000.00 MAD, as `pg::seed_accounts` seeds the service's).
pub(crate) async fn seed(target: &Target, count: u64) -> anyhow::Result<()> {
    let ids: Vec<String> = (1..=count).map(pg::account_id).collect();
    let per_connection = ids.len().div_ceil(SEED_CONNECTIONS).max(1);
    let mut workers = JoinSet::new();
    for chunk in ids.chunks(per_connection) {
        let chunk = chunk.to_vec();
        let mut conn = Conn::open(target).await?;
        workers.spawn(async move {
            for id in chunk {
                conn.open_account(&id, "1000.00")
                    .await
                    .context("the peer refused to open an account")?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a seeding worker panicked")??;
    }
    Ok(())
}

/// `cqrs-es 0.5.0 + postgres-es 0.5.0`, as locked in `Cargo.lock` under `root`.
pub(crate) fn versions(root: &Path) -> Option<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).ok()?;
    let version = |name: &str| {
        let header = format!("name = \"{name}\"\nversion = \"");
        let start = lock.find(&header)? + header.len();
        let length = lock[start..].find('"')?;
        Some(format!("{name} {}", &lock[start..start + length]))
    };
    Some(format!(
        "{} + {}",
        version("cqrs-es")?,
        version("postgres-es")?
    ))
}
