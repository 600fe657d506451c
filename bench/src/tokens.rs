//! The run's HS256 secret, given to both services as `AUTH_JWT_SECRET`, and the bearer
//! tokens signed with it, minted as the services' `token` subcommand does.

use std::time::Duration;

use anyhow::Context as _;
use service_kit::auth::{AuthSettings, JwtSecret, Scope, TokenRequest, mint_token};

/// The secret and the tokens of one run.
pub(crate) struct Tokens {
    secret: String,
    /// Every scope, `sub` `bench`: the load's token (the seeded accounts have no owner,
    /// so only an operator reaches them).
    pub(crate) admin: String,
    /// `events:read`: the query service's `COMMAND_SERVICE_TOKEN`.
    pub(crate) query_service: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

/// Long enough for the longest run.
const LIFETIME: Duration = Duration::from_secs(6 * 3600);

impl Tokens {
    /// A fresh random secret (48 bytes, hex) and the tokens signed with it.
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let bytes: [u8; 48] = rand::random();
        let secret: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        let settings = settings(&secret);
        let mint = |sub: &str, scopes: Vec<Scope>| {
            let request = TokenRequest {
                sub: sub.to_owned(),
                scopes,
                lifetime: LIFETIME,
                client_id: Some("bench".to_owned()),
            };
            mint_token(&settings, &request).with_context(|| format!("cannot mint {sub}'s token"))
        };
        Ok(Self {
            admin: mint(
                "bench",
                vec![
                    Scope::AccountsRead,
                    Scope::AccountsWrite,
                    Scope::AccountsAdmin,
                    Scope::EventsRead,
                ],
            )?,
            query_service: mint("query-service", vec![Scope::EventsRead])?,
            secret,
        })
    }

    /// The value of `AUTH_JWT_SECRET` for the services.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// The services' authentication settings.
    pub(crate) fn settings(&self) -> AuthSettings {
        settings(&self.secret)
    }
}

fn settings(secret: &str) -> AuthSettings {
    AuthSettings {
        auth_jwt_secret: Some(JwtSecret::new(secret)),
        ..AuthSettings::default()
    }
}
