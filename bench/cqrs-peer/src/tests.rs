//! The peer over HTTP on a Postgres database of its own: the command service's requests
//! and bodies, overdrafts refused, concurrent credits to one account all applied.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use test_support::Leftovers;
use test_support::servers::{Server, postgres_server, postgres_url, require};
use tower::ServiceExt as _;

const ACCOUNT: &str = "00000000-0000-4000-8000-000000000001";

struct Peer {
    app: Router,
    leftovers: Leftovers,
}

impl Peer {
    /// The peer on a fresh database.
    async fn start() -> Self {
        require(&[Server::Postgres]);
        let database = test_support::names::fresh_database("cqrs_test");
        let server = sqlx_08::PgPool::connect(&format!("{}/postgres", postgres_server()))
            .await
            .unwrap();
        sqlx_08::raw_sql(&format!("CREATE DATABASE {database}"))
            .execute(&server)
            .await
            .unwrap();
        server.close().await;
        let app = crate::app(&postgres_url(&database)).await.unwrap();
        Self {
            app,
            leftovers: Leftovers {
                postgres_databases: vec![database],
                ..Leftovers::default()
            },
        }
    }

    async fn post(&self, path: &str, body: Option<&str>) -> StatusCode {
        let request = Request::post(path).header("authorization", "Bearer any");
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned())),
            None => request.body(Body::empty()),
        };
        self.app
            .clone()
            .oneshot(request.unwrap())
            .await
            .unwrap()
            .status()
    }

    async fn open_active(&self, balance: &str) {
        let open =
            format!(r#"{{"id": "{ACCOUNT}", "initial_balance": "{balance}", "currency": "MAD"}}"#);
        assert_eq!(
            self.post("/accounts", Some(&open)).await,
            StatusCode::CREATED
        );
        let activate = format!("/accounts/{ACCOUNT}/activate");
        assert_eq!(self.post(&activate, None).await, StatusCode::OK);
    }

    async fn move_money(&self, direction: &str, amount: &str) -> StatusCode {
        let path = format!("/accounts/{ACCOUNT}/{direction}");
        let body = format!(r#"{{"amount": "{amount}"}}"#);
        self.post(&path, Some(&body)).await
    }
}

#[tokio::test]
async fn credits_and_debits_an_account_but_never_overdraws_it() {
    let peer = Peer::start().await;
    peer.open_active("10.00").await;

    assert_eq!(peer.move_money("credit", "1.00").await, StatusCode::OK);
    assert_eq!(
        peer.move_money("debit", "11.01").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(peer.move_money("debit", "11.00").await, StatusCode::OK);
    assert_eq!(
        peer.move_money("debit", "0.01").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        peer.post(
            "/accounts/00000000-0000-4000-8000-000000000002/credit",
            Some(r#"{"amount": "1.00"}"#)
        )
        .await,
        StatusCode::NOT_FOUND
    );
    peer.leftovers.remove().await;
}

#[tokio::test]
async fn concurrent_credits_to_one_account_are_all_applied() {
    let peer = Peer::start().await;
    peer.open_active("0.00").await;

    let credits = (0..4).map(|_| peer.move_money("credit", "1.00"));
    for status in futures::future::join_all(credits).await {
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        peer.move_money("debit", "4.01").await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(peer.move_money("debit", "4.00").await, StatusCode::OK);
    peer.leftovers.remove().await;
}
