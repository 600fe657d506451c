//! The projection's guarded writes and the feed checkpoint.
//!
//! Every transaction takes its row locks in one order: accounts (by id), then
//! transfers (by id), then the balance sheet's counters (by currency and slot), the
//! latter last, just before the commit, so that they are held as briefly as possible.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use shared_events::{AccountStatus, TransferStatus};
use sqlx::mysql::MySqlRow;
use sqlx::{Executor, MySql, QueryBuilder, Row};
use uuid::Uuid;

use super::{
    ADD_TO_COUNTERS, ROWS_PER_STATEMENT, ReadStore, Tables, UPDATE_LOCKED_ACCOUNTS,
    UPDATE_LOCKED_TRANSFERS, is_retryable, is_unique_violation,
};
use crate::projection::plan::transfer::TransferVersionRow;
use crate::projection::plan::{
    AccountRow, Head, Mutation, OperationRow, SheetDelta, Stream, StreamHead, StreamKind,
    StreamMutation, TransferMutation, TransferRow, VersionRow,
};

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

/// One transaction applying the runs of many streams at once: [`Batch::lock`] the
/// accounts and [`Batch::lock_transfers`] the transfers, fold their events in memory,
/// [`Batch::write`] and [`Batch::write_transfers`] the results, [`Batch::add_to_sheet`]
/// what they change in the balance sheet, commit.
#[derive(Debug)]
pub(crate) struct Batch {
    tx: sqlx::Transaction<'static, MySql>,
    tables: &'static Tables,
}

