//! Hand-built schemas of the request bodies whose rules a derived schema cannot say:
//! an amount's fraction digits depend on its currency, so each body is one of a few
//! shapes, one per number of minor units, each listing its currencies.
//!
//! Each shape has a title of its own in the whole document: client generators name a
//! class after it, and two shapes of one title make them drop the operations that use them.

use std::collections::BTreeMap;

use shared_events::{Currency, MAX_COMMAND_AMOUNT};
use utoipa::openapi::schema::{
    AdditionalProperties, AnyOfBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat,
    Type,
};
use utoipa::openapi::{RefOr, Schema};

/// Whether an amount may be zero (an opening balance) or must be positive (a movement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Zero {
    Allowed,
    Refused,
}

/// The currencies grouped by their number of minor units (0 for JPY, 2 for EUR, ...).
fn currencies_by_minor_units() -> BTreeMap<u32, Vec<&'static str>> {
    let mut groups = BTreeMap::<u32, Vec<&'static str>>::new();
    for currency in Currency::all() {
        groups
            .entry(currency.minor_units())
            .or_default()
            .push(currency.code());
    }
    groups
}

fn currency_of(codes: &[&'static str]) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("ISO 4217 currency code"))
        .enum_values(Some(codes.iter().copied()))
}

/// The text of a decimal amount of at most `minor_units` fraction digits (trailing zeros
/// aside), between 0 (or the smallest positive amount) and 10^12 major units.
fn amount_pattern(minor_units: u32, zero: Zero) -> String {
    let max = MAX_COMMAND_AMOUNT.trunc().to_string();
    let fraction = if minor_units == 0 {
        r"\.0{1,8}".to_owned()
    } else {
        format!(r"\.[0-9]{{1,{minor_units}}}0{{0,8}}")
    };
    let mut shapes = vec![
        format!(r"0{{0,8}}[1-9][0-9]{{0,{}}}({fraction})?", max.len() - 2),
        format!(r"0{{0,8}}{max}(\.0{{1,8}})?"),
    ];
    if minor_units > 0 {
        let positive_fractions: Vec<String> = (0..minor_units)
            .map(|zeros| {
                let rest = minor_units - 1 - zeros;
                format!("0{{{zeros}}}[1-9][0-9]{{0,{rest}}}")
            })
            .collect();
        shapes.push(format!(
            r"0{{1,8}}\.({})0{{0,8}}",
            positive_fractions.join("|")
        ));
    }
    if zero == Zero::Allowed {
        shapes.push(r"0{1,8}(\.0{1,8})?".to_owned());
    }
    format!("^({})$", shapes.join("|"))
}

/// An amount of a currency with `minor_units` fraction digits: a decimal string, or a
/// JSON number (read from its digits, never through binary floating point).
fn amount(minor_units: u32, zero: Zero, description: &str) -> RefOr<Schema> {
    let text = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(amount_pattern(minor_units, zero)))
        .examples([serde_json::json!(example_amount(minor_units))]);
    let integer = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .maximum(Some(1_000_000_000_000_u64));
    let integer = match zero {
        Zero::Allowed => integer.minimum(Some(0)),
        Zero::Refused => integer.minimum(Some(1)),
    };
    AnyOfBuilder::new()
        .item(text)
        .item(integer)
        .description(Some(description))
        .into()
}

fn example_amount(minor_units: u32) -> String {
    match minor_units {
        0 => "100".to_owned(),
        digits => format!("100.{}", "5".repeat(digits as usize)),
    }
}

/// `{"initial_balance", "currency", "id"?}`, one shape per number of minor units.
pub(super) fn create_account() -> RefOr<Schema> {
    let mut shapes = OneOfBuilder::new().description(Some(
        "Opens an account. `initial_balance` is at most 10^12 major units, with no more \
         fraction digits than `currency` has (2 for MAD, 0 for JPY, 3 for KWD).",
    ));
    for (minor_units, codes) in currencies_by_minor_units() {
        shapes = shapes.item(
            ObjectBuilder::new()
                .title(Some(format!(
                    "Opening with up to {minor_units} fraction digits"
                )))
                .property(
                    "initial_balance",
                    amount(
                        minor_units,
                        Zero::Allowed,
                        "Opening balance, `0 <= initial_balance <= 10^12`.",
                    ),
                )
                .required("initial_balance")
                .property("currency", currency_of(&codes))
                .required("currency")
                .property(
                    "id",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                        .description(Some(
                            "Id to give the account; generated (UUID v7) when absent.",
                        )),
                )
                .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false))),
        );
    }
    shapes.into()
}

