//! The values of the rows the projection writes, in one form for both ways of sending
//! them: bound to a prepared statement, or written into SQL text as literals so that
//! several statements go to the server in one round trip (a prepared statement holds
//! one statement; the text protocol takes many).

use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_decimal::Decimal;
use sqlx::query_builder::Separated;
use sqlx::{MySql, QueryBuilder};
use uuid::Uuid;

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Text(String),
    Integer(i64),
    Decimal(Decimal),
    Time(DateTime<Utc>),
    Null,
}

impl From<Uuid> for Value {
    fn from(id: Uuid) -> Self {
        Self::Text(id.hyphenated().to_string())
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<i64> for Value {
    fn from(number: i64) -> Self {
        Self::Integer(number)
    }
}

impl From<u8> for Value {
    fn from(number: u8) -> Self {
        Self::Integer(number.into())
    }
}

impl From<Decimal> for Value {
    fn from(number: Decimal) -> Self {
        Self::Decimal(number)
    }
}

impl From<DateTime<Utc>> for Value {
    fn from(time: DateTime<Utc>) -> Self {
        Self::Time(time)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Null, Into::into)
    }
}

impl Value {
    fn bind(self, row: &mut Separated<'_, MySql, &'static str>) {
        match self {
            Self::Text(text) => row.push_bind(text),
            Self::Integer(number) => row.push_bind(number),
            Self::Decimal(number) => row.push_bind(number),
            Self::Time(time) => row.push_bind(time),
            Self::Null => row.push_bind(None::<String>),
        };
    }

    /// Writes the value as a SQL literal. Text made only of characters that mean
    /// nothing inside quotes is quoted as is; any other text is written as the hex
    /// of its UTF-8 bytes, so no input can end the literal.
    fn write_literal(&self, sql: &mut String) {
        match self {
            Self::Text(text) if text.chars().all(plain) => {
                sql.push('\'');
                sql.push_str(text);
                sql.push('\'');
            }
            Self::Text(text) => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                sql.push_str("_utf8mb4 X'");
                for byte in text.bytes() {
                    sql.push(char::from(HEX[usize::from(byte >> 4)]));
                    sql.push(char::from(HEX[usize::from(byte & 0x0F)]));
                }
                sql.push('\'');
            }
            Self::Integer(number) => {
                let _ = write!(sql, "{number}");
            }
            Self::Decimal(number) => {
                let _ = write!(sql, "{number}");
            }
            Self::Time(time) => write_time(sql, time),
            Self::Null => sql.push_str("NULL"),
        }
    }
}

/// `'YYYY-MM-DD hh:mm:ss.ffffff'` (a literal MariaDB reads as a `DATETIME(6)`), written
/// field by field: parsing a format string for each value cost the rebuild more than
/// the rest of its literals together.
fn write_time(sql: &mut String, time: &DateTime<Utc>) {
    let (date, clock) = (time.date_naive(), time.time());
    let nanos = clock.nanosecond();
    // A leap second is the 60th second, as chrono's `%S` writes it.
    let second = clock.second() + nanos / 1_000_000_000;
    let micros = nanos % 1_000_000_000 / 1_000;
    if (0..=9999).contains(&date.year()) {
        let _ = write!(
            sql,
            "'{:04}-{:02}-{:02} {:02}:{:02}:{second:02}.{micros:06}'",
            date.year(),
            date.month(),
            date.day(),
            clock.hour(),
            clock.minute(),
        );
    } else {
        let _ = write!(sql, "'{}'", time.format("%Y-%m-%d %H:%M:%S%.6f"));
    }
}

fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '-' | '.' | ':' | '@' | '/' | '+' | '=')
}

/// A multi-row statement with bound values: `head`, then `VALUES (...), (...)`.
pub(super) fn bound<const N: usize>(
    head: &'static str,
    rows: impl IntoIterator<Item = [Value; N]>,
) -> QueryBuilder<MySql> {
    let mut statement = QueryBuilder::<MySql>::new(head);
    statement.push_values(rows, |mut row, values| {
        for value in values {
            value.bind(&mut row);
        }
    });
    statement
}

/// Statements with their values written in, sent together.
#[derive(Debug, Default)]
pub(super) struct Script {
    sql: String,
}

