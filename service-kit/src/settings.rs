//! Typed settings: defaults, then an optional TOML file named by `CONFIG_FILE`,
//! then environment variables (`DATABASE_URL`, `HTTP_PORT`, ...), the environment winning.

use serde::de::DeserializeOwned;

/// Loads settings of type `T`. Field names are the lower-case environment variable
/// names (`database_url` is set by `DATABASE_URL`); `T` provides defaults via serde.
pub fn load<T: DeserializeOwned>() -> Result<T, config::ConfigError> {
    let mut builder = config::Config::builder();
    if let Ok(path) = std::env::var("CONFIG_FILE") {
        builder = builder.add_source(config::File::with_name(&path).required(true));
    }
    builder
        .add_source(config::Environment::default().try_parsing(true))
        .build()?
        .try_deserialize()
}

/// A connection string whose password never reaches a log.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                write!(f, "{scheme}://***@{host}")
            }
            None => f.write_str("***"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::auth::AuthSettings;
    use crate::http::ConnectionLimits;

    #[derive(Debug, serde::Deserialize)]
    struct ServiceSettings {
        #[serde(flatten)]
        auth: AuthSettings,
        #[serde(flatten)]
        connections: ConnectionLimits,
    }

    fn from_environment(variables: &[(&str, &str)]) -> ServiceSettings {
        let environment = variables
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        config::Config::builder()
            .add_source(
                config::Environment::default()
                    .source(Some(environment))
                    .try_parsing(true),
            )
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn auth_and_connection_settings_flatten_into_a_service_s_settings() {
        let settings = from_environment(&[
            (
                "AUTH_JWT_SECRET",
                "a-secret-of-at-least-32-bytes-0123456789",
            ),
            ("AUTH_JWKS_FILE", "/run/secrets/jwks.json"),
            ("AUTH_ISSUER", "https://issuer.test"),
            ("HTTP_MAX_CONNECTIONS", "500"),
            ("HTTP_HEADER_TIMEOUT_SECS", "5"),
        ]);
        assert_eq!(
            settings
                .auth
                .secret()
                .unwrap()
                .map(|secret| secret.expose().len()),
            Some(40)
        );
        assert_eq!(
            settings
                .auth
                .jwks_file()
                .map(|path| path.display().to_string()),
            Some("/run/secrets/jwks.json".to_owned())
        );
        assert_eq!(settings.auth.issuer(), Some("https://issuer.test"));
        assert_eq!(settings.auth.audience(), None);
        assert_eq!(settings.connections.http_max_connections, 500);
        assert_eq!(settings.connections.http_header_timeout_secs, 5);
        assert_eq!(settings.connections.http_max_in_flight, 1_024);
    }
}
