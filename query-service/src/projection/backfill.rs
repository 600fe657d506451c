//! Gap filling: when a delivered version is further ahead than the next one, the
//! missing events are fetched from the command service's stream of the account.

use uuid::Uuid;

use super::plan::{Candidate, Decisions, Origin, run_len};
use crate::source::{CommandClient, SourceError};

/// Fetches the account's stream after `projected` from the command service. What
/// the command service does not have (or cannot decode) is condemned in `decided`.
pub(super) async fn backfill(
    source: &CommandClient,
    account: Uuid,
    projected: i64,
    decided: &mut Decisions<'_>,
) -> Result<Vec<Candidate>, SourceError> {
    let from = u64::try_from(projected + 1).unwrap_or(1);
    let events = match source.account_events(account, from).await {
        Ok(events) => events,
        Err(SourceError::UnknownAccount(_)) => {
            decided.condemn_from(1, "the command service does not know this account");
            return Ok(Vec::new());
        }
        Err(error) => return Err(error),
    };
    let mut run = Vec::with_capacity(events.len());
    let mut stop = None;
    for envelope in events {
        if envelope.account_id.as_uuid() != account || envelope.version != from + run.len() as u64 {
            stop = Some(format!(
                "the command service's stream is out of order at version {}",
                envelope.version
            ));
            break;
        }
        let version = envelope.version;
        match Candidate::decode(envelope, Origin::Fetched) {
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
        %account,
        from_version = from,
        fetched = run.len(),
        "filled a gap from the command service"
    );
    let reason = stop.unwrap_or_else(|| {
        format!("the command service's stream of this account ends at version {end}")
    });
    decided.condemn_from(end + 1, &reason);
    Ok(run)
}
