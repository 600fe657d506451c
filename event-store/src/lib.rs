//! Postgres event store.
//!
//! - [`EventStore::append`]: optimistic concurrency on a stream's version, events, the
//!   latest snapshot and an idempotency record in one transaction;
//! - [`EventStore::load`]: the latest snapshot plus the events after it;
//! - [`EventStore::read_all`]: the global feed, gap-free in position order;
//! - [`OutboxLeader`]: the single active relay; the events table is the outbox, read
//!   after the relay checkpoint (the position of the last event the broker confirmed);
//! - [`TransferProcessLeader`]: the single active transfer process, its checkpoint and
//!   the transfer requests after it.

mod error;
mod outbox;
mod store;
mod transfers;

pub use error::StoreError;
pub use outbox::{AppendListener, OutboxLeader};
pub use store::{
    Append, EventStore, LoadedStream, NewEvent, RecordedEvent, Snapshot, StoredResponse,
    StreamAppend, WriterConnection,
};
pub use transfers::{TransferProcessLeader, TransferRequest};
