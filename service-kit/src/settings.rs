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
