//! The projection's guarded writes and the feed checkpoint.
//!
//! Every transaction takes its row locks in one order: accounts (by id), then
//! transfers (by id), then the balance sheet's counters (by currency), the latter last,
//! just before the commit, so that they are held as briefly as possible.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use shared_events::{AccountStatus, TransferStatus};
use sqlx::mysql::MySqlRow;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Column, Executor, MySql, QueryBuilder, Row};
use uuid::Uuid;

use super::values::{Script, Value, bound};
use super::{
    ADD_TO_COUNTERS, ROWS_PER_STATEMENT, ReadStore, Tables, UPDATE_LOCKED_ACCOUNTS,
    UPDATE_LOCKED_TRANSFERS, is_retryable, is_unique_violation,
};
use crate::projection::plan::transfer::TransferVersionRow;
use crate::projection::plan::{
    AccountRow, Head, Mutation, OperationRow, SheetDelta, Stream, StreamHead, StreamKind,
    StreamMutation, TransferMutation, TransferRow, VersionRow,
};

/// Rows of counters per currency in the balance sheet (`slot` 0 to 15; the sheet's
/// migration filled slots 0 to 7 from the ids). A transaction adds all its deltas to one
/// slot, the next in turn from a random start, so that the batches a replica projects at
/// once write different rows: with the slot taken from each
/// account's id, nearly every batch of the eight partitions touched every slot, and
/// they waited on one another (`balance_sheet` rows were four in five of the read
/// model's row-lock waits under `bench --only lag`). Only the sums per currency mean
/// anything.
const SHEET_SLOTS: usize = 16;

/// The slot of the next transaction that adds to the balance sheet.
fn next_sheet_slot() -> u8 {
    static NEXT: LazyLock<AtomicUsize> =
        LazyLock::new(|| AtomicUsize::new(usize::from(Uuid::new_v4().as_bytes()[0])));
    u8::try_from(NEXT.fetch_add(1, Ordering::Relaxed) % SHEET_SLOTS).unwrap_or_default()
}

/// What became of a guarded write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Committed: the stream is now at the run's last version; its rows were
    /// `written` then, before the commit.
    Committed { written: DateTime<Utc> },
    /// Someone else moved the stream first (or the write deadlocked); read again.
    Conflict,
    /// An event id is already recorded for another operation: impossible data.
    DuplicateEventId,
}

/// One transaction applying the runs of many streams at once, in two round trips
/// (three when redelivered events must be told apart; one when no row is to be read):
/// [`Batch::lock`] starts it and locks and reads the accounts and the transfers; the
/// caller folds their events in memory; [`Batch::write`], [`Batch::write_transfers`]
/// and [`Batch::add_to_sheet`] gather the results as SQL text, which [`Batch::commit`]
/// sends with the commit.
///
/// A batch dropped with its transaction open (it failed, or its future was dropped)
/// closes its connection, which ends the transaction, rather than return it to the pool.
#[derive(Debug)]
pub(crate) struct Batch {
    connection: PoolConnection<MySql>,
    tables: &'static Tables,
    /// Whether a transaction is open on the connection (or starts with the writes).
    open: bool,
    /// Whether the transaction's start waits to be sent with the writes.
    start_with_writes: bool,
    writes: Script,
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.open {
            self.connection.close_on_drop();
        }
    }
}

impl Batch {
    pub(super) fn new(connection: PoolConnection<MySql>, tables: &'static Tables) -> Self {
        Self {
            connection,
            tables,
            open: false,
            start_with_writes: false,
            writes: Script::default(),
        }
    }

