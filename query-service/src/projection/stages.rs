//! The query side's stages of an event's journey (`event_pipeline_seconds{stage}`):
//! seconds from the event's `occurred_at` (the command service's clock) to the moment
//! the consumer received it, its rows were sent, and its transaction committed.
//! `projection_lag_seconds` is the last of these, under the name operators alert on.
//! Across hosts, clock skew adds to every figure.

use chrono::{DateTime, Utc};

/// Where an event has got to on the query side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// The broker consumer received its message.
    Delivered,
    /// Its rows were sent to the database, with the commit that follows them in the
    /// same round trip (the per-stream path: written, before its commit).
    Applied,
    /// The read-model transaction holding it committed (before waking the waiters).
    Projected,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Applied => "applied",
            Self::Projected => "projected",
        }
    }
}

/// Records that events which occurred at `occurred` reached `stage` at `reached`.
pub(crate) fn record(
    stage: Stage,
    reached: DateTime<Utc>,
    occurred: impl IntoIterator<Item = DateTime<Utc>>,
) {
    let histogram = metrics::histogram!("event_pipeline_seconds", "stage" => stage.label());
    let lag = (stage == Stage::Projected).then(|| metrics::histogram!("projection_lag_seconds"));
    for at in occurred {
        let seconds = (reached - at).to_std().unwrap_or_default().as_secs_f64();
        histogram.record(seconds);
        if let Some(lag) = &lag {
            lag.record(seconds);
        }
    }
}
