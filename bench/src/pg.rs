//! Postgres: the benchmark's databases, and bulk seeding of valid account streams.
//!
//! Seeded streams are what the command service itself would have written: `AccountCreated`
//! (1000.00 MAD), `AccountActivated`, then credits of 1.00 each carrying the balance after
//! them, and the stream row with the snapshot of the `Account` after the last event
//! (`{"status", "balance": {"amount", "currency"}, "version"}`, snapshot schema 1).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

/// Channel the store notifies after appends commit; the relay listens on it.
const APPEND_CHANNEL: &str = "bank_outbox";
/// The lock every append holds, keyed by its backend, from before its events take their
/// positions until it ends (readers wait for it before reading up to those positions).
pub(crate) const APPEND_GATE_LOCK: &str =
    "SELECT pg_advisory_xact_lock(730595463, pg_backend_pid())";

/// The id of seeded account `n`: `00000000-0000-4000-8000-<n as 12 hex digits>`.
pub(crate) fn account_id(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// The same id, as a SQL expression over a bigint column or variable.
pub(crate) fn sql_account_id(n: &str) -> String {
    format!("('00000000-0000-4000-8000-' || lpad(to_hex({n}), 12, '0'))::uuid")
}

/// `server/name` from a server URL without a path and a database name.
pub(crate) fn database_url(server: &str, name: &str) -> String {
    format!("{}/{name}", server.trim_end_matches('/'))
}

pub(crate) async fn connect(url: &str, max: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to Postgres database {}", redact(url)))
}

pub(crate) async fn server_version(server: &str) -> anyhow::Result<String> {
    let mut conn = PgConnection::connect(&database_url(server, "postgres")).await?;
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(version.split(" on ").next().unwrap_or(&version).to_owned())
}

/// Creates an empty database (for the peer, whose library makes its own tables).
pub(crate) async fn create_database(server: &str, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let mut conn = PgConnection::connect(&database_url(server, "postgres")).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Drops a database, closing whatever is still connected to it.
pub(crate) async fn drop_database(server: &str, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let mut conn = PgConnection::connect(&database_url(server, "postgres")).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!("refusing database name {name:?}");
    }
    Ok(())
}

/// What a seeding inserted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seeded {
    pub events: u64,
    pub took: Duration,
}

/// Seeds accounts `first..first+count`, each with `events` events (at least 2), in one
/// transaction, holding the append lock of its backend as the store's appends do (so
/// that readers wait for its commit). With `outbox`, the events are for the relay (the
/// events table is the outbox), which is woken at commit; without, the relay checkpoint
/// moves past them.
pub(crate) async fn seed_accounts(
    pool: &PgPool,
    first: u64,
    count: u64,
    events: u64,
    outbox: bool,
) -> anyhow::Result<Seeded> {
    seed(pool, first, count, events, outbox, "now()").await
}

/// Seeds account `n` with `events` events one millisecond apart, the last one now (so
/// that reads as of an instant in its history find a version in the middle).
pub(crate) async fn seed_history(pool: &PgPool, n: u64, events: u64) -> anyhow::Result<Seeded> {
    seed(
        pool,
        n,
        1,
        events,
        false,
        "now() - ($3::bigint - v.v) * interval '1 millisecond'",
    )
    .await
}

