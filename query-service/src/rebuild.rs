//! `query-service rebuild`: rebuilds the read model (accounts, operations, transfers,
//! the balance sheet) from the command service's global feed into fresh tables, then
//! swaps them in with one atomic `RENAME TABLE`, so that readers see either the old
//! model or the complete new one.
//!
//! The rebuilt checkpoint is the feed position the rebuild read up to, under a new
//! generation. Events the live projection writes to the old tables meanwhile are
//! past that position (the feed never shows a lower position later), so after the
//! swap the running services' feed followers, which read the checkpoint afresh on
//! every poll and cannot advance it across a generation change, project them again.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use service_kit::backoff::Backoff;
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{ConnectOptions, Connection, MySqlConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::projection::{PlannedPage, ProjectionError, Projector, SortedPage};
use crate::settings::Settings;
use crate::source::{CommandClient, TokenSource};
use crate::store::{REBUILD, ReadStore};
use crate::watch::ProjectionWatch;

/// Events asked of the feed per page (the command service's maximum).
const PAGE_SIZE: u32 = 1000;
/// Attempts at one page before the rebuild gives up.
const PAGE_ATTEMPTS: u32 = 8;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Account rows, and transfer rows, the rebuild keeps as it wrote them, so that a page
/// reads from the database only the rows of streams it has not written lately.
const ROWS_HELD: usize = 50_000;

const PREPARE: [&str; 9] = [
    "DROP TABLE IF EXISTS accounts_rebuild, operations_rebuild, account_versions_rebuild, \
     transfers_rebuild, transfer_versions_rebuild, balance_sheet_rebuild, projection_checkpoint_rebuild",
    "DROP TABLE IF EXISTS accounts_old, operations_old, account_versions_old, transfers_old, \
     transfer_versions_old, balance_sheet_old, projection_checkpoint_old",
    "CREATE TABLE accounts_rebuild LIKE accounts",
    "CREATE TABLE operations_rebuild LIKE operations",
    "CREATE TABLE account_versions_rebuild LIKE account_versions",
    "CREATE TABLE transfers_rebuild LIKE transfers",
    "CREATE TABLE transfer_versions_rebuild LIKE transfer_versions",
    // Empty: the replayed events add up the counters from zero.
    "CREATE TABLE balance_sheet_rebuild LIKE balance_sheet",
    "CREATE TABLE projection_checkpoint_rebuild LIKE projection_checkpoint",
];
const WRITE_CHECKPOINT: &str = "INSERT INTO projection_checkpoint_rebuild (name, generation, position, updated_at) \
     VALUES ('feed', ?, ?, UTC_TIMESTAMP(6))";
/// Statistics of the filled tables, so that the first queries on them after the swap
/// are planned as on any table of their size, not as on the empty ones they were.
const ANALYZE: &str = "ANALYZE TABLE accounts_rebuild, operations_rebuild, account_versions_rebuild, \
     transfers_rebuild, transfer_versions_rebuild, balance_sheet_rebuild";
const SWAP: &str = "RENAME TABLE accounts TO accounts_old, accounts_rebuild TO accounts, \
     operations TO operations_old, operations_rebuild TO operations, \
     account_versions TO account_versions_old, account_versions_rebuild TO account_versions, \
     transfers TO transfers_old, transfers_rebuild TO transfers, \
     transfer_versions TO transfer_versions_old, transfer_versions_rebuild TO transfer_versions, \
     balance_sheet TO balance_sheet_old, balance_sheet_rebuild TO balance_sheet, \
     projection_checkpoint TO projection_checkpoint_old, projection_checkpoint_rebuild TO projection_checkpoint";
const DROP_OLD: &str = "DROP TABLE IF EXISTS accounts_old, operations_old, account_versions_old, \
     transfers_old, transfer_versions_old, balance_sheet_old, projection_checkpoint_old";
const LOCK: &str = "SELECT GET_LOCK(CONCAT('query-service-rebuild:', DATABASE()), 0)";

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events read from the feed.
    pub events: u64,
    /// Events projected (the others were impossible and skipped).
    pub applied: u64,
    pub skipped: u64,
    /// Feed position of the rebuilt checkpoint.
    pub position: u64,
}

