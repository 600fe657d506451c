//! The oracle: what the read model must show, derived from the command service's own
//! events (`GET /accounts/{id}/events`), and the contract's view of what it shows.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// Contract fields of an account, in the order the contract lists them.
pub const ACCOUNT_FIELDS: [&str; 7] = [
    "id",
    "status",
    "currency",
    "balance",
    "version",
    "created_at",
    "updated_at",
];
/// Contract fields of an operation (`transfer_id` only on a transfer's legs).
pub const OPERATION_FIELDS: [&str; 8] = [
    "event_id",
    "type",
    "amount",
    "currency",
    "balance_after",
    "version",
    "occurred_at",
    "transfer_id",
];

/// What the read model must hold for one account.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub account: Value,
    pub operations: Vec<Value>,
}

impl Expected {
    /// Folds an account's full stream, version 1 first.
    pub fn from_events(events: &[Value]) -> Self {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            panic!("an account has at least one event");
        };
        for (index, event) in events.iter().enumerate() {
            assert_eq!(
                event["version"].as_u64(),
                Some(index as u64 + 1),
                "the command service's stream is gap-free and in version order"
            );
        }
        let mut status = "CREATED";
        let currency = first["data"]["currency"].clone();
        let mut balance = first["data"]["initial_balance"].clone();
        let mut operations = Vec::new();
        for event in events {
            let data = &event["data"];
            match event["type"].as_str().unwrap_or_default() {
                "AccountActivated" | "AccountReactivated" => status = "ACTIVE",
                "AccountSuspended" => status = "SUSPENDED",
                "AccountClosed" => status = "CLOSED",
                kind @ ("AccountCredited" | "AccountDebited") => {
                    balance = data["balance"].clone();
                    let operation = match (data["kind"].as_str(), kind) {
                        (Some(leg), _) => leg,
                        (None, "AccountCredited") => "CREDIT",
                        (None, _) => "DEBIT",
                    };
                    operations.push(json!({
                        "event_id": event["event_id"],
                        "type": operation,
                        "amount": data["amount"],
                        "currency": data["currency"],
                        "balance_after": data["balance"],
                        "version": event["version"],
                        "occurred_at": instant(&event["occurred_at"]),
                        "transfer_id": data["transfer_id"],
                    }));
                }
                _ => {}
            }
        }
        Self {
            account: json!({
                "id": first["account_id"],
                "status": status,
                "currency": currency,
                "balance": balance,
                "version": last["version"],
                "created_at": instant(&first["occurred_at"]),
                "updated_at": instant(&last["occurred_at"]),
            }),
            operations,
        }
    }

    pub fn version(&self) -> u64 {
        self.account["version"].as_u64().unwrap_or_default()
    }

    pub fn status(&self) -> &str {
        self.account["status"].as_str().unwrap_or_default()
    }
}

/// The contract's fields of an account as served, timestamps as instants. A missing
/// field shows as `null`, so that it fails the comparison visibly.
pub fn account_view(account: &Value) -> Value {
    view(account, &ACCOUNT_FIELDS, &["created_at", "updated_at"])
}

/// The contract's fields of an operation as served.
pub fn operation_view(operation: &Value) -> Value {
    view(operation, &OPERATION_FIELDS, &["occurred_at"])
}

fn view(object: &Value, fields: &[&str], timestamps: &[&str]) -> Value {
    let picked: serde_json::Map<String, Value> = fields
        .iter()
        .map(|field| {
            let value = &object[*field];
            let value = if timestamps.contains(field) {
                instant(value)
            } else {
                value.clone()
            };
            ((*field).to_owned(), value)
        })
        .collect();
    Value::Object(picked)
}

/// A timestamp rendered canonically (same instant, same text, whatever the precision
/// it was written with); anything that is not RFC 3339 is kept as is, marked.
pub fn instant(value: &Value) -> Value {
    match value.as_str().map(DateTime::parse_from_rfc3339) {
        Some(Ok(at)) => Value::String(
            at.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ),
        _ => json!({ "not an RFC 3339 timestamp": value }),
    }
}

