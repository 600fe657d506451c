//! REST surface of the query service (see `shared/api-contract.md`).

mod accounts;
mod cursor;
mod dto;
mod refusals;
mod transfers;
mod updates;

use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::store::ReadStore;
use crate::watch::ProjectionWatch;
use service_kit::amqp::BrokerStatus;
use service_kit::auth::{Authenticator, add_bearer_scheme};

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) store: ReadStore,
    pub(crate) watch: ProjectionWatch,
    /// Cancelled on shutdown, so that waiting reads answer at once.
    pub(crate) shutdown: CancellationToken,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bank query service",
        description = "Read model of the bank accounts and transfers, projected from their events."
    ),
    paths(
        accounts::list_accounts,
        accounts::get_account,
        accounts::list_operations,
        updates::account_updates,
        accounts::balance_sheet,
        transfers::get_transfer,
        transfers::list_account_transfers,
    ),
    components(schemas(service_kit::Problem))
)]
struct ApiDoc;

/// The whole HTTP application: contract routes (bearer token required),
/// operational routes (open), common layers.
pub(crate) fn router(
    state: AppState,
    broker: BrokerStatus,
    authenticator: Authenticator,
) -> Router {
    let api = Router::new()
        .route("/accounts", get(accounts::list_accounts))
        .route("/accounts/{id}", get(accounts::get_account))
        .route("/accounts/{id}/operations", get(accounts::list_operations))
        .route("/accounts/{id}/updates", get(updates::account_updates))
        .route("/balance-sheet", get(accounts::balance_sheet))
        .route("/transfers/{id}", get(transfers::get_transfer))
        .route(
            "/accounts/{id}/transfers",
            get(transfers::list_account_transfers),
        )
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
    let mut openapi = ApiDoc::openapi();
    add_bearer_scheme(&mut openapi);
    service_kit::http::application(api, probe, openapi)
}