/// Rebuilds the read model and swaps it in. Refuses to run beside another rebuild of
/// the same database. Interrupted (`shutdown`), it leaves the live model untouched.
pub async fn run(
    settings: &Settings,
    shutdown: CancellationToken,
) -> anyhow::Result<RebuildReport> {
    let token = TokenSource::from_settings(settings)
        .context("cannot authenticate to the command service")?;
    let store = ReadStore::open(&settings.database_url, settings.database_max_connections)
        .await
        .with_context(|| format!("cannot open the read model at {:?}", settings.database_url))?;
    let options: MySqlConnectOptions = settings
        .database_url
        .expose()
        .parse()
        .context("invalid DATABASE_URL")?;
    let mut lock = options
        .connect()
        .await
        .context("cannot connect to the read model")?;
    let locked: Option<i64> = sqlx::query_scalar(LOCK).fetch_one(&mut lock).await?;
    if locked != Some(1) {
        bail!("another rebuild of this read model is running");
    }
    let outcome = rebuild_locked(settings, token, &store, &mut lock, &shutdown).await;
    let _ = lock.close().await;
    store.pool().close().await;
    outcome
}

async fn rebuild_locked(
    settings: &Settings,
    token: TokenSource,
    store: &ReadStore,
    connection: &mut MySqlConnection,
    shutdown: &CancellationToken,
) -> anyhow::Result<RebuildReport> {
    for statement in PREPARE {
        sqlx::raw_sql(statement)
            .execute(&mut *connection)
            .await
            .with_context(|| format!("cannot prepare the rebuild tables ({statement})"))?;
    }
    let source = CommandClient::new(&settings.command_service_url, token)?;
    let projector = Projector::new(store.clone(), &REBUILD, source, ProjectionWatch::default())
        .sole_writer(ROWS_HELD);
    tracing::info!(command_service = %settings.command_service_url, "rebuilding the read model from the global feed");
    let started = Instant::now();
    let mut progress_at = started;
    let mut report = RebuildReport {
        events: 0,
        applied: 0,
        skipped: 0,
        position: 0,
    };
    // Each page commits (one transaction) while the next one is read, decoded and
    // planned on the rows the committing page holds as written; should the committing
    // page fail or settle a stream apart from its transaction, that plan is dropped
    // with the rows held, and the next page is planned again from the database.
    let mut page = read_page(&projector, 0, shutdown).await?;
    let mut planned = plan_ahead(&projector, &page).await;
    while page.events > 0 {
        if shutdown.is_cancelled() {
            bail!("rebuild interrupted; the live read model is untouched");
        }
        let events = page.events;
        let position = page.next_after;
        let plan_next = planned.as_ref().is_some_and(PlannedPage::is_complete);
        let (outcome, next) = tokio::join!(
            commit_page(&projector, &page.sorted, planned.take(), shutdown),
            async {
                let next = read_page(&projector, position, shutdown).await?;
                let planned = match plan_next {
                    true => plan_ahead(&projector, &next).await,
                    false => None,
                };
                anyhow::Ok((next, planned))
            }
        );
        let (outcome, committed_as_planned) = outcome?;
        let (next, mut next_planned) = next?;
        if !committed_as_planned && next_planned.take().is_some() {
            projector.forget_written();
        }
        if next_planned.is_none() {
            next_planned = plan_ahead(&projector, &next).await;
        }
        report.events += events;
        report.applied += outcome.applied;
        report.skipped += outcome.poisoned + outcome.conflicts;
        report.position = position;
        if progress_at.elapsed() >= PROGRESS_EVERY {
            progress_at = Instant::now();
            let rate = report.events as f64 / started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(
                events = report.events,
                position = report.position,
                events_per_second = rate.round(),
                "rebuild in progress"
            );
        }
        page = next;
        planned = next_planned;
    }
    sqlx::query(WRITE_CHECKPOINT)
        .bind(Uuid::new_v4().hyphenated().to_string())
        .bind(i64::try_from(report.position).unwrap_or(i64::MAX))
        .execute(&mut *connection)
        .await
        .context("cannot write the rebuilt checkpoint")?;
    sqlx::raw_sql(ANALYZE)
        .execute(&mut *connection)
        .await
        .context("cannot analyze the rebuilt tables")?;
    sqlx::raw_sql(SWAP)
        .execute(&mut *connection)
        .await
        .context("cannot swap the rebuilt tables in")?;
    if let Err(error) = sqlx::raw_sql(DROP_OLD).execute(&mut *connection).await {
        tracing::warn!(error = %error, "cannot drop the replaced tables; the next rebuild drops them");
    }
    tracing::info!(
        events = report.events,
        applied = report.applied,
        skipped = report.skipped,
        position = report.position,
        seconds = started.elapsed().as_secs_f64(),
        "rebuild complete; the new read model is live"
    );
    Ok(report)
}

