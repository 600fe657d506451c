use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::Currency;

/// Largest amount a single command may move, in major units (10^12).
pub const MAX_COMMAND_AMOUNT: Decimal = Decimal::from_parts(0xD4A5_1000, 0xE8, 0, false, 0);
/// Largest balance an account may hold, in major units (10^15).
pub const MAX_BALANCE: Decimal = Decimal::from_parts(0xA4C6_8000, 0x0003_8D7E, 0, false, 0);

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0:?} is not a decimal amount (expected e.g. \"100.50\")")]
    NotANumber(String),
    #[error("{currency} allows at most {max} fraction digits")]
    TooManyFractionDigits { currency: Currency, max: u32 },
    #[error("amount must be greater than 0")]
    NotPositive,
    #[error("amount must not be negative")]
    Negative,
    #[error("amount must not exceed {max}")]
    TooLarge { max: Decimal },
}

/// Parses the text of a decimal amount exactly: `"100.50"`, `"7"`, or the text of a
/// JSON number (which may carry an exponent). Never goes through binary floating point.
pub fn parse_decimal(text: &str) -> Result<Decimal, MoneyError> {
    let not_a_number = || MoneyError::NotANumber(text.chars().take(64).collect());
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (integer, fraction) = match digits.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (digits, None),
    };
    let plain = !integer.is_empty()
        && integer.bytes().all(|b| b.is_ascii_digit())
        && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    if plain {
        return Decimal::from_str_exact(text).map_err(|_| not_a_number());
    }
    let scientific = text.contains(['e', 'E'])
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'e' | b'E' | b'.' | b'-' | b'+'));
    if scientific {
        return Decimal::from_scientific(text).map_err(|_| not_a_number());
    }
    Err(not_a_number())
}

/// Renders an amount with exactly the currency's number of fraction digits.
pub fn render_amount(amount: Decimal, currency: Currency) -> String {
    let mut exact = amount.round_dp(currency.minor_units());
    exact.rescale(currency.minor_units());
    exact.to_string()
}

/// A non-negative amount of one currency, never above [`MAX_BALANCE`], with no more
/// fraction digits than the currency allows. Held at the currency's scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "MoneyRepr", into = "MoneyRepr")]
pub struct Money {
    amount: Decimal,
    currency: Currency,
}

#[derive(Serialize, Deserialize)]
struct MoneyRepr {
    amount: String,
    currency: Currency,
}

impl Money {
    /// A balance or stored amount: `0 <= amount <= MAX_BALANCE`.
    pub fn new(amount: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        if amount.is_sign_negative() && !amount.is_zero() {
            return Err(MoneyError::Negative);
        }
        if amount > MAX_BALANCE {
            return Err(MoneyError::TooLarge { max: MAX_BALANCE });
        }
        let max = currency.minor_units();
        let normalized = amount.normalize();
        if normalized.scale() > max {
            return Err(MoneyError::TooManyFractionDigits { currency, max });
        }
        let mut amount = normalized;
        amount.rescale(max);
        Ok(Self { amount, currency })
    }

    /// The amount of a credit or debit: `0 < amount <= MAX_COMMAND_AMOUNT`.
    pub fn command_amount(amount: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        if amount <= Decimal::ZERO {
            return Err(MoneyError::NotPositive);
        }
        Self::opening_balance(amount, currency)
    }

    /// An initial balance: `0 <= amount <= MAX_COMMAND_AMOUNT`.
    pub fn opening_balance(amount: Decimal, currency: Currency) -> Result<Self, MoneyError> {
        if amount > MAX_COMMAND_AMOUNT {
            return Err(MoneyError::TooLarge {
                max: MAX_COMMAND_AMOUNT,
            });
        }
        Self::new(amount, currency)
    }

    pub fn zero(currency: Currency) -> Self {
        let mut amount = Decimal::ZERO;
        amount.rescale(currency.minor_units());
        Self { amount, currency }
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    /// `self + other`, or `None` past [`MAX_BALANCE`] or across currencies.
    pub fn checked_add(&self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        Money::new(self.amount.checked_add(other.amount)?, self.currency).ok()
    }

    /// `self - other`, or `None` below zero or across currencies.
    pub fn checked_sub(&self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        Money::new(self.amount.checked_sub(other.amount)?, self.currency).ok()
    }

    /// The amount with exactly the currency's fraction digits (`"100.50"`, `"7"`).
    pub fn render(&self) -> String {
        render_amount(self.amount, self.currency)
    }
}

impl TryFrom<MoneyRepr> for Money {
    type Error = MoneyError;

