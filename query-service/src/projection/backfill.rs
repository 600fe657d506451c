//! Gap filling: when a delivered version is further ahead than the next one, the
//! missing events are fetched from the command service's stream of that id (an
//! account's or a transfer's: `GET /accounts/{id}/events` serves both to the query
//! service's `events:read` token).

use super::plan::{Candidate, Decisions, Origin, Stream, run_len};
use crate::source::{CommandClient, SourceError};

/// Fetches the stream after `projected` from the command service. What the command
/// service does not have (or cannot decode, or is another kind of stream's) is
/// condemned in `decided`.
pub(super) async fn backfill(
    source: &CommandClient,
    stream: Stream,
    projected: i64,
    decided: &mut Decisions<'_>,
) -> Result<Vec<Candidate>, SourceError> {
    let from = u64::try_from(projected + 1).unwrap_or(1);
    let events = match source.account_events(stream.id, from).await {
        Ok(events) => events,
        Err(SourceError::UnknownAccount(_)) => {
            decided.condemn_from(1, "the command service does not know this stream");
            return Ok(Vec::new());
        }
        Err(error) => return Err(error),
    };
    let mut run = Vec::with_capacity(events.len());
    let mut stop = None;
    for envelope in events {
        if envelope.account_id.as_uuid() != stream.id || envelope.version != from + run.len() as u64
        {
            stop = Some(format!(
                "the command service's stream is out of order at version {}",
                envelope.version
            ));
            break;
        }
        let version = envelope.version;
        match Candidate::decode(envelope, Origin::Fetched) {
            Ok(candidate) if candidate.stream() != stream => {
                stop = Some(format!(
                    "the command service's event at version {version} is not of a {}'s stream",
                    stream.kind.as_str()
                ));
                break;
            }
            Ok(candidate) => run.push(candidate),
            Err(reason) => {
                stop = Some(format!(
                    "the command service's event at version {version} cannot be applied: {reason}"
                ));
                break;
            }
        }
    }
    let end = projected + run_len(&run);
    tracing::info!(
        %stream,
        from_version = from,
        fetched = run.len(),
        "filled a gap from the command service"
    );
    let reason = stop.unwrap_or_else(|| {
        format!("the command service's stream of this id ends at version {end}")
    });
    decided.condemn_from(end + 1, &reason);
    Ok(run)
}