/// A page of the feed, decoded.
struct Page {
    events: u64,
    /// The feed position to read the next page after.
    next_after: u64,
    sorted: SortedPage,
}

async fn read_page(
    projector: &Projector,
    after: u64,
    shutdown: &CancellationToken,
) -> anyhow::Result<Page> {
    let mut attempt = 0;
    let mut backoff = page_backoff();
    loop {
        match projector.source().feed(after, PAGE_SIZE).await {
            Ok(page) => {
                return Ok(Page {
                    events: page.events.len() as u64,
                    next_after: page.next_after,
                    sorted: SortedPage::sort(page.events, "rebuild"),
                });
            }
            Err(error) => {
                attempt += 1;
                if attempt >= PAGE_ATTEMPTS {
                    return Err(error).context("cannot read the global feed");
                }
                tracing::warn!(error = %error, attempt, "cannot read the global feed; retrying");
                pause(&mut backoff, shutdown).await?;
            }
        }
    }
}

/// The page planned ahead ([`Projector::plan_page`]); `None` when planning failed
/// (the page is then projected whole, with retries).
async fn plan_ahead(projector: &Projector, page: &Page) -> Option<PlannedPage> {
    if page.events == 0 {
        return None;
    }
    match projector.plan_page(&page.sorted, "rebuild").await {
        Ok(planned) => Some(planned),
        Err(error) => {
            tracing::warn!(error = %error, "cannot plan a page ahead; projecting it whole");
            None
        }
    }
}

/// Commits a planned page, or projects it whole (with retries) when it has no plan or
/// its commit failed; says whether it committed as planned.
async fn commit_page(
    projector: &Projector,
    page: &SortedPage,
    planned: Option<PlannedPage>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(crate::projection::BatchOutcome, bool)> {
    if let Some(planned) = planned {
        match projector.commit_page(planned, page, "rebuild").await {
            Ok(committed) => return Ok(committed),
            Err(error) => {
                tracing::warn!(error = %error, "cannot project a page; retrying");
            }
        }
    }
    Ok((project_page(projector, page, shutdown).await?, false))
}

async fn project_page(
    projector: &Projector,
    page: &SortedPage,
    shutdown: &CancellationToken,
) -> anyhow::Result<crate::projection::BatchOutcome> {
    let mut attempt = 0;
    let mut backoff = page_backoff();
    loop {
        match projector.project_sorted(page, "rebuild").await {
            Ok(outcome) => return Ok(outcome),
            Err(error) => {
                attempt += 1;
                if attempt >= PAGE_ATTEMPTS {
                    return Err::<_, ProjectionError>(error)
                        .context("cannot project into the rebuild tables");
                }
                tracing::warn!(error = %error, attempt, "cannot project a page; retrying");
                pause(&mut backoff, shutdown).await?;
            }
        }
    }
}

/// The pause between attempts at one page.
fn page_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(400), Duration::from_millis(6400))
}

async fn pause(backoff: &mut Backoff, shutdown: &CancellationToken) -> anyhow::Result<()> {
    if backoff.wait(shutdown).await {
        Ok(())
    } else {
        bail!("rebuild interrupted; the live read model is untouched")
    }
}
