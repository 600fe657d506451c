//! Checking a bearer token: size, algorithm, key, signature, then claims.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Caller;
use super::caller::scopes_in;
use super::keys::JwksFile;
use super::settings::{AuthConfigError, AuthSettings, MIN_SECRET_BYTES};

/// Longest token looked at; a longer one is refused without being parsed.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

/// Why a token was refused; logged at debug level, never sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is longer than 8 KiB")]
    Oversized,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not one this service accepts")]
    AlgorithmNotAccepted,
    #[error("no trusted key matches the token's kid and algorithm")]
    UnknownKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another issuer")]
    WrongIssuer,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token's claims are missing or of the wrong type: {0}")]
    BadClaims(String),
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(error: jsonwebtoken::errors::Error) -> Self {
        match error.into_kind() {
            ErrorKind::InvalidSignature => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
                Self::AlgorithmNotAccepted
            }
            ErrorKind::MissingRequiredClaim(claim) => {
                Self::BadClaims(format!("{claim} is missing"))
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                Self::BadClaims(format!("{claim} has the wrong type"))
            }
            ErrorKind::Json(error) if error.is_data() => Self::BadClaims(error.to_string()),
            _ => Self::Malformed,
        }
    }
}

/// The claims a caller is made of. `scope` is the contract's space-separated string;
/// `scp` is what several identity providers send instead: an array of names (or one
/// space-separated string). Any other type makes the token invalid.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<ScopeList>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeList {
    Names(Vec<String>),
    Spaced(String),
}

impl Claims {
    fn into_caller(self) -> Caller {
        let listed: Vec<&str> = match &self.scp {
            Some(ScopeList::Names(names)) => names.iter().map(String::as_str).collect(),
            Some(ScopeList::Spaced(names)) => vec![names.as_str()],
            None => Vec::new(),
        };
        let scopes = scopes_in(self.scope.as_deref().into_iter().chain(listed));
        Caller {
            sub: self.sub,
            client_id: self.azp.or(self.client_id),
            scopes,
        }
    }
}

/// Verifies bearer tokens against the configured keys. Cheap to clone; one per
/// process, put into request extensions with [`Authenticator::layer`].
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    secret: Option<DecodingKey>,
    jwks: Option<JwksFile>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256_secret", &self.inner.secret.is_some())
            .field("jwks_file", &self.inner.jwks.as_ref().map(JwksFile::path))
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .finish()
    }
}

impl Authenticator {
    /// The authenticator the settings describe; fails, saying what to set, when no
    /// key source is configured, the secret is too short or the JWKS file unusable.
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthConfigError> {
        let secret = match settings.secret()? {
            Some(secret) if secret.expose().len() < MIN_SECRET_BYTES => {
                return Err(AuthConfigError::SecretTooShort(secret.expose().len()));
            }
            Some(secret) => Some(DecodingKey::from_secret(secret.expose()).map_err(|error| {
                AuthConfigError::KeySet {
                    path: "AUTH_JWT_SECRET".to_owned(),
                    reason: error.to_string(),
                }
            })?),
            None => None,
        };
        let jwks = settings
            .jwks_file()
            .map(|path| {
                JwksFile::open(path.clone()).map_err(|reason| AuthConfigError::KeySet {
                    path: path.display().to_string(),
                    reason,
                })
            })
            .transpose()?;
        if secret.is_none() && jwks.is_none() {
            return Err(AuthConfigError::NoKeySource);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                secret,
                jwks,
                issuer: settings.issuer().map(str::to_owned),
                audience: settings.audience().map(str::to_owned),
            }),
        })
    }

    /// The caller a bearer token names, or why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Caller, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Oversized);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let keys;
        let key = match (header.alg, &self.inner.secret, &self.inner.jwks) {
            (Algorithm::HS256, Some(secret), _) => secret,
            (Algorithm::RS256 | Algorithm::ES256, _, Some(jwks)) => {
                keys = jwks.keys();
                keys.find(header.kid.as_deref(), header.alg)?
            }
            _ => return Err(TokenError::AlgorithmNotAccepted),
        };
        let claims: Claims = jsonwebtoken::decode(token, key, &self.validation(header.alg))?.claims;
        Ok(claims.into_caller())
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &self.inner.issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match &self.inner.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        validation
    }

    /// The layer that makes this authenticator available to the [`Caller`] extractor:
    /// `router.layer(authenticator.layer())`.
    pub fn layer(self) -> axum::Extension<Self> {
        axum::Extension(self)
    }
}