/// `{"amount", "currency"?}`: with a currency, one shape per number of minor units;
/// without one, the amount may have up to the account's currency's fraction digits.
pub(super) fn movement() -> RefOr<Schema> {
    let mut shapes = OneOfBuilder::new().description(Some(
        "A credit or debit. `0 < amount <= 10^12` major units, with no more fraction digits \
         than the account's currency has; `currency`, when given, must be the account's.",
    ));
    let groups = currencies_by_minor_units();
    let most_digits = groups.keys().copied().max().unwrap_or(0);
    shapes = shapes.item(
        ObjectBuilder::new()
            .title(Some("Movement in the account currency"))
            .property(
                "amount",
                amount(
                    most_digits,
                    Zero::Refused,
                    "`0 < amount <= 10^12`, with at most the account's currency's fraction digits.",
                ),
            )
            .required("amount")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false))),
    );
    for (minor_units, codes) in groups {
        shapes = shapes.item(
            ObjectBuilder::new()
                .title(Some(format!(
                    "Movement with up to {minor_units} fraction digits"
                )))
                .property(
                    "amount",
                    amount(minor_units, Zero::Refused, "`0 < amount <= 10^12`."),
                )
                .required("amount")
                .property(
                    "currency",
                    currency_of(&codes).description(Some("Must be the account's currency.")),
                )
                .required("currency")
                .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false))),
        );
    }
    shapes.into()
}

/// `from`, `to` and `reference`, common to every shape of a transfer request.
fn transfer_parties(shape: ObjectBuilder) -> ObjectBuilder {
    let account = |description: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
            .description(Some(description.to_owned()))
    };
    shape
        .property(
            "from",
            account("The account debited: one the caller owns (any, for accounts:admin)."),
        )
        .required("from")
        .property(
            "to",
            account("The account credited: any account, not `from`."),
        )
        .required("to")
        .property(
            "reference",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(shared_events::MAX_REFERENCE_CHARS))
                .description(Some(
                    "Free text the transfer keeps (at most 140 characters).",
                )),
        )
}

pub(super) fn transfer() -> RefOr<Schema> {
    let mut shapes = OneOfBuilder::new().description(Some(
        "A transfer from one account to another of the same currency. `0 < amount <= 10^12` \
         major units, with no more fraction digits than the source's currency has; `currency`, \
         when given, must be the source's.",
    ));
    let groups = currencies_by_minor_units();
    let most_digits = groups.keys().copied().max().unwrap_or(0);
    shapes = shapes.item(
        transfer_parties(ObjectBuilder::new().title(Some("Transfer in the source currency")))
            .property(
                "amount",
                amount(
                    most_digits,
                    Zero::Refused,
                    "`0 < amount <= 10^12`, with at most the source's currency's fraction digits.",
                ),
            )
            .required("amount")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false))),
    );
    for (minor_units, codes) in groups {
        shapes = shapes.item(
            transfer_parties(ObjectBuilder::new().title(Some(format!(
                "Transfer with up to {minor_units} fraction digits"
            ))))
            .property(
                "amount",
                amount(minor_units, Zero::Refused, "`0 < amount <= 10^12`."),
            )
            .required("amount")
            .property(
                "currency",
                currency_of(&codes).description(Some("Must be the source's currency.")),
            )
            .required("currency")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false))),
        );
    }
    shapes.into()
}

#[cfg(test)]
mod tests {
    use shared_events::{Money, parse_decimal};
    use utoipa::OpenApi;

    use super::*;

    /// Every schema `title` under `value`, property names and examples aside.
    fn titles<'a>(value: &'a serde_json::Value, found: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(members) => {
                for (key, member) in members {
                    match (key.as_str(), member) {
                        ("title", serde_json::Value::String(title)) => found.push(title),
                        ("properties", serde_json::Value::Object(properties)) => {
                            properties.values().for_each(|schema| titles(schema, found));
                        }
                        ("example" | "examples", _) => {}
                        _ => titles(member, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|item| titles(item, found)),
            _ => {}
        }
    }

    #[test]
    fn every_schema_title_of_the_document_is_unique() {
        let document = serde_json::to_value(crate::http::ApiDoc::openapi()).unwrap();
        let mut found = Vec::new();
        titles(&document["paths"], &mut found);
        titles(&document["components"], &mut found);
        assert!(found.len() > 1, "the shapes have titles: {found:?}");
        let mut unique = found.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), found.len(), "titles repeat: {found:?}");
    }

    /// What the service itself makes of `text` as an amount of `currency`.
    fn accepted(text: &str, currency: Currency, zero: Zero) -> bool {
        parse_decimal(text).is_ok_and(|amount| match zero {
            Zero::Allowed => Money::opening_balance(amount, currency).is_ok(),
            Zero::Refused => Money::command_amount(amount, currency).is_ok(),
        })
    }

    #[test]
    fn amount_patterns_match_exactly_the_amounts_the_service_accepts() {
        let integers = [
            "",
            "0",
            "00",
            "1",
            "007",
            "999999999999",
            "1000000000000",
            "1000000000001",
        ];
        let fractions = [
            "", ".", ".0", ".00", ".000", ".5", ".50", ".05", ".005", ".001", ".010", ".0001",
            ".00010", ".5000", ".99",
        ];
        for code in ["JPY", "MAD", "KWD", "CLF"] {
            let currency = Currency::parse(code).unwrap();
            for zero in [Zero::Allowed, Zero::Refused] {
                let pattern = amount_pattern(currency.minor_units(), zero);
                let regex = regex::Regex::new(&pattern).unwrap();
                for integer in integers {
                    for fraction in fractions {
                        let text = format!("{integer}{fraction}");
                        assert_eq!(
                            regex.is_match(&text),
                            accepted(&text, currency, zero),
                            "{text:?} {code} {zero:?}: {pattern}"
                        );
                    }
                }
            }
        }
    }
}
