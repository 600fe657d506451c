//! Fresh names, so that every test has its own databases, exchanges and queues on the
//! shared servers and can run beside the others.

use uuid::Uuid;

/// A fresh id that is valid in database, exchange and queue names.
pub fn fresh_id() -> String {
    Uuid::new_v4().simple().to_string()
}

/// A fresh database name, `{prefix}_{id}`.
pub fn fresh_database(prefix: &str) -> String {
    format!("{prefix}_{}", fresh_id())
}

/// A fresh exchange or queue name, `{prefix}.{id}`.
pub fn fresh_exchange(prefix: &str) -> String {
    format!("{prefix}.{}", fresh_id())
}
