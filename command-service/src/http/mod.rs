//! REST surface of the command service (see `shared/api-contract.md`).

mod commands;
mod dto;
mod feeds;
mod refusals;
mod reply;
mod schema;
mod transfers;

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use event_store::EventStore;
use service_kit::auth::Authenticator;
use utoipa::OpenApi;

use crate::application::CommandHandler;
use service_kit::amqp::BrokerStatus;

pub(crate) use reply::encode_reply;

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) handler: CommandHandler,
    pub(crate) store: EventStore,
    /// How long a command's caller waits for its outcome.
    pub(crate) command_timeout: Duration,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bank command service",
        description = "Commands on event-sourced bank accounts, and the event feeds."
    ),
    paths(
        commands::create_account,
        commands::activate,
        commands::credit,
        commands::debit,
        commands::suspend,
        commands::reactivate,
        commands::close,
        feeds::account_events,
        feeds::all_events,
        transfers::request_transfer,
    ),
    components(schemas(
        service_kit::Problem,
        shared_events::EventEnvelope,
        dto::CreateAccountRequest,
        dto::MovementRequest,
        dto::TransferRequestBody,
        dto::TransferResponse
    ))
)]
struct ApiDoc;

/// The whole HTTP application: contract routes behind bearer authentication,
/// operational routes (open), common layers.
pub(crate) fn router(
    state: AppState,
    broker: BrokerStatus,
    authenticator: Authenticator,
) -> Router {
    let api = Router::new()
        .route("/accounts", post(commands::create_account))
        .route("/accounts/{id}/activate", post(commands::activate))
        .route("/accounts/{id}/credit", post(commands::credit))
        .route("/accounts/{id}/debit", post(commands::debit))
        .route("/accounts/{id}/suspend", post(commands::suspend))
        .route("/accounts/{id}/reactivate", post(commands::reactivate))
        .route("/accounts/{id}/close", post(commands::close))
        .route("/accounts/{id}/events", get(feeds::account_events))
        .route("/events", get(feeds::all_events))
        .route("/transfers", post(transfers::request_transfer))
        .layer(authenticator.layer())
        .with_state(state.clone());
    let store = state.store;
    let probe = service_kit::ops::database_and_broker(
        move || {
            let store = store.clone();
            async move { store.ping().await }
        },
        broker,
    );
    service_kit::http::application(api, probe, openapi())
}

/// The OpenAPI document, with the bearer scheme every contract operation needs.
fn openapi() -> utoipa::openapi::OpenApi {
    let mut openapi = ApiDoc::openapi();
    service_kit::auth::add_bearer_scheme(&mut openapi);
    openapi
}
