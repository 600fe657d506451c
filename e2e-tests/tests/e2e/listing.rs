//! Listing, filtering and paging accounts; the balance sheet.

use std::collections::{BTreeMap, BTreeSet};

use e2e_tests::Stack;
use e2e_tests::model::{Expected, account_view, balance_sheet, served_balance_sheet};
use e2e_tests::workload::run_mix;

#[tokio::test]
async fn listings_page_through_every_account_once_and_respect_their_filters() {
    let stack = Stack::start().await;
    // Given 40 accounts: every status with every currency, twice.
    let mix = run_mix(&stack, 40, 8).await;
    let ids: Vec<String> = mix.iter().map(|(id, _, _)| id.clone()).collect();
    let expected = stack.assert_read_model_exact(&ids).await;
    let by_id: BTreeMap<&str, &Expected> = ids
        .iter()
        .map(String::as_str)
        .zip(expected.iter())
        .collect();

    let filters = [
        ("", 7),
        ("&status=ACTIVE", 3),
        ("&currency=JPY", 2),
        ("&status=SUSPENDED&currency=KWD", 1),
        ("&status=CLOSED", 500),
        ("&currency=EUR&status=CREATED", 4),
        ("&currency=GBP", 5),
    ];
    for (filter, limit) in filters {
        let path = format!("/accounts?limit={limit}{filter}");
        let pages = stack.pages(&path, "accounts").await;
        assert!(
            pages.iter().all(|page| page.len() <= limit),
            "{path}: a page longer than its limit"
        );
        let listed: Vec<&str> = pages
            .iter()
            .flatten()
            .map(|account| account["id"].as_str().unwrap())
            .collect();
        let unique: BTreeSet<&str> = listed.iter().copied().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "{path}: an account listed twice"
        );
        let wanted: BTreeSet<&str> = by_id
            .iter()
            .filter(|(_, expected)| matches(filter, expected))
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(unique, wanted, "{path}: not exactly the matching accounts");
        for account in pages.iter().flatten() {
            let id = account["id"].as_str().unwrap();
            assert_eq!(account_view(account), by_id[id].account, "{path}");
        }
    }

    let sheet = stack
        .query()
        .get("/balance-sheet")
        .await
        .expect(200, "balance sheet");
    let all: Vec<&Expected> = expected.iter().collect();
    assert_eq!(served_balance_sheet(&sheet), balance_sheet(&all));

    // Parameters outside the contract are the client's mistake, never a 5xx.
    for path in [
        "/accounts?status=OPEN",
        "/accounts?currency=EURO",
        "/accounts?limit=0",
        "/accounts?after=not-a-cursor",
        "/accounts/not-a-uuid",
    ] {
        stack
            .query()
            .get(path)
            .await
            .assert_problem(400, "invalid_request");
    }
}

/// Whether an account passes a `&status=..&currency=..` filter.
fn matches(filter: &str, expected: &Expected) -> bool {
    filter
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .all(|(field, value)| expected.account[field] == value)
}
