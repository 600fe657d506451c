//! Bearer-token authentication (issue #9, contract "Identity and access").
//!
//! - `settings`: the `AUTH_*` settings ([`AuthSettings`]).
//! - `keys`: the HS256 secret and the JWKS file's RS256/ES256 keys, re-read on change.
//! - `verify`: [`Authenticator::verify`] turns a token into a [`Caller`] or a [`TokenError`].
//! - `caller`: [`Caller`] and the contract's [`Scope`]s.
//! - `extract`: `Caller` as an axum extractor; [`AuthRejection`] as 401/403 problem documents.
//! - `mint`: development tokens and the `token` subcommand.
//! - `openapi`: the bearer security scheme for Swagger UI.
//!
//! A service builds one [`Authenticator`] at start (refusing to start on error), adds
//! `.layer(authenticator.layer())` to its routes, takes `caller: Caller` in handlers
//! and calls `caller.require(Scope::...)?`.

mod caller;
mod extract;
mod keys;
mod mint;
mod openapi;
mod settings;
mod verify;

pub use caller::{Caller, Scope};
pub use extract::AuthRejection;
pub use mint::{
    DEFAULT_LIFETIME, MintError, TOKEN_USAGE, TokenRequest, mint_token, parse_token_args,
    run_token_command,
};
pub use openapi::{BEARER_SCHEME, add_bearer_scheme};
pub use settings::{AuthConfigError, AuthSettings, JwtSecret, MIN_SECRET_BYTES};
pub use verify::{Authenticator, LEEWAY_SECS, MAX_TOKEN_BYTES, TokenError};
