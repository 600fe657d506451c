//! Transfer storms: hundreds of concurrent transfers among a handful of accounts while
//! one part of the platform fails (the command service SIGKILLed, the query service
//! SIGKILLed, the broker cut off). Afterwards every transfer has ended, no leg is
//! doubled or missing, per currency the money is what it was, and the read model
//! equals the event store.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use e2e_tests::model::{balance_sheet, decimal, served_balance_sheet};
use e2e_tests::{Stack, StackConfig};
use rand::Rng;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use test_support::servers::Server;
use test_support::{Api, TcpProxy};

const TRANSFERS: usize = 300;
const CLIENTS: usize = 16;

/// One planned transfer: source, destination, amount.
type Planned = (String, String, String);

/// What goes wrong in the middle of the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillCommandService,
    KillQueryService,
    CutBroker,
}

/// Posts until the service answers (it may be down a while): the same
/// `Idempotency-Key` each time, so a request that did commit is answered, not repeated.
async fn post_until_answered(api: &Api, path: &str, body: &Value, key: &str) -> (u16, Value) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = api
            .http()
            .post(api.url(path))
            .bearer_auth(test_support::auth::admin_token())
            .header("Idempotency-Key", key)
            .json(body)
            .send()
            .await;
        if let Ok(response) = sent {
            let status = response.status().as_u16();
            if let Ok(body) = response.json::<Value>().await
                && status < 500
            {
                return (status, body);
            }
        }
        assert!(Instant::now() < deadline, "POST {path} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The events of a transfer's stream, as the operator reads them.
async fn transfer_events(stack: &Stack, id: &str) -> Vec<Value> {
    let mut stream = stack
        .command()
        .get(&format!("/accounts/{id}/events"))
        .await
        .expect(200, "transfer events");
    match stream["events"].take() {
        Value::Array(events) => events,
        other => panic!("no events array: {other}"),
    }
}

/// Per currency, the sum of the balances in the event store.
async fn money_by_currency(stack: &Stack, ids: &[String]) -> BTreeMap<String, Decimal> {
    let mut totals = BTreeMap::new();
    for id in ids {
        let events = stack.events(id).await;
        let first = &events[0];
        let currency = first["data"]["currency"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let balance = events
            .iter()
            .rev()
            .find_map(|event| {
                let data = &event["data"];
                data.get("balance").or(data.get("initial_balance")).cloned()
            })
            .unwrap_or_default();
        *totals.entry(currency).or_default() += decimal(&balance);
    }
    totals
}

/// A handful of accounts: four active MAD ones with money, a suspended MAD one and an
/// active EUR one (transfers to those two are refunded).
async fn handful(stack: &Stack) -> (Vec<String>, Vec<String>) {
    let mut sources = Vec::new();
    for _ in 0..4 {
        sources.push(stack.active_account("500.00", "MAD").await.id);
    }
    let suspended = stack.active_account("10.00", "MAD").await.id;
    stack.act(&suspended, "suspend", json!({})).await;
    let euros = stack.active_account("10.00", "EUR").await.id;
    let mut all = sources.clone();
    all.extend([suspended, euros]);
    (sources, all)
}

async fn storm(config: StackConfig, proxy: Option<&TcpProxy>, fault: Fault) {
    let mut stack = config.start().await;
    let (sources, accounts) = handful(&stack).await;
    let before = money_by_currency(&stack, &accounts).await;
    let command = stack.command().clone();

    // 16 clients send 300 transfers between random pairs, retrying until answered.
    let plan: Vec<Planned> = {
        let mut rng = rand::rng();
        (0..TRANSFERS)
            .map(|_| {
                let from = sources[rng.random_range(0..sources.len())].clone();
                let mut to = from.clone();
                while to == from {
                    to = accounts[rng.random_range(0..accounts.len())].clone();
                }
                let amount = format!(
                    "{}.{:02}",
                    rng.random_range(1..150),
                    rng.random_range(0..100)
                );
                (from, to, amount)
            })
            .collect()
    };
    let (sent, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let chunks: Vec<Vec<(usize, Planned)>> = {
        let mut chunks = vec![Vec::new(); CLIENTS];
        for (n, transfer) in plan.into_iter().enumerate() {
            chunks[n % CLIENTS].push((n, transfer));
        }
        chunks
    };
    let run = format!("storm-{}", stack.names.id);
    let clients: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let api = command.clone();
            let sent = sent.clone();
            let run = run.clone();
            tokio::spawn(async move {
                for (n, (from, to, amount)) in chunk {
                    let body = json!({"from": from, "to": to, "amount": amount});
                    let key = format!("{run}-{n}");
                    let (status, reply) =
                        post_until_answered(&api, "/transfers", &body, &key).await;
                    assert_eq!(status, 202, "transfer {n}: {reply}");
                    let _ = sent.send(reply["id"].as_str().unwrap_or_default().to_owned());
                }
            })
        })
        .collect();
    drop(sent);

    let mut ids = Vec::new();
    while ids.len() < TRANSFERS / 3 {
        match answered.recv().await {
            Some(id) => ids.push(id),
            None => break,
        }
    }
    match fault {
        Fault::KillCommandService => stack.restart_command_killed().await,
        Fault::KillQueryService => stack.kill_query(),
        Fault::CutBroker => proxy.map_or((), TcpProxy::cut),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    match fault {
        Fault::KillCommandService => {}
        Fault::KillQueryService => stack.restart_query().await,
        Fault::CutBroker => proxy.map_or((), TcpProxy::restore),
    }
    for client in clients {
        if let Err(error) = client.await {
            panic!("a client of the storm failed: {error}");
        }
    }
    while let Some(id) = answered.recv().await {
        ids.push(id);
    }
    assert_eq!(ids.len(), TRANSFERS);

    // Every transfer ends, in the event store, exactly once.
    let mut outcomes: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while outcomes.len() < TRANSFERS {
        for id in &ids {
            if outcomes.contains_key(id) {
                continue;
            }
            let terminal: Vec<String> = transfer_events(&stack, id)
                .await
                .iter()
                .filter_map(|event| event["type"].as_str())
                .filter(|kind| {
                    matches!(
                        *kind,
                        "TransferCompleted" | "TransferFailed" | "TransferRefunded"
                    )
                })
                .map(str::to_owned)
                .collect();
            assert!(
                terminal.len() <= 1,
                "transfer {id} ended twice: {terminal:?}"
            );
            if let Some(end) = terminal.first() {
                outcomes.insert(id.clone(), end.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} transfers never ended\n{}",
            TRANSFERS - outcomes.len(),
            stack.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Each leg is in the store once, and exactly the legs of each outcome are.
    let mut legs: HashMap<String, Vec<String>> = HashMap::new();
    for account in &accounts {
        for event in stack.events(account).await {
            if let Some(transfer) = event["data"]["transfer_id"].as_str() {
                let kind = event["data"]["kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                legs.entry(transfer.to_owned()).or_default().push(kind);
            }
        }
    }
    for (id, end) in &outcomes {
        let mut kinds = legs.remove(id).unwrap_or_default();
        kinds.sort();
        let wanted: &[&str] = match end.as_str() {
            "TransferCompleted" => &["TRANSFER_IN", "TRANSFER_OUT"],
            "TransferRefunded" => &["TRANSFER_OUT", "TRANSFER_REFUND"],
            _ => &[],
        };
        assert_eq!(kinds, wanted, "legs of transfer {id} ({end})");
    }
    assert!(legs.is_empty(), "legs of unknown transfers: {legs:?}");
    let count = |end: &str| outcomes.values().filter(|e| *e == end).count();
    assert!(
        count("TransferCompleted") > 0 && count("TransferRefunded") > 0,
        "the storm exercised completions and refunds: {} completed, {} refunded, {} failed",
        count("TransferCompleted"),
        count("TransferRefunded"),
        count("TransferFailed")
    );

    // Per currency, the money is what it was (nothing is in transit any more).
    assert_eq!(money_by_currency(&stack, &accounts).await, before);

    // The read model equals the event store: accounts, operations, transfers, sheet.
    let expected = stack.assert_read_model_exact(&accounts).await;
    for (id, end) in &outcomes {
        let transfer = stack
            .query()
            .get(&format!("/transfers/{id}?wait_ms=10000"))
            .await
            .expect(200, "transfer");
        let status = match end.as_str() {
            "TransferCompleted" => "COMPLETED",
            "TransferRefunded" => "REFUNDED",
            _ => "FAILED",
        };
        assert_eq!(
            transfer["status"], status,
            "transfer {id} in the read model"
        );
    }
    let sheet = stack
        .query()
        .get("/balance-sheet")
        .await
        .expect(200, "balance sheet");
    let all: Vec<_> = expected.iter().collect();
    assert_eq!(served_balance_sheet(&sheet), balance_sheet(&all));
    for total in sheet["totals"].as_array().cloned().unwrap_or_default() {
        assert_eq!(decimal(&total["in_transit"]), Decimal::ZERO, "{sheet}");
    }
}

#[tokio::test]
async fn a_transfer_storm_survives_the_command_service_killed_mid_storm() {
    storm(StackConfig::default(), None, Fault::KillCommandService).await;
}

#[tokio::test]
async fn a_transfer_storm_survives_the_query_service_killed_mid_storm() {
    storm(StackConfig::default(), None, Fault::KillQueryService).await;
}

#[tokio::test]
async fn a_transfer_storm_survives_the_broker_cut_off_mid_storm() {
    let proxy = TcpProxy::to(Server::RabbitMq).await;
    let config = StackConfig::default().broker(&proxy.url());
    storm(config, Some(&proxy), Fault::CutBroker).await;
}
