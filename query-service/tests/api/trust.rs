//! Trust on the broker (contract "Broker"): only the publisher user's messages are
//! applied; another event at a version already projected is a conflict, not a duplicate.

#![expect(
    clippy::unwrap_used,
    reason = "test: a failure here is the test's failure"
)]

use std::process::Command;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};
use test_support::amqp::json_properties;
use test_support::servers::amqp_url;

use crate::helpers::{Options, TestApp, seed, spawn_app_with, synthetic_event};

/// A broker user of the test's own, allowed to write to the test exchanges only;
/// deleted when dropped (the broker is shared).
struct BrokerUser {
    name: String,
    password: String,
}

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .is_ok_and(|output| output.status.success())
}

impl BrokerUser {
    fn create() -> Self {
        let name = format!("qs_forger_{}", test_support::names::fresh_id());
        let password = uuid::Uuid::new_v4().simple().to_string();
        rabbitmqctl(&["delete_user", &name]);
        assert!(
            rabbitmqctl(&["add_user", &name, &password]),
            "add_user {name}"
        );
        assert!(
            rabbitmqctl(&["set_permissions", "-p", "/", &name, "", r"^qs_test\..*", ""]),
            "set_permissions {name}"
        );
        Self { name, password }
    }

    /// Publishes `event` to `exchange` as this user, `user_id` set to itself.
    async fn publish(&self, exchange: &str, event: &Value) {
        let url = amqp_url().replacen(
            "guest:guest@",
            &format!("{}:{}@", self.name, self.password),
            1,
        );
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let properties = json_properties().with_user_id(self.name.as_str().into());
        let confirm = channel
            .basic_publish(
                exchange.into(),
                "account.credited".into(),
                BasicPublishOptions::default(),
                &serde_json::to_vec(event).unwrap(),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
        let _ = connection.close(200, "done".into()).await;
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_user", &self.name]);
    }
}

fn isolated() -> Options {
    Options {
        shared_exchange: false,
        follow_feed: false,
        ..Options::default()
    }
}

fn credit(account: &str, version: u64, amount: &str, balance: &str) -> Value {
    synthetic_event(
        account,
        version,
        "AccountCredited",
        1,
        json!({"amount": amount, "currency": "MAD", "balance": balance}),
    )
}

async fn dead_lettered(app: &TestApp, reason: &str) -> f64 {
    app.metric(
        "projection_dead_lettered_total",
        &[&format!("reason=\"{reason}\"")],
    )
    .await
}

#[tokio::test]
async fn a_forged_next_version_from_another_broker_user_is_never_applied() {
    let app = spawn_app_with(isolated()).await;
    let id = seed(&app, Some("alice"), "MAD").await;
    let forger = BrokerUser::create();
    let forged = credit(&id, 4, "1000000.00", "1000015.00");
    let counted_before = dead_lettered(&app, "untrusted_publisher").await;

    // The issue's attack, by another broker user, then without any user_id.
    forger.publish(&app.settings.amqp_exchange, &forged).await;
    app.publisher().await.publish_event_as(None, &forged).await;
    let dead = app.await_dead_letters(2).await;
    assert_eq!(dead.len(), 2, "both forgeries are dead-lettered");
    // The counter is the process's, shared with concurrent tests: at least ours count.
    assert!(dead_lettered(&app, "untrusted_publisher").await - counted_before >= 2.0);
    let account = app.query_get(&format!("/accounts/{id}")).await.body;
    assert_eq!(
        (&account["version"], &account["balance"]),
        (&json!(3), &json!("15.00"))
    );

    // The real event at that version is then applied, not dropped as a duplicate.
    app.publisher()
        .await
        .publish_event(&credit(&id, 4, "1.00", "16.00"))
        .await;
    let account = app.account_at(&id, 4).await;
    assert_eq!(account["balance"], "16.00");
    app.stop().await;
}

#[tokio::test]
async fn another_event_at_a_projected_version_is_dead_lettered_as_a_conflict() {
    let app = spawn_app_with(isolated()).await;
    let id = seed(&app, Some("alice"), "MAD").await;
    let publisher = app.publisher().await;
    let counted_before = dead_lettered(&app, "conflicting_event").await;

    // Version 3 is projected (a credit to 15.00); another event claims it.
    publisher
        .publish_event(&credit(&id, 3, "1000000.00", "1000010.00"))
        .await;
    let dead = app.await_dead_letters(1).await;
    assert_eq!(dead.len(), 1, "the conflicting event is dead-lettered");
    assert!(dead_lettered(&app, "conflicting_event").await - counted_before >= 1.0);
    let account = app.query_get(&format!("/accounts/{id}")).await.body;
    assert_eq!(
        (&account["version"], &account["balance"]),
        (&json!(3), &json!("15.00"))
    );
    let operations = app
        .query_get(&format!("/accounts/{id}/operations"))
        .await
        .body;
    assert_eq!(operations["operations"][0]["amount"], "5.00");
    app.stop().await;
}
