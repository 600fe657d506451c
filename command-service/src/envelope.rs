//! Stored events in the contract's envelope, as the feeds and the broker carry them.

use event_store::RecordedEvent;
use shared_events::{AccountId, EventEnvelope, EventMetadata};

pub(crate) fn to_envelope(recorded: &RecordedEvent) -> EventEnvelope {
    EventEnvelope {
        event_id: recorded.event_id,
        account_id: AccountId::from(recorded.stream_id),
        version: u64::try_from(recorded.version).unwrap_or_default(),
        position: u64::try_from(recorded.position).unwrap_or_default(),
        event_type: recorded.event_type.clone(),
        schema_version: recorded.schema_version,
        occurred_at: recorded.occurred_at,
        data: recorded.data.clone(),
        metadata: serde_json::from_value::<EventMetadata>(recorded.metadata.clone())
            .unwrap_or_default(),
    }
}