/// Fraction digits of a currency's minor unit (those the suite uses and their kin).
pub fn minor_unit(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "CLP" | "ISK" | "VND" => 0,
        "KWD" | "BHD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
        _ => 2,
    }
}

/// An exact amount rendered with exactly the currency's fraction digits.
pub fn render(amount: Decimal, currency: &str) -> String {
    let mut amount = amount;
    amount.rescale(minor_unit(currency));
    amount.to_string()
}

pub fn decimal(text: &Value) -> Decimal {
    text.as_str()
        .and_then(|text| Decimal::from_str(text).ok())
        .unwrap_or_else(|| panic!("not a decimal string: {text}"))
}

/// `GET /balance-sheet` as it must be: per currency, the exact sum and the count of
/// the accounts that are not closed.
pub fn balance_sheet(accounts: &[&Expected]) -> BTreeMap<String, (String, u64)> {
    let mut totals: BTreeMap<String, (Decimal, u64)> = BTreeMap::new();
    for expected in accounts {
        if expected.status() == "CLOSED" {
            continue;
        }
        let currency = expected.account["currency"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let total = totals.entry(currency).or_default();
        total.0 += decimal(&expected.account["balance"]);
        total.1 += 1;
    }
    totals
        .into_iter()
        .map(|(currency, (sum, count))| {
            let rendered = render(sum, &currency);
            (currency, (rendered, count))
        })
        .collect()
}

/// A served balance sheet in the same shape.
pub fn served_balance_sheet(sheet: &Value) -> BTreeMap<String, (String, u64)> {
    let totals = sheet["totals"]
        .as_array()
        .unwrap_or_else(|| panic!("no totals in {sheet}"));
    let mut served = BTreeMap::new();
    for total in totals {
        let currency = total["currency"].as_str().unwrap_or_default().to_owned();
        let entry = (
            total["balance"].as_str().unwrap_or_default().to_owned(),
            total["accounts"].as_u64().unwrap_or_default(),
        );
        assert!(
            served.insert(currency, entry).is_none(),
            "one total per currency: {sheet}"
        );
    }
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_render_with_the_currency_digits() {
        assert_eq!(render(Decimal::new(15, 1), "MAD"), "1.50");
        assert_eq!(render(Decimal::new(7, 0), "JPY"), "7");
        assert_eq!(render(Decimal::new(125, 2), "KWD"), "1.250");
    }

    #[test]
    fn instants_compare_whatever_the_precision_written() {
        assert_eq!(
            instant(&json!("2026-11-22T10:00:00.123456Z")),
            instant(&json!("2026-11-22T10:00:00.123456000+00:00"))
        );
        assert_ne!(
            instant(&json!("2026-11-22T10:00:00.123456Z")),
            instant(&json!("2026-11-22T10:00:00.123Z"))
        );
    }

    #[test]
    fn a_stream_folds_into_the_account_and_its_operations() {
        let at = "2026-11-22T10:00:00.000001Z";
        let events = [
            json!({"event_id": "e1", "account_id": "a", "version": 1, "type": "AccountCreated", "occurred_at": at,
                   "data": {"initial_balance": "1.00", "currency": "EUR"}}),
            json!({"event_id": "e2", "account_id": "a", "version": 2, "type": "AccountActivated", "occurred_at": at, "data": {}}),
            json!({"event_id": "e3", "account_id": "a", "version": 3, "type": "AccountDebited", "occurred_at": at,
                   "data": {"amount": "1.00", "currency": "EUR", "balance": "0.00"}}),
            json!({"event_id": "e4", "account_id": "a", "version": 4, "type": "AccountClosed", "occurred_at": at, "data": {}}),
        ];
        let expected = Expected::from_events(&events);
        assert_eq!(expected.account["status"], "CLOSED");
        assert_eq!(expected.account["balance"], "0.00");
        assert_eq!(expected.version(), 4);
        assert_eq!(expected.operations.len(), 1);
        assert_eq!(expected.operations[0]["type"], "DEBIT");
    }
}