async fn seed(
    pool: &PgPool,
    first: u64,
    count: u64,
    events: u64,
    outbox: bool,
    occurred_at: &str,
) -> anyhow::Result<Seeded> {
    if events < 2 || count == 0 {
        bail!("a seeded account has at least 2 events");
    }
    let started = Instant::now();
    let last = first + count - 1;
    let (first, last, events) = (as_i64(first)?, as_i64(last)?, as_i64(events)?);
    let id = sql_account_id("a.n");
    let select = format!(
        "SELECT gen_random_uuid(), {id}, v.v,
                CASE WHEN v.v = 1 THEN 'AccountCreated' WHEN v.v = 2 THEN 'AccountActivated'
                     ELSE 'AccountCredited' END,
                1,
                CASE WHEN v.v = 1 THEN '{{\"initial_balance\": \"1000.00\", \"currency\": \"MAD\"}}'::jsonb
                     WHEN v.v = 2 THEN '{{}}'::jsonb
                     ELSE jsonb_build_object('amount', '1.00', 'currency', 'MAD',
                                             'balance', (1000 + v.v - 2)::text || '.00') END,
                '{{\"correlation_id\": null, \"causation_id\": null, \"idempotency_key\": null}}'::jsonb,
                {occurred_at}
           FROM generate_series($1::bigint, $2::bigint) AS a(n)
          CROSS JOIN generate_series(1::bigint, $3::bigint) AS v(v)
          ORDER BY a.n, v.v"
    );
    let columns = "events (event_id, stream_id, version, event_type, schema_version, data, metadata, occurred_at)";
    let insert_events = format!("INSERT INTO {columns} {select}");
    let stream_id = sql_account_id("n");
    let insert_streams = format!(
        "INSERT INTO streams (stream_id, version, snapshot_version, snapshot_schema, snapshot)
         SELECT {stream_id}, $3, $3, 1,
                jsonb_build_object('status', 'ACTIVE',
                                   'balance', jsonb_build_object('amount', (1000 + $3 - 2)::text || '.00',
                                                                 'currency', 'MAD'),
                                   'version', $3)
           FROM generate_series($1::bigint, $2::bigint) AS n"
    );
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query(APPEND_GATE_LOCK).execute(&mut *tx).await?;
    let inserted = sqlx::query(AssertSqlSafe(insert_events))
        .bind(first)
        .bind(last)
        .bind(events)
        .execute(&mut *tx)
        .await
        .context("seeding events")?
        .rows_affected();
    sqlx::query(AssertSqlSafe(insert_streams))
        .bind(first)
        .bind(last)
        .bind(events)
        .execute(&mut *tx)
        .await
        .context("seeding streams")?;
    if outbox {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(APPEND_CHANNEL)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query(
            "UPDATE relay_checkpoint SET position = (SELECT max(position) FROM events), updated_at = now()",
        )
        .execute(&mut *tx)
        .await
        .context("moving the relay checkpoint past the seeded events")?;
    }
    tx.commit().await?;
    Ok(Seeded {
        events: inserted,
        took: started.elapsed(),
    })
}

/// When the event at `version` of seeded account `n` occurred, as RFC 3339 (UTC, µs).
pub(crate) async fn occurred_at(pool: &PgPool, n: u64, version: u64) -> anyhow::Result<String> {
    let id = sql_account_id("$1::bigint");
    sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')
           FROM events WHERE stream_id = {id} AND version = $2"
    )))
    .bind(as_i64(n)?)
    .bind(as_i64(version)?)
    .fetch_one(pool)
    .await
    .with_context(|| format!("no event at version {version} of account {}", account_id(n)))
}

/// Creates the minimal event store of B1 (one `events` table, see
/// [`pgbench::MINIMAL_SCHEMA`](crate::pgbench::MINIMAL_SCHEMA)) in a new database, with
/// accounts `1..=accounts` at two events each.
pub(crate) async fn create_minimal_store(
    server: &str,
    name: &str,
    accounts: u64,
) -> anyhow::Result<()> {
    create_database(server, name).await?;
    let pool = connect(&database_url(server, name), 1).await?;
    sqlx::raw_sql(crate::pgbench::MINIMAL_SCHEMA)
        .execute(&pool)
        .await?;
    let id = sql_account_id("a.n");
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO events (stream_id, version, payload)
         SELECT {id}, v.v, $2::jsonb
           FROM generate_series(1::bigint, $1::bigint) AS a(n)
          CROSS JOIN generate_series(1::bigint, 2::bigint) AS v(v)
          ORDER BY a.n, v.v"
    )))
    .bind(as_i64(accounts)?)
    .bind(crate::pgbench::MINIMAL_PAYLOAD)
    .execute(&pool)
    .await
    .context("seeding the minimal store")?;
    sqlx::raw_sql("ANALYZE events").execute(&pool).await?;
    pool.close().await;
    Ok(())
}