impl Script {
    /// Appends `head VALUES (...), (...) tail;` (nothing without rows).
    pub(super) fn insert<const N: usize>(
        &mut self,
        head: &str,
        rows: impl IntoIterator<Item = [Value; N]>,
        tail: &str,
    ) {
        let mut rows = rows.into_iter().peekable();
        if rows.peek().is_none() {
            return;
        }
        self.sql.push_str(head);
        self.sql.push_str("VALUES ");
        for (index, values) in rows.enumerate() {
            if index > 0 {
                self.sql.push_str(", ");
            }
            self.tuple(values);
        }
        self.sql.push_str(tail);
        self.sql.push_str(";\n");
    }

    /// Appends a statement without values.
    pub(super) fn push(&mut self, statement: &str) {
        self.sql.push_str(statement);
        self.sql.push_str(";\n");
    }

    /// Appends `head (v, v, ...) tail;`: a statement over a list of values.
    pub(super) fn with_list(
        &mut self,
        head: &str,
        values: impl IntoIterator<Item = Value>,
        tail: &str,
    ) {
        self.sql.push_str(head);
        self.tuple(values);
        self.sql.push_str(tail);
        self.sql.push_str(";\n");
    }

    /// Appends `(v, v, ...)`.
    fn tuple(&mut self, values: impl IntoIterator<Item = Value>) {
        self.sql.push('(');
        for (index, value) in values.into_iter().enumerate() {
            if index > 0 {
                self.sql.push_str(", ");
            }
            value.write_literal(&mut self.sql);
        }
        self.sql.push(')');
    }

    pub(super) fn into_sql(self) -> String {
        self.sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(value: impl Into<Value>) -> String {
        let mut sql = String::new();
        value.into().write_literal(&mut sql);
        sql
    }

    #[test]
    fn plain_text_is_quoted_as_is() {
        assert_eq!(literal("MAD"), "'MAD'");
        assert_eq!(
            literal(Uuid::nil()),
            "'00000000-0000-0000-0000-000000000000'"
        );
        assert_eq!(literal("user:alice@bank"), "'user:alice@bank'");
    }

    #[test]
    fn text_that_could_end_the_literal_is_written_as_hex() {
        assert_eq!(literal("a'b"), "_utf8mb4 X'612762'");
        assert_eq!(literal("a\\"), "_utf8mb4 X'615C'");
        assert_eq!(literal("é"), "_utf8mb4 X'C3A9'");
        assert_eq!(literal(""), "''");
    }

    #[test]
    fn numbers_times_and_nulls_are_written_exactly() {
        assert_eq!(literal(-42_i64), "-42");
        assert_eq!(literal(Decimal::new(-12_345, 2)), "-123.45");
        let time = DateTime::parse_from_rfc3339("2026-12-01T16:05:09.000123Z")
            .map(|time| time.with_timezone(&Utc))
            .unwrap_or_default();
        assert_eq!(literal(time), "'2026-12-01 16:05:09.000123'");
        assert_eq!(literal(None::<String>), "NULL");
    }

    proptest::proptest! {
        #[test]
        fn a_time_is_written_as_chrono_formats_it(
            seconds in -63_000_000_000_i64..260_000_000_000,
            nanos in 0_u32..2_000_000_000,
        ) {
            if let Some(time) = DateTime::<Utc>::from_timestamp(seconds, nanos) {
                proptest::prop_assert_eq!(
                    literal(time),
                    format!("'{}'", time.format("%Y-%m-%d %H:%M:%S%.6f"))
                );
            }
        }

        #[test]
        fn any_text_is_written_so_that_it_reads_back(text in ".*") {
            let sql = literal(text.as_str());
            let read_back = match sql.strip_prefix("_utf8mb4 X'") {
                Some(hex) => {
                    let hex = hex.trim_end_matches('\'');
                    let bytes: Vec<u8> = (0..hex.len())
                        .step_by(2)
                        .filter_map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
                        .collect();
                    String::from_utf8(bytes).unwrap_or_default()
                }
                None => sql.trim_matches('\'').to_owned(),
            };
            proptest::prop_assert_eq!(read_back, text);
        }
    }

    #[test]
    fn a_script_holds_one_multi_row_statement_per_insert() {
        let mut script = Script::default();
        script.insert(
            "INSERT INTO t (a, b) ",
            [
                [Value::from(1_i64), Value::from("x")],
                [2_i64.into(), Value::Null],
            ],
            " ON DUPLICATE KEY UPDATE b = VALUES(b)",
        );
        script.insert::<1>("INSERT INTO u (a) ", [], "");
        script.push("COMMIT");
        assert_eq!(
            script.into_sql(),
            "INSERT INTO t (a, b) VALUES (1, 'x'), (2, NULL) ON DUPLICATE KEY UPDATE b = VALUES(b);\nCOMMIT;\n"
        );
    }
}
