//! Bearer tokens for tests: the secret every test stack is started with, and tokens
//! signed with it, as an identity provider would issue them.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HS256 secret (`AUTH_JWT_SECRET`) of every service a test starts.
pub const TEST_JWT_SECRET: &str = "bank-cqrs-test-suite-hs256-secret-0123456789";

/// Every scope of the contract: what an operator's tooling holds.
pub const ADMIN_SCOPES: &str = "accounts:admin accounts:read accounts:write events:read";

/// A customer's scopes: its own accounts, read and write.
pub const CUSTOMER_SCOPES: &str = "accounts:read accounts:write";

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// `claims` signed with [`TEST_JWT_SECRET`] (HS256), exactly as given.
pub fn sign(claims: &Value) -> String {
    EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes())
        .and_then(|key| jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key))
        .unwrap_or_else(|error| panic!("cannot sign a test token: {error}"))
}

/// A token for `sub` with `scopes` (space-separated), valid for an hour.
pub fn token(sub: &str, scopes: &str) -> String {
    sign(&json!({"sub": sub, "scope": scopes, "iat": now(), "exp": now() + 3600}))
}

/// A token with every scope, for `sub` `admin`.
pub fn admin_token() -> String {
    token("admin", ADMIN_SCOPES)
}

/// A customer's token (`accounts:read accounts:write`) for `sub`.
pub fn customer_token(sub: &str) -> String {
    token(sub, CUSTOMER_SCOPES)
}
