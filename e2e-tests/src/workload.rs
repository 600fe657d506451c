//! Workloads: accounts of every status and several currencies, driven through the
//! command service, with the version each one ends at.

use futures::StreamExt;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::model::{minor_unit, render};
use crate::stack::Stack;

pub const CURRENCIES: [&str; 5] = ["MAD", "EUR", "USD", "JPY", "KWD"];
pub const STATUSES: [&str; 4] = ["CREATED", "ACTIVE", "SUSPENDED", "CLOSED"];

/// An amount of `minor` units of the currency's minor unit, rendered for it
/// (`12345` is `"123.45"` MAD, `"12345"` JPY, `"12.345"` KWD).
pub fn amount(minor: i64, currency: &str) -> String {
    render(Decimal::new(minor, minor_unit(currency)), currency)
}

/// The commands that take a new account to a status.
#[derive(Debug, Clone)]
pub struct Plan {
    pub currency: &'static str,
    pub initial_balance: String,
    pub status: &'static str,
    pub steps: Vec<(&'static str, Value)>,
}

impl Plan {
    /// The `index`-th plan of a mix that covers every status with every currency.
    pub fn mixed(index: usize) -> Self {
        let currency = CURRENCIES[index % CURRENCIES.len()];
        let status = STATUSES[(index / CURRENCIES.len()) % STATUSES.len()];
        let seed = i64::try_from(index).unwrap_or_default();
        let initial = 10_000 + seed * 137;
        let credit = 2_500 + seed * 31;
        let debit = 1_200 + seed * 7;
        let money = |minor: i64| json!({"amount": amount(minor, currency), "currency": currency});
        let steps = match status {
            "CREATED" => Vec::new(),
            "ACTIVE" => vec![
                ("activate", json!({})),
                ("credit", money(credit)),
                ("debit", money(debit)),
            ],
            "SUSPENDED" => vec![
                ("activate", json!({})),
                ("credit", money(credit)),
                ("suspend", json!({"reason": format!("review {index}")})),
            ],
            _ => vec![
                ("activate", json!({})),
                ("credit", money(credit)),
                ("debit", money(initial + credit)),
                ("suspend", json!({})),
                ("close", json!({})),
            ],
        };
        Self {
            currency,
            initial_balance: amount(initial, currency),
            status,
            steps,
        }
    }

    /// Runs the plan; returns the account id and its final version.
    pub async fn run(&self, stack: &Stack) -> (String, u64) {
        let created = stack.create(&self.initial_balance, self.currency).await;
        let mut version = created.version;
        for (verb, body) in &self.steps {
            version = stack.act(&created.id, verb, body.clone()).await.version;
        }
        (created.id, version)
    }
}

/// Creates `count` accounts of the mix, `concurrency` at a time; returns each
/// account's id, plan and final version, in plan order.
pub async fn run_mix(stack: &Stack, count: usize, concurrency: usize) -> Vec<(String, Plan, u64)> {
    futures::stream::iter((0..count).map(Plan::mixed))
        .map(|plan| async move {
            let (id, version) = plan.run(stack).await;
            (id, plan, version)
        })
        .buffered(concurrency)
        .collect()
        .await
}