impl Batch {
    /// Locks the rows of `accounts` (in id order, the one lock order of every batch)
    /// and reads them. Accounts without a row are absent from the answer.
    pub(crate) async fn lock(
        &mut self,
        accounts: &[Uuid],
    ) -> Result<HashMap<Uuid, AccountRow>, sqlx::Error> {
        let mut ids: Vec<String> = accounts
            .iter()
            .map(|id| id.hyphenated().to_string())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rows = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut select = QueryBuilder::<MySql>::new(self.tables.lock_accounts);
            select.push("(");
            let mut list = select.separated(", ");
            for id in chunk {
                list.push_bind(id.as_str());
            }
            select.push(") ORDER BY id FOR UPDATE");
            for row in select.build().fetch_all(&mut *self.tx).await? {
                let id: String = row.try_get("id")?;
                let id = Uuid::parse_str(&id).map_err(|error| sqlx::Error::ColumnDecode {
                    index: "id".to_owned(),
                    source: Box::new(error),
                })?;
                rows.insert(
                    id,
                    AccountRow {
                        id,
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
                    },
                );
            }
        }
        Ok(rows)
    }

    /// Locks the rows of `transfers` (in id order) and reads them. Transfers without a
    /// row are absent from the answer.
    pub(crate) async fn lock_transfers(
        &mut self,
        transfers: &[Uuid],
    ) -> Result<HashMap<Uuid, TransferRow>, sqlx::Error> {
        let mut ids: Vec<String> = transfers
            .iter()
            .map(|id| id.hyphenated().to_string())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rows = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut select = QueryBuilder::<MySql>::new(self.tables.lock_transfers);
            select.push("(");
            let mut list = select.separated(", ");
            for id in chunk {
                list.push_bind(id.as_str());
            }
            select.push(") ORDER BY id FOR UPDATE");
            for row in select.build().fetch_all(&mut *self.tx).await? {
                let row = transfer_row(&row)?;
                rows.insert(row.id, row);
            }
        }
        Ok(rows)
    }

    /// The event ids recorded for the streams of `ranges` (all of `kind`) between
    /// their lowest and highest version, read in the batch's transaction.
    pub(crate) async fn recorded_ids(
        &mut self,
        kind: StreamKind,
        ranges: &[(Uuid, i64, i64)],
    ) -> Result<HashMap<(Uuid, i64), Uuid>, sqlx::Error> {
        let mut recorded = HashMap::new();
        for chunk in ranges.chunks(ROWS_PER_STATEMENT) {
            recorded.extend(recorded_ids(&mut *self.tx, self.tables, kind, chunk).await?);
        }
        Ok(recorded)
    }

    /// Inserts the `opened` accounts (a plain insert: an account someone else opened
    /// meanwhile fails the batch), overwrites the `moved` ones (rows this batch holds
    /// locked) and inserts the operations and the versions.
    pub(crate) async fn write(
        &mut self,
        opened: &[AccountRow],
        moved: &[AccountRow],
        operations: &[(Uuid, OperationRow)],
        versions: &[(Uuid, VersionRow)],
    ) -> Result<(), sqlx::Error> {
        for (rows, suffix) in [(opened, ""), (moved, UPDATE_LOCKED_ACCOUNTS)] {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut insert = QueryBuilder::<MySql>::new(self.tables.insert_accounts);
                insert.push_values(chunk, |mut row, account| {
                    row.push_bind(account.id.hyphenated().to_string())
                        .push_bind(account.owner.clone())
                        .push_bind(account.status.as_str())
                        .push_bind(account.currency.clone())
                        .push_bind(account.balance)
                        .push_bind(account.version)
                        .push_bind(account.created_at)
                        .push_bind(account.updated_at);
                });
                insert.push(suffix);
                insert.build().execute(&mut *self.tx).await?;
            }
        }
        for chunk in operations.chunks(ROWS_PER_STATEMENT) {
            insert_operations(self.tables, chunk.iter().map(|(id, op)| (*id, op)))
                .build()
                .execute(&mut *self.tx)
                .await?;
        }
        for chunk in versions.chunks(ROWS_PER_STATEMENT) {
            insert_versions(self.tables, chunk.iter().map(|(id, row)| (*id, row)))
                .build()
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Inserts the `opened` transfers, overwrites the `moved` ones (rows this batch
    /// holds locked) and inserts their versions.
    pub(crate) async fn write_transfers(
        &mut self,
        opened: &[TransferRow],
        moved: &[TransferRow],
        versions: &[(Uuid, TransferVersionRow)],
    ) -> Result<(), sqlx::Error> {
        for (rows, suffix) in [(opened, ""), (moved, UPDATE_LOCKED_TRANSFERS)] {
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut insert = insert_transfers(self.tables, chunk);
                insert.push(suffix);
                insert.build().execute(&mut *self.tx).await?;
            }
        }
        for chunk in versions.chunks(ROWS_PER_STATEMENT) {
            insert_transfer_versions(self.tables, chunk.iter().map(|(id, row)| (*id, row)))
                .build()
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Adds `deltas` to the balance sheet's counters, in (currency, slot) order.
    pub(crate) async fn add_to_sheet(&mut self, deltas: &[SheetDelta]) -> Result<(), sqlx::Error> {
        for chunk in deltas.chunks(ROWS_PER_STATEMENT) {
            add_to_sheet(self.tables, chunk)
                .build()
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// A multi-row insert of operations, each with its account.
fn insert_operations<'a>(
    tables: &Tables,
    operations: impl IntoIterator<Item = (Uuid, &'a OperationRow)>,
) -> QueryBuilder<MySql> {
    let mut insert = QueryBuilder::<MySql>::new(tables.insert_operations);
    insert.push_values(operations, |mut row, (account, op)| {
        row.push_bind(op.event_id.hyphenated().to_string())
            .push_bind(account.hyphenated().to_string())
            .push_bind(op.version)
            .push_bind(op.kind.as_str())
            .push_bind(op.amount)
            .push_bind(op.currency)
            .push_bind(op.balance_after)
            .push_bind(op.occurred_at)
            .push_bind(op.transfer_id.map(|id| id.hyphenated().to_string()));
    });
    insert
}

/// A multi-row insert of transfer rows (the columns of `transfer_columns!`).
fn insert_transfers(tables: &Tables, rows: &[TransferRow]) -> QueryBuilder<MySql> {
    let mut insert = QueryBuilder::<MySql>::new(tables.insert_transfers);
    insert.push_values(rows, |mut row, transfer| {
        row.push_bind(transfer.id.hyphenated().to_string())
            .push_bind(transfer.from.hyphenated().to_string())
            .push_bind(transfer.to.hyphenated().to_string())
            .push_bind(transfer.amount)
            .push_bind(transfer.currency.clone())
            .push_bind(transfer.reference.clone())
            .push_bind(transfer.status.as_str())
            .push_bind(transfer.reason.clone())
            .push_bind(transfer.requested_by.clone())
            .push_bind(transfer.version)
            .push_bind(transfer.created_at)
            .push_bind(transfer.updated_at);
    });
    insert
}

/// A multi-row insert of projected transfer versions, each with its transfer.
fn insert_transfer_versions<'a>(
    tables: &Tables,
    versions: impl IntoIterator<Item = (Uuid, &'a TransferVersionRow)>,
) -> QueryBuilder<MySql> {
    let mut insert = QueryBuilder::<MySql>::new(tables.insert_transfer_versions);
    insert.push_values(versions, |mut row, (transfer, version)| {
        row.push_bind(transfer.hyphenated().to_string())
            .push_bind(version.version)
            .push_bind(version.event_id.hyphenated().to_string())
            .push_bind(version.kind)
            .push_bind(version.occurred_at);
    });
    insert
}

/// A multi-row addition to the balance sheet's counters (a row is created at the
/// first delta of its currency and slot).
fn add_to_sheet(tables: &Tables, deltas: &[SheetDelta]) -> QueryBuilder<MySql> {
    let mut insert = QueryBuilder::<MySql>::new(tables.add_to_sheet);
    insert.push_values(deltas, |mut row, delta| {
        row.push_bind(delta.currency)
            .push_bind(delta.slot)
            .push_bind(delta.balance)
            .push_bind(delta.accounts)
            .push_bind(delta.in_transit);
    });
    insert.push(ADD_TO_COUNTERS);
    insert
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

/// A multi-row insert of projected versions, each with its account.
fn insert_versions<'a>(
    tables: &Tables,
    versions: impl IntoIterator<Item = (Uuid, &'a VersionRow)>,
) -> QueryBuilder<MySql> {
    let mut insert = QueryBuilder::<MySql>::new(tables.insert_versions);
    insert.push_values(versions, |mut row, (account, version)| {
        row.push_bind(account.hyphenated().to_string())
            .push_bind(version.version)
            .push_bind(version.event_id.hyphenated().to_string())
            .push_bind(version.kind)
            .push_bind(version.status.as_str())
            .push_bind(version.balance)
            .push_bind(version.occurred_at);
    });
    insert
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

    /// An account's run: its row, operations and versions, and its balance-sheet slot.
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
            let operations = chunk.iter().map(|op| (mutation.account, op));
            match insert_operations(tables, operations)
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
            let versions = chunk.iter().map(|row| (mutation.account, row));
            match insert_versions(tables, versions)
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
            match add_to_sheet(tables, std::slice::from_ref(delta))
                .build()
                .execute(&mut *tx)
                .await
            {
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
            insert_transfers(tables, std::slice::from_ref(row))
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
        match insert_transfer_versions(tables, mutation.versions.iter().map(|v| (row.id, v)))
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

    /// Starts a transaction applying many streams' runs at once.
    pub(crate) async fn batch(&self, tables: &'static Tables) -> Result<Batch, sqlx::Error> {
        Ok(Batch {
            tx: self.pool.begin().await?,
            tables,
        })
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