    fn try_from(repr: MoneyRepr) -> Result<Self, Self::Error> {
        Money::new(parse_decimal(&repr.amount)?, repr.currency)
    }
}

impl From<Money> for MoneyRepr {
    fn from(money: Money) -> Self {
        Self {
            amount: money.render(),
            currency: money.currency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn limits_are_the_contract_ones() {
        assert_eq!(MAX_COMMAND_AMOUNT, Decimal::from(1_000_000_000_000_i64));
        assert_eq!(MAX_BALANCE, Decimal::from(1_000_000_000_000_000_i64));
    }

    #[test]
    fn parses_plain_and_json_number_text_exactly() {
        assert_eq!(parse_decimal("100.50").unwrap().to_string(), "100.50");
        assert_eq!(parse_decimal("7").unwrap().to_string(), "7");
        assert_eq!(parse_decimal("1e2").unwrap(), Decimal::from(100));
        assert_eq!(parse_decimal("-3").unwrap(), Decimal::from(-3));
        for junk in [
            "", "abc", "1,5", ".5", "5.", "+5", "1 000", "NaN", "0x10", "1e", "--1",
        ] {
            assert!(parse_decimal(junk).is_err(), "{junk:?} accepted");
        }
    }

    #[test]
    fn renders_with_the_currency_minor_units() {
        let mad = Money::new(parse_decimal("100.5").unwrap(), currency("MAD")).unwrap();
        assert_eq!(mad.render(), "100.50");
        let jpy = Money::new(parse_decimal("7").unwrap(), currency("JPY")).unwrap();
        assert_eq!(jpy.render(), "7");
        let kwd = Money::new(parse_decimal("1.5").unwrap(), currency("KWD")).unwrap();
        assert_eq!(kwd.render(), "1.500");
    }

    #[test]
    fn refuses_more_fraction_digits_than_the_currency_has() {
        let err = Money::new(parse_decimal("1.005").unwrap(), currency("EUR")).unwrap_err();
        assert!(matches!(
            err,
            MoneyError::TooManyFractionDigits { max: 2, .. }
        ));
        assert!(Money::new(parse_decimal("1.5").unwrap(), currency("JPY")).is_err());
        assert!(Money::new(parse_decimal("1.500").unwrap(), currency("EUR")).is_ok());
    }

    #[test]
    fn command_amounts_are_positive_and_bounded() {
        let eur = currency("EUR");
        assert_eq!(
            Money::command_amount(Decimal::ZERO, eur),
            Err(MoneyError::NotPositive)
        );
        assert!(Money::command_amount(MAX_COMMAND_AMOUNT, eur).is_ok());
        assert!(Money::command_amount(MAX_COMMAND_AMOUNT + Decimal::new(1, 2), eur).is_err());
        assert!(Money::opening_balance(Decimal::ZERO, eur).is_ok());
    }

    /// Cent amounts anywhere up to the balance limit, half of them close to it, so sums
    /// regularly cross [`MAX_BALANCE`].
    fn cents() -> impl Strategy<Value = i64> {
        const LIMIT_IN_CENTS: i64 = 100_000_000_000_000_000;
        prop_oneof![
            0..=LIMIT_IN_CENTS,
            (LIMIT_IN_CENTS / 2 - 1_000_000)..=LIMIT_IN_CENTS,
        ]
    }

    proptest! {
        #[test]
        fn rendering_then_parsing_gives_back_the_same_money(cents in cents()) {
            let eur = currency("EUR");
            let money = Money::new(Decimal::new(cents, 2), eur).unwrap();
            let again = Money::new(parse_decimal(&money.render()).unwrap(), eur).unwrap();
            prop_assert_eq!(money, again);
        }

        #[test]
        fn addition_and_subtraction_are_exact_inverses(a in cents(), b in cents()) {
            let eur = currency("EUR");
            let a = Money::new(Decimal::new(a, 2), eur).unwrap();
            let b = Money::new(Decimal::new(b, 2), eur).unwrap();
            if let Some(sum) = a.checked_add(b) {
                prop_assert_eq!(sum.checked_sub(b), Some(a));
            } else {
                prop_assert!(a.amount() + b.amount() > MAX_BALANCE);
            }
            match a.checked_sub(b) {
                Some(difference) => prop_assert!(difference.amount() >= Decimal::ZERO),
                None => prop_assert!(a.amount() < b.amount()),
            }
        }

        #[test]
        fn json_round_trip_keeps_money_exact(cents in cents()) {
            let money = Money::new(Decimal::new(cents, 2), currency("MAD")).unwrap();
            let json = serde_json::to_string(&money).unwrap();
            prop_assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), money);
        }
    }
}
