//! Before the phases: the B1 and B1s databases, the command service, the projection's queue and the peer.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

use crate::broker::Broker;
use crate::context::{COMMAND, Ctx, QUERY};
use crate::peers::python::Peer;
use crate::report::Results;
use crate::{mariadb, pg};

/// Databases, the seeded accounts, the command service, the projection's queue and the peer.
pub(crate) async fn prepare(ctx: &mut Ctx, results: &mut Results) -> anyhow::Result<()> {
    if which("pgbench").is_none() {
        bail!("pgbench is not installed (Debian: postgresql-client)");
    }
    for binary in ["command-service"] {
        if !ctx.binary(binary).is_file() {
            bail!(
                "{} is missing; build the release binaries first (bench/run.sh does)",
                ctx.binary(binary).display()
            );
        }
    }
    ctx.broker = Some(Broker::connect(&ctx.opts.amqp).await?);

    progress!(
        "installing the peer (pip install \"eventsourcing[postgres]\" into target/bench/venv)"
    );
    match Peer::install(&ctx.opts.root.join("target/bench")).await {
        Ok(peer) => {
            results.peer.version = Some(peer.version.clone());
            ctx.peer = Some(peer);
        }
        Err(error) => results
            .failures
            .push(format!("peer installation: {error:#}")),
    }

    progress!("B1 and B1s databases with {} accounts", ctx.plan.accounts());
    let b1 = ctx.name("b1");
    ctx.pg_databases.push(b1.clone());
    pg::create_minimal_store(&ctx.opts.postgres, &b1, ctx.plan.accounts()).await?;
    let b1s = ctx.name("b1s");
    ctx.pg_databases.push(b1s.clone());
    let b1s_url = pg::database_url(&ctx.opts.postgres, &b1s);
    let store = event_store::EventStore::connect(&b1s_url, 2)
        .await
        .context("cannot create the B1s database with the event store's schema")?;
    pg::seed_accounts(store.pool(), 1, ctx.plan.accounts(), 2, false).await?;
    pg::analyze(store.pool()).await?;
    store.pool().close().await;

    progress!("starting the command service");
    let main = ctx.name("main");
    ctx.pg_databases.push(main.clone());
    let exchange = ctx.exchange();
    ctx.start_command(COMMAND, &main, &exchange).await?;
    ctx.main_pool = Some(pg::connect(&pg::database_url(&ctx.opts.postgres, &main), 2).await?);

    if ctx.has_query {
        progress!("starting the query service once, for its queue");
        ctx.mysql_databases.push(ctx.name("read"));
        ctx.spawn_query()?;
        ctx.wait_query().await?;
        ctx.stop(QUERY).await;
        ctx.read_pool = Some(
            mariadb::connect(&mariadb::database_url(&ctx.opts.mysql, &ctx.name("read"))).await?,
        );
    } else {
        results.notes.push(format!(
            "{} is missing: the relay publishes into a queue of the benchmark's own instead of the projection's.",
            ctx.binary("query-service").display()
        ));
        ctx.broker()?.declare_sink(&exchange, &ctx.sink()).await?;
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}
