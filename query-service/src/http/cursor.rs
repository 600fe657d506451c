//! Opaque page cursors: the key of the last item of a page, hex-encoded behind a
//! one-letter tag, so that a cursor of one listing is refused by another.

use chrono::{DateTime, Datelike};
use uuid::Uuid;

use crate::error::ApiError;
use crate::store::TransferCursor;

/// Cursor of the account listing: the last account id.
pub(super) fn encode_account(id: Uuid) -> String {
    format!("a{}", id.simple())
}

pub(super) fn decode_account(cursor: &str) -> Result<Uuid, ApiError> {
    cursor
        .strip_prefix('a')
        .filter(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|hex| Uuid::try_parse(hex).ok())
        .ok_or_else(invalid)
}

/// Cursor of an operations listing: the last operation's version.
pub(super) fn encode_operation(version: i64) -> String {
    format!("o{version:016x}")
}

pub(super) fn decode_operation(cursor: &str) -> Result<i64, ApiError> {
    cursor
        .strip_prefix('o')
        .filter(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .filter(|version| *version >= 0)
        .ok_or_else(invalid)
}

/// Cursor of a transfers listing: the last transfer's creation time (microseconds
/// since 1970) and id.
pub(super) fn encode_transfer(after: TransferCursor) -> String {
    format!(
        "t{:016x}{}",
        after.created_at.timestamp_micros().max(0),
        after.id.simple()
    )
}

pub(super) fn decode_transfer(cursor: &str) -> Result<TransferCursor, ApiError> {
    let hex = cursor
        .strip_prefix('t')
        .filter(|hex| hex.len() == 48 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(invalid)?;
    let (micros, id) = hex.split_at(16);
    let created_at = i64::from_str_radix(micros, 16)
        .ok()
        .filter(|micros| *micros >= 0)
        .and_then(DateTime::from_timestamp_micros)
        // Past what the read database's DATETIME holds: no transfer was made then.
        .filter(|at| at.year() <= 9999)
        .ok_or_else(invalid)?;
    let id = Uuid::try_parse(id).map_err(|_| invalid())?;
    Ok(TransferCursor { created_at, id })
}

fn invalid() -> ApiError {
    ApiError::Invalid("after is not a cursor returned by this listing".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_do_not_mix() {
        let id = Uuid::now_v7();
        assert_eq!(decode_account(&encode_account(id)).unwrap(), id);
        assert_eq!(decode_operation(&encode_operation(42)).unwrap(), 42);
        assert!(decode_account(&encode_operation(42)).is_err());
        assert!(decode_operation(&encode_account(id)).is_err());
        for junk in [
            "",
            "a",
            "o-1",
            "axyz",
            "o+00000000000001",
            &format!("A{}", id.simple()),
        ] {
            assert!(
                decode_account(junk).is_err()
                    && decode_operation(junk).is_err()
                    && decode_transfer(junk).is_err(),
                "{junk}"
            );
        }
    }

    #[test]
    fn a_transfer_cursor_round_trips_to_the_microsecond_and_refuses_the_others() {
        let after = TransferCursor {
            created_at: DateTime::from_timestamp_micros(1_796_119_200_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        let cursor = encode_transfer(after);
        assert_eq!(decode_transfer(&cursor).unwrap(), after);
        assert!(decode_account(&cursor).is_err() && decode_operation(&cursor).is_err());
        assert!(decode_transfer(&encode_operation(42)).is_err());
        let negative = format!("t{}{}", "f".repeat(16), after.id.simple());
        assert!(decode_transfer(&negative).is_err());
        let past_year_9999 = format!("t4cf082c8b2c6bdba{}", after.id.simple());
        assert!(decode_transfer(&past_year_9999).is_err());
    }
}
