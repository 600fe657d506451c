//! Development tokens: HS256 tokens signed with the configured secret, and the
//! `<binary> token --sub alice --scope "..."` subcommand every service offers.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use super::Scope;
use super::settings::{AuthConfigError, AuthSettings, MIN_SECRET_BYTES};

/// What a development token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub sub: String,
    pub scopes: Vec<Scope>,
    pub lifetime: Duration,
    pub client_id: Option<String>,
}

/// Lifetime of a development token unless `--ttl` says otherwise.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Why no development token could be made.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(
        "neither AUTH_JWT_SECRET nor AUTH_JWT_SECRET_FILE is set; development tokens are signed with that secret"
    )]
    NoSecret,
    #[error(transparent)]
    Config(#[from] AuthConfigError),
    #[error("cannot sign the token: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    scope: String,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// An HS256 token for `request`, signed with `AUTH_JWT_SECRET`, naming the configured
/// issuer and audience so the services accept it.
pub fn mint_token(settings: &AuthSettings, request: &TokenRequest) -> Result<String, MintError> {
    let secret = settings
        .secret()
        .map_err(MintError::from)?
        .ok_or(MintError::NoSecret)?;
    if secret.expose().len() < MIN_SECRET_BYTES {
        return Err(AuthConfigError::SecretTooShort(secret.expose().len()).into());
    }
    let now = jsonwebtoken::get_current_timestamp();
    let claims = MintedClaims {
        sub: &request.sub,
        scope: request
            .scopes
            .iter()
            .map(|scope| scope.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        iat: now,
        exp: now.saturating_add(request.lifetime.as_secs()),
        client_id: request.client_id.as_deref(),
        iss: settings.issuer(),
        aud: settings.audience(),
    };
    let key = EncodingKey::from_secret(secret.expose())?;
    Ok(jsonwebtoken::encode(&Header::default(), &claims, &key)?)
}

/// How the `token` subcommand is called.
pub const TOKEN_USAGE: &str = "token --sub SUBJECT --scope \"accounts:read accounts:write\" \
     [--ttl SECONDS (default 3600)] [--client-id ID]\n\
     Prints a development token signed with AUTH_JWT_SECRET. Scopes: accounts:read, \
     accounts:write, accounts:admin, events:read.";

/// Parses the arguments after `token` (`--name value` or `--name=value`; `--scope`
/// may be repeated).
pub fn parse_token_args(args: &[String]) -> Result<TokenRequest, String> {
    let mut sub = None;
    let mut scopes = Vec::new();
    let mut lifetime = DEFAULT_LIFETIME;
    let mut client_id = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| rest.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name {
            "--sub" => sub = Some(value()?),
            "--scope" => {
                for name in value()?.split_whitespace() {
                    let scope =
                        Scope::parse(name).ok_or_else(|| format!("unknown scope {name:?}"))?;
                    if !scopes.contains(&scope) {
                        scopes.push(scope);
                    }
                }
            }
            "--ttl" => {
                let seconds = value()?;
                let seconds: u64 = seconds
                    .parse()
                    .ok()
                    .filter(|seconds| *seconds > 0)
                    .ok_or_else(|| {
                        format!("--ttl takes a positive number of seconds, not {seconds:?}")
                    })?;
                lifetime = Duration::from_secs(seconds);
            }
            "--client-id" => client_id = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let sub = sub
        .filter(|sub| !sub.is_empty())
        .ok_or_else(|| "--sub is required".to_owned())?;
    Ok(TokenRequest {
        sub,
        scopes,
        lifetime,
        client_id,
    })
}

/// When the process was started as `<binary> token ...`, mints the token, prints it
/// on stdout and returns the outcome; `None` otherwise, so the service starts:
///
/// ```ignore
/// if let Some(outcome) = service_kit::auth::run_token_command(std::env::args(), &settings.auth) {
///     return outcome;
/// }
/// ```
pub fn run_token_command(
    args: impl IntoIterator<Item = String>,
    settings: &AuthSettings,
) -> Option<anyhow::Result<()>> {
    let args: Vec<String> = args.into_iter().collect();
    if args.get(1).map(String::as_str) != Some("token") {
        return None;
    }
    let binary = args
        .first()
        .and_then(|path| std::path::Path::new(path).file_name())
        .map_or_else(
            || "service".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        );
    let rest = args.get(2..).unwrap_or_default();
    if rest.iter().any(|arg| arg == "--help" || arg == "-h") {
        print_line(&format!("usage: {binary} {TOKEN_USAGE}"));
        return Some(Ok(()));
    }
    Some(
        parse_token_args(rest)
            .map_err(|problem| anyhow::anyhow!("{problem}\nusage: {binary} {TOKEN_USAGE}"))
            .and_then(|request| Ok(mint_token(settings, &request)?))
            .map(|token| print_line(&token)),
    )
}

#[expect(
    clippy::print_stdout,
    reason = "the token subcommand's output is the token on stdout"
)]
fn print_line(text: &str) {
    println!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &[&str]) -> Vec<String> {
        line.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn parses_every_option() {
        let request = parse_token_args(&args(&[
            "--sub",
            "alice",
            "--scope",
            "accounts:read accounts:write",
            "--scope=events:read",
            "--ttl",
            "60",
            "--client-id=cli",
        ]))
        .unwrap();
        assert_eq!(
            request,
            TokenRequest {
                sub: "alice".to_owned(),
                scopes: vec![Scope::AccountsRead, Scope::AccountsWrite, Scope::EventsRead],
                lifetime: Duration::from_secs(60),
                client_id: Some("cli".to_owned()),
            }
        );
    }

    #[test]
    fn defaults_to_an_hour_without_scopes() {
        let request = parse_token_args(&args(&["--sub", "bob"])).unwrap();
        assert_eq!(request.lifetime, DEFAULT_LIFETIME);
        assert!(request.scopes.is_empty());
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert!(parse_token_args(&args(&[])).is_err());
        assert!(parse_token_args(&args(&["--sub"])).is_err());
        assert!(parse_token_args(&args(&["--sub", "a", "--scope", "accounts:reed"])).is_err());
        assert!(parse_token_args(&args(&["--sub", "a", "--ttl", "-5"])).is_err());
        assert!(parse_token_args(&args(&["--sub", "a", "--verbose"])).is_err());
    }

    #[test]
    fn other_command_lines_start_the_service() {
        assert!(run_token_command(args(&["command-service"]), &AuthSettings::default()).is_none());
        assert!(
            run_token_command(
                args(&["query-service", "rebuild"]),
                &AuthSettings::default()
            )
            .is_none()
        );
    }

    #[test]
    fn minting_needs_a_long_enough_secret() {
        let request = parse_token_args(&args(&["--sub", "a"])).unwrap();
        assert!(matches!(
            mint_token(&AuthSettings::default(), &request),
            Err(MintError::NoSecret)
        ));
        let short = AuthSettings {
            auth_jwt_secret: Some(super::super::JwtSecret::new("short")),
            ..AuthSettings::default()
        };
        assert!(matches!(
            mint_token(&short, &request),
            Err(MintError::Config(_))
        ));
    }
}
