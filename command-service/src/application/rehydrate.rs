//! Rebuilds an account from its stream: the latest snapshot, then the events after it;
//! or, when the snapshot's schema is unknown, every event of the stream from the first.
//! A snapshot of schema 1 (the release before owners) is read as an account without
//! owner, which is exactly what such an account is.

use std::collections::HashMap;

use event_store::{EventStore, LoadedStream, StoreError, WriterConnection};
use serde_json::Value;
use shared_events::{AccountEvent, AccountId, EventDecodeError};
use uuid::Uuid;

use crate::domain::{Account, evolve};

/// Version of the serialised [`Account`] kept as the stream snapshot. 2: with `owner`.
pub(super) const SNAPSHOT_SCHEMA: i32 = 2;

/// Snapshot schemas this release reads: 1 has no `owner` (None when read).
const READABLE_SNAPSHOT_SCHEMAS: [i32; 2] = [1, SNAPSHOT_SCHEMA];

fn readable(schema_version: i32) -> bool {
    READABLE_SNAPSHOT_SCHEMAS.contains(&schema_version)
}

/// The streams `ids` as needed to rebuild their accounts: a stream whose snapshot is
/// missing or of a schema this release cannot read comes with all its events.
pub(super) async fn load(
    store: &EventStore,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, LoadedStream>, StoreError> {
    with_every_event_unless_snapshot_readable(store, store.load_many(ids).await?).await
}

/// [`load`] on a writer's own connection.
pub(super) async fn load_on(
    connection: &mut WriterConnection,
    store: &EventStore,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, LoadedStream>, StoreError> {
    with_every_event_unless_snapshot_readable(store, connection.load_many(ids).await?).await
}

async fn with_every_event_unless_snapshot_readable(
    store: &EventStore,
    mut loaded: HashMap<Uuid, LoadedStream>,
) -> Result<HashMap<Uuid, LoadedStream>, StoreError> {
    for (id, stream) in &mut loaded {
        if stream
            .snapshot
            .as_ref()
            .is_some_and(|snapshot| readable(snapshot.schema_version))
        {
            continue;
        }
        stream.snapshot = None;
        stream.events = store.read_stream(*id, 1).await?.unwrap_or_default();
    }
    Ok(loaded)
}

/// Why a stream does not rebuild to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NotAnAccount {
    /// The id is another kind of stream's (a transfer's).
    OtherStream,
    /// The stream cannot be read back.
    Corrupt(String),
}

impl From<String> for NotAnAccount {
    fn from(message: String) -> Self {
        Self::Corrupt(message)
    }
}

/// The account a stream holds (`None`: no such stream), or why it holds none.
pub(super) fn rebuild(
    id: AccountId,
    stream: Option<LoadedStream>,
) -> Result<Option<Account>, NotAnAccount> {
    let Some(stream) = stream else {
        return Ok(None);
    };
    let mut account = match stream.snapshot {
        Some(snapshot) if readable(snapshot.schema_version) => Some(
            serde_json::from_value::<Account>(snapshot.state)
                .map_err(|e| format!("snapshot of {id}: {e}"))?,
        ),
        Some(snapshot) => {
            return Err(format!(
                "stream {id} has a snapshot of schema {}, not one of {READABLE_SNAPSHOT_SCHEMAS:?}",
                snapshot.schema_version
            )
            .into());
        }
        None => None,
    };
    for recorded in &stream.events {
        let event = match AccountEvent::decode(
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        ) {
            Ok(event) => event,
            Err(EventDecodeError::WrongStream(_)) => return Err(NotAnAccount::OtherStream),
            Err(e) => return Err(format!("event {} of {id}: {e}", recorded.version).into()),
        };
        account = evolve(account, &event);
    }
    let Some(account) = account else {
        return Err(format!("stream {id} holds no account").into());
    };
    if i64::try_from(account.version).ok() != Some(stream.version) {
        return Err(format!(
            "stream {id} rebuilds to version {} not {}",
            account.version, stream.version
        )
        .into());
    }
    Ok(Some(account))
}

/// The snapshot to store for an account after a command ([`SNAPSHOT_SCHEMA`]).
pub(super) fn snapshot(account: Option<&Account>) -> Option<Value> {
    account.and_then(|a| serde_json::to_value(a).ok())
}
