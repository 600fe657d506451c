//! Rebuilds an account from its stream: the latest snapshot, then the events after it.

use event_store::LoadedStream;
use serde_json::Value;
use shared_events::{AccountEvent, AccountId};

use crate::domain::{Account, evolve};

/// Version of the serialised [`Account`] kept as the stream snapshot.
pub(super) const SNAPSHOT_SCHEMA: i32 = 1;

/// The account a stream holds (`None`: no such stream), or why it cannot be read back.
pub(super) fn rebuild(
    id: AccountId,
    stream: Option<LoadedStream>,
) -> Result<Option<Account>, String> {
    let Some(stream) = stream else {
        return Ok(None);
    };
    let mut account = match stream.snapshot {
        Some(snapshot) if snapshot.schema_version == SNAPSHOT_SCHEMA => {
            serde_json::from_value::<Account>(snapshot.state)
                .map_err(|e| format!("snapshot of {id}: {e}"))?
        }
        _ => return Err(format!("stream {id} has no usable snapshot")),
    };
    for recorded in &stream.events {
        let event = AccountEvent::decode(
            &recorded.event_type,
            recorded.schema_version,
            &recorded.data,
        )
        .map_err(|e| format!("event {} of {id}: {e}", recorded.version))?;
        account =
            evolve(Some(account), &event).ok_or_else(|| format!("stream {id} lost its account"))?;
    }
    if i64::try_from(account.version).ok() != Some(stream.version) {
        return Err(format!(
            "stream {id} rebuilds to version {} not {}",
            account.version, stream.version
        ));
    }
    Ok(Some(account))
}

/// The snapshot to store for an account after a command ([`SNAPSHOT_SCHEMA`]).
pub(super) fn snapshot(account: Option<&Account>) -> Value {
    account
        .and_then(|a| serde_json::to_value(a).ok())
        .unwrap_or(Value::Null)
}
