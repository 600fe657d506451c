//! The `AUTH_*` settings, read like every other setting (see [`crate::settings`]).

use std::path::PathBuf;

use serde::Deserialize;

/// Shortest HS256 secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where bearer tokens' keys come from and which issuer and audience they must name.
/// Flatten it into a service's settings (`#[serde(flatten)] auth: AuthSettings`); an
/// empty value counts as unset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AuthSettings {
    /// `AUTH_JWT_SECRET`: the HS256 secret, at least 32 bytes (development and tests).
    pub auth_jwt_secret: Option<JwtSecret>,
    /// `AUTH_JWT_SECRET_FILE`: the same secret read from a file (a mounted compose or
    /// Kubernetes secret); surrounding whitespace is ignored.
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// `AUTH_JWKS_FILE`: a JSON Web Key Set file with RS256/ES256 public keys,
    /// re-read when it changes.
    pub auth_jwks_file: Option<PathBuf>,
    /// `AUTH_ISSUER`: when set, `iss` must equal it.
    pub auth_issuer: Option<String>,
    /// `AUTH_AUDIENCE`: when set, `aud` must name it.
    pub auth_audience: Option<String>,
}

impl AuthSettings {
    /// The HS256 secret, when one is set, from `AUTH_JWT_SECRET` or the file named by
    /// `AUTH_JWT_SECRET_FILE` (setting both is an error).
    pub fn secret(&self) -> Result<Option<JwtSecret>, AuthConfigError> {
        let inline = self
            .auth_jwt_secret
            .as_ref()
            .filter(|secret| !secret.0.is_empty());
        let file = self
            .auth_jwt_secret_file
            .as_ref()
            .filter(|path| !path.as_os_str().is_empty());
        match (inline, file) {
            (Some(_), Some(_)) => Err(AuthConfigError::TwoSecrets),
            (Some(secret), None) => Ok(Some(secret.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|text| Some(JwtSecret::new(text.trim())))
                .map_err(|error| AuthConfigError::SecretFile {
                    path: path.display().to_string(),
                    reason: error.to_string(),
                }),
            (None, None) => Ok(None),
        }
    }

    /// The JWKS file, when one is set.
    pub fn jwks_file(&self) -> Option<&PathBuf> {
        self.auth_jwks_file
            .as_ref()
            .filter(|path| !path.as_os_str().is_empty())
    }

    /// The required issuer, when one is set.
    pub fn issuer(&self) -> Option<&str> {
        non_empty(self.auth_issuer.as_deref())
    }

    /// The required audience, when one is set.
    pub fn audience(&self) -> Option<&str> {
        non_empty(self.auth_audience.as_deref())
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|value| !value.trim().is_empty())
}

/// An HS256 secret that never reaches a log.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct JwtSecret(String);

impl JwtSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSecret(***)")
    }
}

/// Why the authentication settings cannot be used; the service refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "no bearer token key is configured: set AUTH_JWT_SECRET (an HS256 secret of at least \
         32 bytes, e.g. from `openssl rand -hex 32`) or AUTH_JWKS_FILE (a JSON Web Key Set file \
         with RS256/ES256 public keys), or both"
    )]
    NoKeySource,
    #[error(
        "AUTH_JWT_SECRET is {0} bytes long; it must be at least 32 bytes \
         (e.g. from `openssl rand -hex 32`)"
    )]
    SecretTooShort(usize),
    #[error("set AUTH_JWT_SECRET or AUTH_JWT_SECRET_FILE, not both")]
    TwoSecrets,
    #[error("AUTH_JWT_SECRET_FILE {path} cannot be read: {reason}")]
    SecretFile { path: String, reason: String },
    #[error("AUTH_JWKS_FILE {path}: {reason}")]
    KeySet { path: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_never_prints() {
        let settings = AuthSettings {
            auth_jwt_secret: Some(JwtSecret::new("very-secret-value-0123456789abcdef")),
            ..AuthSettings::default()
        };
        assert!(!format!("{settings:?}").contains("very-secret"));
    }

    #[test]
    fn the_secret_may_come_from_a_file_but_not_from_both() {
        let path = std::env::temp_dir().join(format!("jwt-secret-{}", std::process::id()));
        std::fs::write(&path, "  file-secret-0123456789abcdef0123456789\n").unwrap();
        let from_file = AuthSettings {
            auth_jwt_secret_file: Some(path.clone()),
            ..AuthSettings::default()
        };
        assert_eq!(
            from_file.secret().unwrap().unwrap().expose(),
            b"file-secret-0123456789abcdef0123456789"
        );
        let both = AuthSettings {
            auth_jwt_secret: Some(JwtSecret::new("inline-secret-0123456789abcdef0123")),
            ..from_file
        };
        assert!(matches!(both.secret(), Err(AuthConfigError::TwoSecrets)));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn empty_values_count_as_unset() {
        let settings = AuthSettings {
            auth_jwt_secret: Some(JwtSecret::new("")),
            auth_jwt_secret_file: Some(PathBuf::new()),
            auth_jwks_file: Some(PathBuf::new()),
            auth_issuer: Some(" ".to_owned()),
            auth_audience: Some(String::new()),
        };
        assert!(settings.secret().unwrap().is_none());
        assert!(settings.jwks_file().is_none());
        assert!(settings.issuer().is_none());
        assert!(settings.audience().is_none());
    }
}