pub(crate) async fn analyze(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql("ANALYZE events; ANALYZE streams;")
        .execute(pool)
        .await?;
    Ok(())
}

/// Events committed but not yet confirmed by the relay: the head position less the
/// relay checkpoint (the events table is the outbox).
pub(crate) async fn outbox_backlog(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce((SELECT max(position) FROM events), 0) - (SELECT position FROM relay_checkpoint)",
    )
    .fetch_one(pool)
    .await?)
}

pub(crate) async fn event_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
            .fetch_one(pool)
            .await?,
    )
}

/// Whether an append still writes an outbox row: the store has no relay checkpoint
/// (the events table became the outbox with `relay_checkpoint`).
pub(crate) async fn writes_outbox_rows(pool: &PgPool) -> anyhow::Result<bool> {
    let checkpoint: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('relay_checkpoint')::text")
            .fetch_one(pool)
            .await?;
    Ok(checkpoint.is_none())
}

/// The whole global feed in position order, as B3 replays it.
pub(crate) async fn load_feed(pool: &PgPool) -> anyhow::Result<Vec<crate::mariadb::FeedEvent>> {
    type Row = (
        i64,
        String,
        String,
        i64,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT position, event_id::text, stream_id::text, version, event_type,
                data->>'amount', coalesce(data->>'balance', data->>'initial_balance'),
                data->>'currency', data->>'owner',
                to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')
           FROM events ORDER BY position",
    )
    .fetch_all(pool)
    .await
    .context("cannot read the event store's feed")?;
    Ok(rows
        .into_iter()
        .map(
            |(position, event_id, account, version, kind, amount, balance, currency, owner, at)| {
                crate::mariadb::FeedEvent {
                    position,
                    event_id,
                    account,
                    version,
                    kind,
                    amount,
                    balance,
                    currency,
                    owner,
                    occurred_at: at,
                }
            },
        )
        .collect())
}

/// Number of streams and the sum of their balances (from the snapshots), as text.
pub(crate) async fn balance_total(pool: &PgPool) -> anyhow::Result<(i64, String)> {
    let (count, total): (i64, Option<String>) = sqlx::query_as(
        "SELECT count(*), sum((snapshot->'balance'->>'amount')::numeric)::text FROM streams",
    )
    .fetch_one(pool)
    .await?;
    Ok((count, total.unwrap_or_else(|| "0".to_owned())))
}

/// Waits until the relay confirmed every committed event; the time it took from `since`.
pub(crate) async fn wait_outbox_empty(
    pool: &PgPool,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if outbox_backlog(pool).await? == 0 {
            return Ok(since.elapsed());
        }
        if since.elapsed() > timeout {
            bail!(
                "the relay did not empty the outbox within {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn as_i64(value: u64) -> anyhow::Result<i64> {
    i64::try_from(value).context("number out of range")
}

/// A URL without its password.
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_are_uuids_of_their_number() {
        let id = account_id(0x2a);
        assert_eq!(id, "00000000-0000-4000-8000-00000000002a");
        assert!(uuid::Uuid::parse_str(&id).is_ok());
        assert!(uuid::Uuid::parse_str(&account_id(99_999_999)).is_ok());
    }

    #[test]
    fn names_are_checked_and_urls_redacted() {
        assert!(check_name("bench_ab12_main").is_ok());
        assert!(check_name("x; DROP").is_err());
        assert_eq!(
            redact("postgres://u:p@h:5432/db"),
            "postgres://***@h:5432/db"
        );
    }
}
