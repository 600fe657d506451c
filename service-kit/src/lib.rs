//! What every service of the platform shares: typed settings, telemetry, RFC 9457
//! problem documents, request extractors that answer with them, bearer-token
//! authentication, the HTTP middleware stack and a server bounded against abusive
//! clients, operational endpoints, shutdown and AMQP connections.

pub mod amqp;
pub mod auth;
pub mod backoff;
pub mod extract;
pub mod http;
pub mod ops;
pub mod problem;
pub mod recent;
pub mod refusals;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use problem::{ErrorCode, Problem};
