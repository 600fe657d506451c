//! Every command, then a read at the version the command acknowledged.

use e2e_tests::model::{Expected, account_view, operation_view};
use e2e_tests::{Ack, Stack};
use serde_json::{Value, json};

fn instant(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(value.as_str().unwrap_or_default())
        .unwrap_or_else(|error| panic!("{value} is not an RFC 3339 timestamp: {error}"))
}

/// Reads the account at the acknowledged version and checks that it shows exactly
/// that state, with the timestamps and operations its events at the command service
/// give. Returns the account as read.
async fn assert_shows(stack: &Stack, ack: &Ack, status: &str, balance: &str) -> Value {
    let account = stack.read(&ack.id, ack.version).await;
    assert_eq!(
        (&account["status"], &account["balance"], &account["version"]),
        (&json!(status), &json!(balance), &json!(ack.version)),
        "after the command acknowledged at version {}: {account}",
        ack.version
    );
    if let Some(acknowledged) = &ack.balance {
        assert_eq!(acknowledged, balance, "the command's reply");
    }
    let expected = Expected::from_events(&stack.events(&ack.id).await);
    assert_eq!(account_view(&account), expected.account);
    let operations: Vec<Value> = stack
        .operations(&ack.id, 50)
        .await
        .iter()
        .map(operation_view)
        .collect();
    assert_eq!(operations, expected.operations);
    account
}

#[tokio::test]
async fn each_command_is_read_back_exactly_at_the_version_it_acknowledged() {
    let stack = Stack::start().await;

    let created = stack.create("100.5", "MAD").await;
    let id = created.id.clone();
    let account = assert_shows(&stack, &created, "CREATED", "100.50").await;
    assert_eq!(
        account["created_at"], account["updated_at"],
        "a new account was created and last changed by the same event"
    );

    let steps = [
        ("activate", json!({}), "ACTIVE", "100.50"),
        (
            "credit",
            json!({"amount": "49.50", "currency": "MAD"}),
            "ACTIVE",
            "150.00",
        ),
        ("debit", json!({"amount": 150}), "ACTIVE", "0.00"),
        ("credit", json!({"amount": "25.25"}), "ACTIVE", "25.25"),
        (
            "suspend",
            json!({"reason": "customer request"}),
            "SUSPENDED",
            "25.25",
        ),
        ("reactivate", json!({}), "ACTIVE", "25.25"),
        ("debit", json!({"amount": "25.25"}), "ACTIVE", "0.00"),
        ("close", json!({}), "CLOSED", "0.00"),
    ];
    let mut previous = account;
    for (verb, body, status, balance) in steps {
        let ack = stack.act(&id, verb, body).await;
        assert_eq!(ack.version, previous["version"].as_u64().unwrap() + 1);
        let account = assert_shows(&stack, &ack, status, balance).await;
        assert_eq!(account["created_at"], previous["created_at"], "{verb}");
        assert!(
            instant(&account["updated_at"]) >= instant(&previous["updated_at"]),
            "{verb} moves updated_at forward"
        );
        previous = account;
    }

    // Operations page oldest first, one per page, until `next` is null.
    let pages = stack
        .pages(&format!("/accounts/{id}/operations?limit=1"), "operations")
        .await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1, 1]);
    let kinds: Vec<&Value> = pages.iter().map(|page| &page[0]["type"]).collect();
    assert_eq!(kinds, ["CREDIT", "DEBIT", "CREDIT", "DEBIT"]);

    // A version not reached yet is refused once the wait ends; an unknown id is 404.
    let later = stack
        .query()
        .get(&format!("/accounts/{id}?min_version=10&wait_ms=200"))
        .await;
    later.assert_problem(504, "not_yet_projected");
    let unknown = uuid::Uuid::new_v4();
    stack
        .query()
        .get(&format!("/accounts/{unknown}"))
        .await
        .assert_problem(404, "not_found");
    stack
        .query()
        .get(&format!("/accounts/{unknown}/operations"))
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test]
async fn amounts_are_shown_with_exactly_the_digits_of_the_currency() {
    let stack = Stack::start().await;
    let cases = [
        ("7", "JPY", json!(1000), "1007"),
        ("1.25", "KWD", json!("0.005"), "1.255"),
        ("0", "EUR", json!(0.1), "0.10"),
        ("999999999999.99", "USD", json!("0.01"), "1000000000000.00"),
    ];
    for (initial, currency, credit, after) in cases {
        let created = stack.create(initial, currency).await;
        let opened = stack.read(&created.id, 1).await;
        let digits = e2e_tests::model::minor_unit(currency) as usize;
        let shown = opened["balance"].as_str().unwrap();
        assert_eq!(
            shown
                .split_once('.')
                .map_or(0, |(_, fraction)| fraction.len()),
            digits,
            "{currency} opening balance {shown}"
        );
        stack.act(&created.id, "activate", json!({})).await;
        let credited = stack
            .act(&created.id, "credit", json!({"amount": credit}))
            .await;
        assert_eq!(credited.balance.as_deref(), Some(after));
        let account = stack.read(&created.id, credited.version).await;
        assert_eq!(account["balance"], after, "{currency}");
        assert_eq!(account["currency"], currency);
        let operations = stack.operations(&created.id, 50).await;
        assert_eq!(operations.len(), 1);
        assert_eq!(operations[0]["balance_after"], after);
    }
}