    /// Starts the transaction, locks the rows of `accounts` and of `transfers` (in id
    /// order: accounts, then transfers, the one lock order of every batch) and reads
    /// them. Streams without a row are absent from the answer. With no row to read, the
    /// transaction starts with the writes, in their round trip.
    pub(crate) async fn lock(
        &mut self,
        accounts: &[Uuid],
        transfers: &[Uuid],
    ) -> Result<(HashMap<Uuid, AccountRow>, HashMap<Uuid, TransferRow>), sqlx::Error> {
        if accounts.is_empty() && transfers.is_empty() {
            self.writes.push("START TRANSACTION");
            self.open = true;
            self.start_with_writes = true;
            return Ok((HashMap::new(), HashMap::new()));
        }
        let mut script = Script::default();
        script.push("START TRANSACTION");
        for (ids, select) in [
            (accounts, self.tables.lock_accounts),
            (transfers, self.tables.lock_transfers),
        ] {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids.dedup();
            if !ids.is_empty() {
                script.with_list(
                    select,
                    ids.into_iter().map(Value::from),
                    " ORDER BY id FOR UPDATE",
                );
            }
        }
        self.open = true;
        let rows = match sqlx::raw_sql(AssertSqlSafe(script.into_sql()))
            .fetch_all(&mut *self.connection)
            .await
        {
            Ok(rows) => rows,
            Err(error) => return Err(self.abandon(error).await),
        };
        let mut locked_accounts = HashMap::with_capacity(accounts.len());
        let mut locked_transfers = HashMap::with_capacity(transfers.len());
        for row in &rows {
            if row
                .columns()
                .iter()
                .any(|column| column.name() == "from_account")
            {
                let row = transfer_row(row)?;
                locked_transfers.insert(row.id, row);
            } else {
                let row = account_row(row)?;
                locked_accounts.insert(row.id, row);
            }
        }
        Ok((locked_accounts, locked_transfers))
    }

    /// The event ids recorded for the streams of `ranges` (all of `kind`) between
    /// their lowest and highest version, read in the batch's transaction.
    pub(crate) async fn recorded_ids(
        &mut self,
        kind: StreamKind,
        ranges: &[(Uuid, i64, i64)],
    ) -> Result<HashMap<(Uuid, i64), Uuid>, sqlx::Error> {
        if std::mem::take(&mut self.start_with_writes) {
            self.writes = Script::default();
            if let Err(error) = sqlx::raw_sql("START TRANSACTION")
                .execute(&mut *self.connection)
                .await
            {
                return Err(self.abandon(error).await);
            }
        }
        let mut recorded = HashMap::new();
        for chunk in ranges.chunks(ROWS_PER_STATEMENT) {
            match recorded_ids(&mut *self.connection, self.tables, kind, chunk).await {
                Ok(ids) => recorded.extend(ids),
                Err(error) => return Err(self.abandon(error).await),
            }
        }
        Ok(recorded)
    }

    /// Inserts the `opened` accounts (a plain insert: an account someone else opened
    /// meanwhile fails the batch), overwrites the `moved` ones (rows this batch holds
    /// locked) and inserts the operations and the versions.
    pub(crate) fn write(
        &mut self,
        opened: &[AccountRow],
        moved: &[AccountRow],
        operations: &[(Uuid, OperationRow)],
        versions: &[(Uuid, VersionRow)],
    ) {
        let tables = self.tables;
        for (rows, suffix) in [(opened, ""), (moved, UPDATE_LOCKED_ACCOUNTS)] {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let rows = chunk.iter().map(account_values);
                self.writes.insert(tables.insert_accounts, rows, suffix);
            }
        }
        for chunk in operations.chunks(ROWS_PER_STATEMENT) {
            let rows = chunk.iter().map(|(id, op)| operation_values(*id, op));
            self.writes.insert(tables.insert_operations, rows, "");
        }
        for chunk in versions.chunks(ROWS_PER_STATEMENT) {
            let rows = chunk.iter().map(|(id, row)| version_values(*id, row));
            self.writes.insert(tables.insert_versions, rows, "");
        }
    }

    /// Inserts the `opened` transfers, overwrites the `moved` ones (rows this batch
    /// holds locked) and inserts their versions.
    pub(crate) fn write_transfers(
        &mut self,
        opened: &[TransferRow],
        moved: &[TransferRow],
        versions: &[(Uuid, TransferVersionRow)],
    ) {
        let tables = self.tables;
        for (rows, suffix) in [(opened, ""), (moved, UPDATE_LOCKED_TRANSFERS)] {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let rows = chunk.iter().map(transfer_values);
                self.writes.insert(tables.insert_transfers, rows, suffix);
            }
        }
        for chunk in versions.chunks(ROWS_PER_STATEMENT) {
            let rows = chunk
                .iter()
                .map(|(id, row)| transfer_version_values(*id, row));
            self.writes
                .insert(tables.insert_transfer_versions, rows, "");
        }
    }

    /// Adds `deltas` (one per currency, in currency order) to the balance sheet's
    /// counters, all in one slot.
    pub(crate) fn add_to_sheet(&mut self, deltas: &[SheetDelta]) {
        let slot = next_sheet_slot();
        for chunk in deltas.chunks(ROWS_PER_STATEMENT) {
            let rows = chunk.iter().map(|delta| sheet_values(delta, slot));
            self.writes
                .insert(self.tables.add_to_sheet, rows, ADD_TO_COUNTERS);
        }
    }

    /// Sends the gathered writes and the commit together; returns when the rows were
    /// sent. Nothing is committed when it fails.
    pub(crate) async fn commit(mut self) -> Result<DateTime<Utc>, sqlx::Error> {
        let mut script = std::mem::take(&mut self.writes);
        script.push("COMMIT");
        let sent = Utc::now();
        match sqlx::raw_sql(AssertSqlSafe(script.into_sql()))
            .execute(&mut *self.connection)
            .await
        {
            Ok(_) => {
                self.open = false;
                Ok(sent)
            }
            Err(error) => Err(self.abandon(error).await),
        }
    }

    /// Rolls the transaction back after `error` (the statements after a failed one
    /// are not run); should that fail too, the connection is closed when the batch
    /// is dropped.
    async fn abandon(&mut self, error: sqlx::Error) -> sqlx::Error {
        if sqlx::raw_sql("ROLLBACK")
            .execute(&mut *self.connection)
            .await
            .is_ok()
        {
            self.open = false;
        }
        error
    }
}

