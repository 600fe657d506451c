//! The REST API's one error type, mapped once to problem documents.

use axum::response::{IntoResponse, Response};
use service_kit::auth::AuthRejection;
use service_kit::{ErrorCode, Problem};
use uuid::Uuid;

use crate::store::is_unavailable;

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0:?}")]
    Auth(AuthRejection),
    #[error("{0}")]
    Invalid(String),
    #[error("account {0} does not exist")]
    NotFound(Uuid),
    #[error("transfer {0} does not exist")]
    TransferNotFound(Uuid),
    #[error(
        "account {id} is projected up to version {projected}, not yet {min_version}; retry later"
    )]
    NotYetProjected {
        id: Uuid,
        min_version: u64,
        projected: i64,
    },
    #[error("the read model's database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("the read model failed: {0}")]
    Database(#[source] sqlx::Error),
    #[error("the read model holds an unreadable {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Database(error)
        }
    }
}

impl From<AuthRejection> for ApiError {
    fn from(rejection: AuthRejection) -> Self {
        Self::Auth(rejection)
    }
}

impl ApiError {
    pub(crate) fn problem(&self) -> Problem {
        match self {
            Self::Auth(rejection) => rejection.problem(),
            Self::Invalid(detail) => Problem::invalid(detail.clone()),
            Self::NotFound(_) | Self::TransferNotFound(_) => Problem::not_found(self.to_string()),
            Self::NotYetProjected { .. } => {
                Problem::new(ErrorCode::NotYetProjected, self.to_string())
            }
            Self::Unavailable(error) => {
                tracing::warn!(error = %error, "query failed: the read model is unavailable");
                Problem::new(
                    ErrorCode::ServiceUnavailable,
                    "the read model's database is unavailable; retry later",
                )
            }
            Self::Database(_) | Self::Corrupt(_) => Problem::internal(self),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Auth(rejection) => rejection.into_response(),
            other => other.problem().into_response(),
        }
    }
}
