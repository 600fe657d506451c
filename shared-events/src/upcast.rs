//! Schema evolution: events are stored as they were written, forever, and read through
//! a chain of upcasters that turn the data of an older schema version into the current
//! one, one version at a time.
//!
//! To change an event's shape: raise [`EventType::schema_version`] for it, add one
//! [`Upcaster`] from the previous version to [`UPCASTERS`], and decode only the new
//! shape. Old streams (in the event store, in the feeds, in a rebuild) keep working.

use std::borrow::Cow;

use serde_json::Value;

use crate::{EventDecodeError, EventType};

/// Turns the data of `event_type` at schema version `from` into version `from + 1`.
#[derive(Debug)]
struct Upcaster {
    event_type: EventType,
    from: i32,
    upcast: fn(Value) -> Result<Value, String>,
}

/// Every upcaster, in no particular order.
const UPCASTERS: &[Upcaster] = &[Upcaster {
    event_type: EventType::AccountCreated,
    from: 1,
    upcast: created_v1_to_v2,
}];

/// Version 2 of `AccountCreated` names the account's owner; version 1 accounts have none.
fn created_v1_to_v2(mut data: Value) -> Result<Value, String> {
    let fields = data
        .as_object_mut()
        .ok_or_else(|| "data must be an object".to_owned())?;
    if fields.contains_key("owner") {
        return Err("unknown field `owner` at schema version 1".to_owned());
    }
    fields.insert("owner".to_owned(), Value::Null);
    Ok(data)
}

/// The data of an event stored at `schema_version`, in the current version's shape.
/// Data already current is borrowed as it is.
pub(crate) fn to_current(
    event_type: EventType,
    schema_version: i32,
    data: &Value,
) -> Result<Cow<'_, Value>, EventDecodeError> {
    let current = event_type.schema_version();
    let unsupported = EventDecodeError::UnsupportedSchema {
        event_type,
        schema_version,
    };
    if schema_version == current {
        return Ok(Cow::Borrowed(data));
    }
    if schema_version < 1 || schema_version > current {
        return Err(unsupported);
    }
    let mut data = data.clone();
    for version in schema_version..current {
        let step = UPCASTERS
            .iter()
            .find(|step| step.event_type == event_type && step.from == version)
            .ok_or_else(|| unsupported.clone())?;
        data = (step.upcast)(data)
            .map_err(|reason| EventDecodeError::InvalidData { event_type, reason })?;
    }
    Ok(Cow::Owned(data))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::AccountEvent;

    #[test]
    fn every_type_has_a_complete_chain_up_to_its_current_version() {
        for event_type in EventType::ALL {
            for from in 1..event_type.schema_version() {
                assert!(
                    UPCASTERS
                        .iter()
                        .any(|step| step.event_type == event_type && step.from == from),
                    "{event_type} has no upcaster from version {from}"
                );
            }
        }
    }

    #[test]
    fn a_version_1_account_created_reads_as_an_account_without_owner() {
        // Given data stored by the release before owners existed
        let stored = json!({"initial_balance": "100.00", "currency": "MAD"});
        // When it is read today
        let event = AccountEvent::decode("AccountCreated", 1, &stored).unwrap();
        // Then it is an account without owner, and the stored data is untouched
        let AccountEvent::Created {
            initial_balance,
            owner,
        } = event
        else {
            panic!("not a creation: {event:?}");
        };
        assert_eq!(initial_balance.render(), "100.00");
        assert_eq!(owner, None);
        assert_eq!(
            stored,
            json!({"initial_balance": "100.00", "currency": "MAD"})
        );
    }

    #[test]
    fn version_1_data_that_already_names_an_owner_is_refused() {
        let forged = json!({"initial_balance": "1.00", "currency": "MAD", "owner": "mallory"});
        assert!(AccountEvent::decode("AccountCreated", 1, &forged).is_err());
    }

    #[test]
    fn versions_outside_the_chain_are_refused() {
        let data = json!({"initial_balance": "1.00", "currency": "MAD", "owner": "alice"});
        for version in [0, -1, 3, i32::MAX] {
            assert!(matches!(
                AccountEvent::decode("AccountCreated", version, &data),
                Err(EventDecodeError::UnsupportedSchema { .. })
            ));
        }
    }

    #[test]
    fn current_data_is_not_copied() {
        let data = json!({});
        assert!(matches!(
            to_current(EventType::AccountClosed, 1, &data),
            Ok(Cow::Borrowed(_))
        ));
    }
}