fn account_values(account: &AccountRow) -> [Value; 8] {
    [
        account.id.into(),
        account.owner.clone().into(),
        account.status.as_str().into(),
        account.currency.clone().into(),
        account.balance.into(),
        account.version.into(),
        account.created_at.into(),
        account.updated_at.into(),
    ]
}

fn operation_values(account: Uuid, op: &OperationRow) -> [Value; 9] {
    [
        op.event_id.into(),
        account.into(),
        op.version.into(),
        op.kind.as_str().into(),
        op.amount.into(),
        op.currency.into(),
        op.balance_after.into(),
        op.occurred_at.into(),
        op.transfer_id.into(),
    ]
}

/// A transfer row's values (the columns of `transfer_columns!`).
fn transfer_values(transfer: &TransferRow) -> [Value; 12] {
    [
        transfer.id.into(),
        transfer.from.into(),
        transfer.to.into(),
        transfer.amount.into(),
        transfer.currency.clone().into(),
        transfer.reference.clone().into(),
        transfer.status.as_str().into(),
        transfer.reason.clone().into(),
        transfer.requested_by.clone().into(),
        transfer.version.into(),
        transfer.created_at.into(),
        transfer.updated_at.into(),
    ]
}

fn transfer_version_values(transfer: Uuid, version: &TransferVersionRow) -> [Value; 5] {
    [
        transfer.into(),
        version.version.into(),
        version.event_id.into(),
        version.kind.into(),
        version.occurred_at.into(),
    ]
}

fn sheet_values(delta: &SheetDelta, slot: u8) -> [Value; 5] {
    [
        delta.currency.into(),
        slot.into(),
        delta.balance.into(),
        delta.accounts.into(),
        delta.in_transit.into(),
    ]
}

fn version_values(account: Uuid, version: &VersionRow) -> [Value; 7] {
    [
        account.into(),
        version.version.into(),
        version.event_id.into(),
        version.kind.into(),
        version.status.as_str().into(),
        version.balance.into(),
        version.occurred_at.into(),
    ]
}

/// Reads an account row (the columns of the account lock).
fn account_row(row: &MySqlRow) -> Result<AccountRow, sqlx::Error> {
    let id: String = row.try_get("id")?;
    Ok(AccountRow {
        id: Uuid::parse_str(&id).map_err(|error| sqlx::Error::ColumnDecode {
            index: "id".to_owned(),
            source: Box::new(error),
        })?,
        owner: row.try_get("owner")?,
        status: row
            .try_get::<String, _>("status")?
            .parse::<AccountStatus>()
            .map_err(|error| sqlx::Error::ColumnDecode {
                index: "status".to_owned(),
                source: error.into(),
            })?,
        currency: row.try_get("currency")?,
        balance: row.try_get("balance")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Reads a transfer row (the columns of `transfer_columns!`).
fn transfer_row(row: &MySqlRow) -> Result<TransferRow, sqlx::Error> {
    let uuid = |column: &str| -> Result<Uuid, sqlx::Error> {
        let text: String = row.try_get(column)?;
        Uuid::parse_str(&text).map_err(|error| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(error),
        })
    };
    Ok(TransferRow {
        id: uuid("id")?,
        from: uuid("from_account")?,
        to: uuid("to_account")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        reference: row.try_get("reference")?,
        status: row
            .try_get::<String, _>("status")?
            .parse::<TransferStatus>()
            .map_err(|error| sqlx::Error::ColumnDecode {
                index: "status".to_owned(),
                source: error.into(),
            })?,
        reason: row.try_get("reason")?,
        requested_by: row.try_get("requested_by")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// The event ids recorded at `versions` of `stream` (versions without a record, such
/// as those projected before the record existed, are absent).
async fn projected_ids<'e>(
    executor: impl Executor<'e, Database = MySql>,
    tables: &Tables,
    stream: Stream,
    versions: &[i64],
) -> Result<Vec<(i64, Uuid)>, sqlx::Error> {
    if versions.is_empty() {
        return Ok(Vec::new());
    }
    let mut select = QueryBuilder::<MySql>::new(tables.versions(stream.kind).projected_ids);
    select
        .push_bind(stream.id.hyphenated().to_string())
        .push(" AND version IN (");
    let mut list = select.separated(", ");
    for version in versions {
        list.push_bind(*version);
    }
    select.push(")");
    select
        .build()
        .fetch_all(executor)
        .await?
        .into_iter()
        .map(|row| {
            let event_id: String = row.try_get("event_id")?;
            let event_id =
                Uuid::parse_str(&event_id).map_err(|error| sqlx::Error::ColumnDecode {
                    index: "event_id".to_owned(),
                    source: Box::new(error),
                })?;
            Ok((row.try_get("version")?, event_id))
        })
        .collect()
}

/// The event ids recorded for the streams of `ranges` (all of `kind`, at most
/// [`ROWS_PER_STATEMENT`]) between their lowest and highest version, in one statement.
async fn recorded_ids<'e>(
    executor: impl Executor<'e, Database = MySql>,
    tables: &Tables,
    kind: StreamKind,
    ranges: &[(Uuid, i64, i64)],
) -> Result<Vec<((Uuid, i64), Uuid)>, sqlx::Error> {
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let versions = tables.versions(kind);
    let mut select = QueryBuilder::<MySql>::new(versions.recorded);
    for (index, (stream, lowest, highest)) in ranges.iter().enumerate() {
        if index > 0 {
            select.push(" OR ");
        }
        select
            .push("(")
            .push(versions.stream_column)
            .push(" = ")
            .push_bind(stream.hyphenated().to_string())
            .push(" AND version BETWEEN ")
            .push_bind(*lowest)
            .push(" AND ")
            .push_bind(*highest)
            .push(")");
    }
    let uuid = |row: &MySqlRow, column: &str| -> Result<Uuid, sqlx::Error> {
        let text: String = row.try_get(column)?;
        Uuid::parse_str(&text).map_err(|error| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: Box::new(error),
        })
    };
    select
        .build()
        .fetch_all(executor)
        .await?
        .iter()
        .map(|row| {
            Ok((
                (uuid(row, "stream_id")?, row.try_get("version")?),
                uuid(row, "event_id")?,
            ))
        })
        .collect()
}

/// Commits a guarded write; a deadlock at the commit is a conflict (read again).
async fn commit(tx: sqlx::Transaction<'static, MySql>) -> Result<Applied, sqlx::Error> {
    let written = Utc::now();
    match tx.commit().await {
        Ok(()) => Ok(Applied::Committed { written }),
        Err(error) if is_retryable(&error) => Ok(Applied::Conflict),
        Err(error) => Err(error),
    }
}

impl ReadStore {
    /// The event ids recorded for the streams of `ranges` (all of `kind`) between
    /// their lowest and highest version (inclusive), read without locking: committed
    /// records only, which never change.
    pub(crate) async fn recorded_ids(
        &self,
        tables: &Tables,
        kind: StreamKind,
        ranges: &[(Uuid, i64, i64)],
    ) -> Result<HashMap<(Uuid, i64), Uuid>, sqlx::Error> {
        let mut recorded = HashMap::new();
        for chunk in ranges.chunks(ROWS_PER_STATEMENT) {
            recorded.extend(recorded_ids(&self.pool, tables, kind, chunk).await?);
        }
        Ok(recorded)
    }

    /// The event ids recorded at `versions` of `stream`.
    pub(crate) async fn projected_ids(
        &self,
        tables: &Tables,
        stream: Stream,
        versions: &[i64],
    ) -> Result<Vec<(i64, Uuid)>, sqlx::Error> {
        projected_ids(&self.pool, tables, stream, versions).await
    }

    /// Where the projection of a stream stands.
    pub(crate) async fn stream_head(
        &self,
        tables: &Tables,
        stream: Stream,
    ) -> Result<StreamHead, sqlx::Error> {
        Ok(match stream.kind {
            StreamKind::Account => StreamHead::Account(self.head(tables, stream.id).await?),
            StreamKind::Transfer => {
                let row = sqlx::query(tables.transfer)
                    .bind(stream.id.hyphenated().to_string())
                    .fetch_optional(&self.pool)
                    .await?;
                StreamHead::Transfer(row.as_ref().map(transfer_row).transpose()?)
            }
        })
    }

    /// Where the projection of an account stands; `None` before its first event.
    async fn head(&self, tables: &Tables, account: Uuid) -> Result<Option<Head>, sqlx::Error> {
        let row = sqlx::query(tables.head)
            .bind(account.hyphenated().to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(Head {
                version: row.try_get("version")?,
                currency: row.try_get("currency")?,
                status: row
                    .try_get::<String, _>("status")?
                    .parse::<AccountStatus>()
                    .map_err(|error| sqlx::Error::ColumnDecode {
                        index: "status".to_owned(),
                        source: error.into(),
                    })?,
                balance: row.try_get("balance")?,
            })
        })
        .transpose()
    }

    /// Applies a run of a stream's events in one transaction, guarded by the
    /// stream's version.
    pub(crate) async fn apply(
        &self,
        tables: &Tables,
        mutation: &StreamMutation,
    ) -> Result<Applied, sqlx::Error> {
        match mutation {
            StreamMutation::Account(mutation) => self.apply_account(tables, mutation).await,
            StreamMutation::Transfer(mutation) => self.apply_transfer(tables, mutation).await,
        }
    }

    /// An account's run: its row, operations and versions, and its balance-sheet delta.
    async fn apply_account(
        &self,
        tables: &Tables,
        mutation: &Mutation,
    ) -> Result<Applied, sqlx::Error> {
        let id = mutation.account.hyphenated().to_string();
        let mut tx = self.pool.begin().await?;
        let moved = match &mutation.opening {
            Some(opening) => sqlx::query(tables.insert_account)
                .bind(&id)
                .bind(opening.owner.as_deref())
                .bind(mutation.status.unwrap_or(AccountStatus::Created).as_str())
                .bind(opening.currency)
                .bind(mutation.balance.unwrap_or_default())
                .bind(mutation.to_version)
                .bind(opening.created_at)
                .bind(mutation.updated_at)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected()),
            None => sqlx::query(tables.update_account)
                .bind(mutation.status.map(|status| status.as_str()))
                .bind(mutation.balance)
                .bind(mutation.to_version)
                .bind(mutation.updated_at)
                .bind(&id)
                .bind(mutation.from_version)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected()),
        };
        match moved {
            Ok(1) => {}
            Ok(_) => return Ok(Applied::Conflict),
            Err(error) if is_retryable(&error) || is_unique_violation(&error) => {
                return Ok(Applied::Conflict);
            }
            Err(error) => return Err(error),
        }
        // Chunked: a gap filled from a long history holds more rows than one statement
        // may have placeholders (65,535).
        for chunk in mutation.operations.chunks(ROWS_PER_STATEMENT) {
            let operations = chunk
                .iter()
                .map(|op| operation_values(mutation.account, op));
            match bound(tables.insert_operations, operations)
                .build()
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {}
                Err(error) if is_unique_violation(&error) => return Ok(Applied::DuplicateEventId),
                Err(error) if is_retryable(&error) => return Ok(Applied::Conflict),
                Err(error) => return Err(error),
            }
        }
        for chunk in mutation.versions.chunks(ROWS_PER_STATEMENT) {
            let versions = chunk
                .iter()
                .map(|row| version_values(mutation.account, row));
            match bound(tables.insert_versions, versions)
                .build()
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {}
                Err(error) if is_retryable(&error) || is_unique_violation(&error) => {
                    return Ok(Applied::Conflict);
                }
                Err(error) => return Err(error),
            }
        }
        if let Some(delta) = &mutation.sheet {
            let mut add = bound(
                tables.add_to_sheet,
                [sheet_values(delta, next_sheet_slot())],
            );
            add.push(ADD_TO_COUNTERS);
            match add.build().execute(&mut *tx).await {
                Ok(_) => {}
                Err(error) if is_retryable(&error) => return Ok(Applied::Conflict),
                Err(error) => return Err(error),
            }
        }
        commit(tx).await
    }

    /// A transfer's run: its row and versions.
    async fn apply_transfer(
        &self,
        tables: &Tables,
        mutation: &TransferMutation,
    ) -> Result<Applied, sqlx::Error> {
        let row = &mutation.row;
        let mut tx = self.pool.begin().await?;
        let moved = if mutation.opens() {
            bound(tables.insert_transfers, [transfer_values(row)])
                .build()
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected())
        } else {
            sqlx::query(tables.update_transfer)
                .bind(row.status.as_str())
                .bind(row.reason.as_deref())
                .bind(row.version)
                .bind(row.updated_at)
                .bind(row.id.hyphenated().to_string())
                .bind(mutation.from_version)
                .execute(&mut *tx)
                .await
                .map(|done| done.rows_affected())
        };
        match moved {
            Ok(1) => {}
            Ok(_) => return Ok(Applied::Conflict),
            Err(error) if is_retryable(&error) || is_unique_violation(&error) => {
                return Ok(Applied::Conflict);
            }
            Err(error) => return Err(error),
        }
        let versions = mutation.versions.iter();
        match bound(
            tables.insert_transfer_versions,
            versions.map(|version| transfer_version_values(row.id, version)),
        )
        .build()
        .execute(&mut *tx)
        .await
        {
            Ok(_) => {}
            Err(error) if is_retryable(&error) || is_unique_violation(&error) => {
                return Ok(Applied::Conflict);
            }
            Err(error) => return Err(error),
        }
        commit(tx).await
    }

    /// A connection for a transaction applying many streams' runs at once.
    pub(crate) async fn batch(&self, tables: &'static Tables) -> Result<Batch, sqlx::Error> {
        Ok(Batch::new(self.pool.acquire().await?, tables))
    }

    /// The feed checkpoint: its generation and the position verified so far.
    pub(crate) async fn checkpoint(&self, tables: &Tables) -> Result<(String, i64), sqlx::Error> {
        let row = sqlx::query(tables.read_checkpoint)
            .fetch_one(&self.pool)
            .await?;
        Ok((row.try_get("generation")?, row.try_get("position")?))
    }

    /// Moves the checkpoint from `from` to `to`, unless someone else (another replica,
    /// or a rebuild that swapped the tables) changed it since it was read.
    pub(crate) async fn advance_checkpoint(
        &self,
        tables: &Tables,
        generation: &str,
        from: i64,
        to: i64,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(tables.advance_checkpoint)
            .bind(to)
            .bind(generation)
            .bind(from)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;
    use service_kit::settings::SecretUrl;
    use test_support::Leftovers;
    use test_support::names::fresh_database;
    use test_support::servers::{Server, mysql_url, require};

    use super::*;
    use crate::store::LIVE;

    /// Text with quotes, a backslash, SQL and characters outside ASCII.
    const AWKWARD: &str = "O'Brien \\ \"loyer\" — é 🏦'); DROP TABLE transfers; --";

    async fn fresh_store() -> (ReadStore, Leftovers) {
        require(&[Server::MySql]);
        let database = fresh_database("qs_test_batch");
        let store = ReadStore::open(&SecretUrl::new(mysql_url(&database)), 2)
            .await
            .unwrap();
        let leftovers = Leftovers {
            mysql_databases: vec![database],
            ..Leftovers::default()
        };
        (store, leftovers)
    }

    fn time(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn account(owner: &str) -> AccountRow {
        AccountRow {
            id: Uuid::now_v7(),
            owner: Some(owner.to_owned()),
            status: AccountStatus::Active,
            currency: "MAD".to_owned(),
            balance: Decimal::new(-1_234_500, 4),
            version: 3,
            created_at: time("2026-12-01T16:05:09.000123Z"),
            updated_at: time("2026-12-01T16:05:10.999999Z"),
        }
    }

    fn transfer(from: Uuid, reference: &str) -> TransferRow {
        TransferRow {
            id: Uuid::now_v7(),
            from,
            to: Uuid::now_v7(),
            amount: Decimal::new(400, 2),
            currency: "MAD".to_owned(),
            reference: Some(reference.to_owned()),
            status: TransferStatus::Failed,
            reason: Some(format!("{reference}\n")),
            requested_by: reference.to_owned(),
            version: 2,
            created_at: time("2026-12-01T16:05:09.5Z"),
            updated_at: time("2026-12-01T16:05:11Z"),
        }
    }

    #[tokio::test]
    async fn a_batch_writes_any_text_and_reads_it_back_exactly() {
        // Given an account and a transfer whose every text column holds awkward text
        let (store, leftovers) = fresh_store().await;
        let alices = account(AWKWARD);
        let rent = transfer(alices.id, AWKWARD);

        // When one batch opens both
        let mut batch = store.batch(&LIVE).await.unwrap();
        let (accounts, transfers) = batch.lock(&[alices.id], &[rent.id]).await.unwrap();
        assert!(accounts.is_empty() && transfers.is_empty());
        batch.write(std::slice::from_ref(&alices), &[], &[], &[]);
        batch.write_transfers(std::slice::from_ref(&rent), &[], &[]);
        batch.commit().await.unwrap();

        // Then the next batch locks and reads them as they were written
        let mut batch = store.batch(&LIVE).await.unwrap();
        let (accounts, transfers) = batch.lock(&[alices.id], &[rent.id]).await.unwrap();
        assert_eq!(accounts.get(&alices.id), Some(&alices));
        assert_eq!(transfers.get(&rent.id), Some(&rent));
        drop(batch);
        leftovers.remove().await;
    }

    #[tokio::test]
    async fn a_batch_that_fails_commits_nothing_and_releases_its_locks() {
        // Given an account projected already
        let (store, leftovers) = fresh_store().await;
        let alices = account("alice");
        let mut batch = store.batch(&LIVE).await.unwrap();
        batch.lock(&[alices.id], &[]).await.unwrap();
        batch.write(std::slice::from_ref(&alices), &[], &[], &[]);
        batch.commit().await.unwrap();

        // When a batch opens a transfer, then opens the same account again
        let bobs = account("bob");
        let rent = transfer(bobs.id, "rent");
        let mut batch = store.batch(&LIVE).await.unwrap();
        batch.lock(&[alices.id, bobs.id], &[rent.id]).await.unwrap();
        batch.write(&[bobs.clone(), alices.clone()], &[], &[], &[]);
        batch.write_transfers(std::slice::from_ref(&rent), &[], &[]);
        let error = batch.commit().await.unwrap_err();

        // Then it fails on the duplicate, and nothing of it was written: the next batch
        // locks the same rows at once and finds only the first account
        assert!(is_unique_violation(&error), "{error}");
        let mut batch = store.batch(&LIVE).await.unwrap();
        let locked = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            batch.lock(&[alices.id, bobs.id], &[rent.id]),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(locked.0.into_keys().collect::<Vec<_>>(), [alices.id]);
        assert!(locked.1.is_empty());
        drop(batch);
        leftovers.remove().await;
    }
}
