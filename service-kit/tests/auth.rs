//! Bearer-token rules, checked through a tiny axum app served on a real port.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failure here is the test's failure"
)]

use std::path::PathBuf;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use service_kit::auth::{
    AuthConfigError, AuthRejection, AuthSettings, Authenticator, Caller, JwtSecret, Scope,
    TokenRequest, mint_token,
};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-only-secret-0123456789abcdef-0123";
const RSA_A: &[u8] = include_bytes!("fixtures/test-only-rsa-a.pem");
const RSA_B: &[u8] = include_bytes!("fixtures/test-only-rsa-b.pem");
const EC: &[u8] = include_bytes!("fixtures/test-only-ec-p256.pem");
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "bank-api";

struct TestApp {
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({
        "sub": caller.sub,
        "client_id": caller.client_id,
        "scopes": caller.scopes.iter().map(|scope| scope.as_str()).collect::<Vec<_>>(),
    }))
}

async fn write(caller: Caller) -> Result<&'static str, AuthRejection> {
    caller.require(Scope::AccountsWrite)?;
    Ok("written")
}

async fn spawn(settings: &AuthSettings) -> TestApp {
    let authenticator = Authenticator::new(settings).unwrap();
    let routes = Router::new()
        .route("/whoami", get(whoami))
        .route("/write", post(write))
        .layer(authenticator.layer());
    let app = service_kit::http::with_common_layers(routes);
    let listener = service_kit::http::bind("127.0.0.1", 0).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(service_kit::http::serve(listener, app, shutdown.clone()));
    TestApp {
        base,
        client: reqwest::Client::new(),
        shutdown,
    }
}

fn secret_settings() -> AuthSettings {
    AuthSettings {
        auth_jwt_secret: Some(JwtSecret::new(SECRET)),
        ..AuthSettings::default()
    }
}

fn jwks_settings(path: PathBuf) -> AuthSettings {
    AuthSettings {
        auth_jwks_file: Some(path),
        ..AuthSettings::default()
    }
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

/// Claims of a valid token for alice with `accounts:read`, changed by `changes`
/// (a `null` removes a claim).
fn claims(changes: Value) -> Value {
    let mut claims = json!({
        "sub": "alice",
        "exp": now() + 600,
        "scope": "accounts:read",
    });
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn hs256(claims: &Value) -> String {
    sign_hs256(SECRET, claims)
}

fn sign_hs256(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::default(), claims, &key).unwrap()
}

fn encoding_key(algorithm: Algorithm, pem: &[u8]) -> EncodingKey {
    match algorithm {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(pem).unwrap(),
    }
}

fn sign(algorithm: Algorithm, pem: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key(algorithm, pem)).unwrap()
}

/// The public JWK of a private key, under `kid`.
fn public_jwk(algorithm: Algorithm, pem: &[u8], kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(algorithm, pem), algorithm).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

/// A JWKS file (rsa-1 from key A, ec-1 from the EC key) in a fresh temporary path.
fn jwks_file(keys: Vec<Jwk>) -> PathBuf {
    let path = std::env::temp_dir().join(format!("service-kit-jwks-{}.json", uuid::Uuid::new_v4()));
    write_jwks(&path, keys);
    path
}

/// Replaces the file at once, as an operator or a secret mount would.
fn write_jwks(path: &PathBuf, keys: Vec<Jwk>) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, serde_json::to_vec(&JwkSet { keys }).unwrap()).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

fn both_keys() -> Vec<Jwk> {
    vec![
        public_jwk(Algorithm::RS256, RSA_A, "rsa-1"),
        public_jwk(Algorithm::ES256, EC, "ec-1"),
    ]
}

impl TestApp {
    async fn get(&self, authorization: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}/whoami", self.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.unwrap()
    }

    async fn whoami(&self, token: &str) -> reqwest::Response {
        self.get(Some(&format!("Bearer {token}"))).await
    }

    async fn accepts(&self, token: &str) -> Value {
        let response = self.whoami(token).await;
        assert_eq!(response.status(), 200, "token refused: {token}");
        response.json().await.unwrap()
    }

    async fn refuses(&self, token: &str) {
        expect_refusal(
            self.whoami(token).await,
            401,
            "unauthorized",
            r#"Bearer error="invalid_token""#,
        )
        .await;
    }
}

async fn expect_refusal(response: reqwest::Response, status: u16, code: &str, challenge: &str) {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["www-authenticate"], challenge);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["code"], code);
    assert_eq!(problem["status"], status);
}

#[tokio::test]
async fn a_good_hs256_token_names_the_caller_its_client_and_scopes() {
    let app = spawn(&secret_settings()).await;
    let body = app
        .accepts(&hs256(&claims(json!({
            "scope": "accounts:read accounts:write openid",
            "azp": "web-app",
        }))))
        .await;
    assert_eq!(
        body,
        json!({"sub": "alice", "client_id": "web-app", "scopes": ["accounts:read", "accounts:write"]})
    );
    let body = app
        .accepts(&hs256(&claims(json!({"client_id": "cli"}))))
        .await;
    assert_eq!(body["client_id"], "cli");
}

#[tokio::test]
async fn good_rs256_and_es256_tokens_are_checked_against_the_jwks_file() {
    let app = spawn(&jwks_settings(jwks_file(both_keys()))).await;
    let rs256 = sign(Algorithm::RS256, RSA_A, Some("rsa-1"), &claims(json!({})));
    assert_eq!(app.accepts(&rs256).await["sub"], "alice");
    let es256 = sign(
        Algorithm::ES256,
        EC,
        Some("ec-1"),
        &claims(json!({"sub": "bob"})),
    );
    assert_eq!(app.accepts(&es256).await["sub"], "bob");
}

#[tokio::test]
async fn a_jwks_file_replaced_at_runtime_is_picked_up() {
    let path = jwks_file(vec![public_jwk(Algorithm::RS256, RSA_A, "rsa-1")]);
    let app = spawn(&jwks_settings(path.clone())).await;
    let es256 = sign(Algorithm::ES256, EC, Some("ec-1"), &claims(json!({})));
    let rs256 = sign(Algorithm::RS256, RSA_A, Some("rsa-1"), &claims(json!({})));
    app.refuses(&es256).await;
    app.accepts(&rs256).await;

    write_jwks(&path, vec![public_jwk(Algorithm::ES256, EC, "ec-1")]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    app.accepts(&es256).await;
    app.refuses(&rs256).await;

    std::fs::write(&path, b"{ half a file").unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    app.accepts(&es256).await;
}

#[tokio::test]
async fn no_token_gets_a_bare_challenge() {
    let app = spawn(&secret_settings()).await;
    expect_refusal(app.get(None).await, 401, "unauthorized", "Bearer").await;
    expect_refusal(
        app.get(Some("Basic YWxpY2U6c2VjcmV0")).await,
        401,
        "unauthorized",
        "Bearer",
    )
    .await;
}

#[tokio::test]
async fn bearer_without_a_token_counts_as_no_token() {
    let app = spawn(&secret_settings()).await;
    expect_refusal(app.get(Some("Bearer")).await, 401, "unauthorized", "Bearer").await;
    expect_refusal(
        app.get(Some("Bearer ")).await,
        401,
        "unauthorized",
        "Bearer",
    )
    .await;
}

#[tokio::test]
async fn malformed_and_truncated_tokens_are_refused() {
    let app = spawn(&secret_settings()).await;
    app.refuses("not-a-jwt").await;
    app.refuses("a.b.c").await;
    app.refuses("....").await;
    let token = hs256(&claims(json!({})));
    app.refuses(&token[..token.len() - 10]).await;
    app.refuses(&token[..token.rfind('.').unwrap()]).await;
    app.refuses(&token[..token.len() / 2]).await;
}

#[tokio::test]
async fn a_token_over_8_kib_is_refused_even_when_well_signed() {
    let app = spawn(&secret_settings()).await;
    let token = hs256(&claims(json!({"padding": "x".repeat(8 * 1024)})));
    assert!(token.len() > 8 * 1024);
    app.refuses(&token).await;
    let token = hs256(&claims(json!({"padding": "x".repeat(5 * 1024)})));
    assert!(token.len() < 8 * 1024);
    app.accepts(&token).await;
}

#[tokio::test]
async fn alg_none_is_refused() {
    let app = spawn(&secret_settings()).await;
    let signed = hs256(&claims(json!({})));
    let payload = signed.split('.').nth(1).unwrap();
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    app.refuses(&format!("{none_header}.{payload}.")).await;
    app.refuses(&format!("{none_header}.{payload}")).await;
}

#[tokio::test]
async fn an_hs256_token_is_refused_when_only_a_jwks_is_configured() {
    let app = spawn(&jwks_settings(jwks_file(both_keys()))).await;
    app.refuses(&hs256(&claims(json!({})))).await;
}

#[tokio::test]
async fn algorithms_other_than_hs256_rs256_es256_are_refused() {
    let app = spawn(&jwks_settings(jwks_file(both_keys()))).await;
    for algorithm in [Algorithm::PS256, Algorithm::RS384] {
        app.refuses(&sign(algorithm, RSA_A, Some("rsa-1"), &claims(json!({}))))
            .await;
    }
    let app = spawn(&secret_settings()).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let hs512 =
        jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims(json!({})), &key).unwrap();
    app.refuses(&hs512).await;
}

#[tokio::test]
async fn a_kid_not_in_the_key_set_is_refused() {
    let app = spawn(&jwks_settings(jwks_file(both_keys()))).await;
    for kid in ["rsa-2", "ec-1"] {
        app.refuses(&sign(
            Algorithm::RS256,
            RSA_A,
            Some(kid),
            &claims(json!({})),
        ))
        .await;
    }
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_refused() {
    let app = spawn(&jwks_settings(jwks_file(both_keys()))).await;
    app.refuses(&sign(
        Algorithm::RS256,
        RSA_B,
        Some("rsa-1"),
        &claims(json!({})),
    ))
    .await;
    let app = spawn(&secret_settings()).await;
    app.refuses(&sign_hs256(
        "another-secret-0123456789abcdef-0123",
        &claims(json!({})),
    ))
    .await;
}

#[tokio::test]
async fn expiry_is_required_and_allows_30_seconds_of_skew() {
    let app = spawn(&secret_settings()).await;
    app.refuses(&hs256(&claims(json!({"exp": now() - 60}))))
        .await;
    app.refuses(&hs256(&claims(json!({"exp": null})))).await;
    app.refuses(&hs256(&claims(json!({"exp": "tomorrow"}))))
        .await;
    app.accepts(&hs256(&claims(json!({"exp": now() - 10}))))
        .await;
}

#[tokio::test]
async fn not_before_is_honoured_with_30_seconds_of_skew() {
    let app = spawn(&secret_settings()).await;
    app.refuses(&hs256(&claims(json!({"nbf": now() + 120}))))
        .await;
    app.accepts(&hs256(&claims(json!({"nbf": now() + 10}))))
        .await;
    app.accepts(&hs256(&claims(json!({"nbf": now() - 10}))))
        .await;
}

#[tokio::test]
async fn the_issuer_must_match_when_configured() {
    let app = spawn(&AuthSettings {
        auth_issuer: Some(ISSUER.to_owned()),
        ..secret_settings()
    })
    .await;
    app.refuses(&hs256(&claims(json!({"iss": "https://other.test"}))))
        .await;
    app.refuses(&hs256(&claims(json!({})))).await;
    app.accepts(&hs256(&claims(json!({"iss": ISSUER})))).await;
}

#[tokio::test]
async fn the_audience_must_match_when_configured() {
    let app = spawn(&AuthSettings {
        auth_audience: Some(AUDIENCE.to_owned()),
        ..secret_settings()
    })
    .await;
    app.refuses(&hs256(&claims(json!({"aud": "another-api"}))))
        .await;
    app.refuses(&hs256(&claims(json!({})))).await;
    app.accepts(&hs256(&claims(json!({"aud": AUDIENCE})))).await;
    app.accepts(&hs256(&claims(json!({"aud": ["other", AUDIENCE]}))))
        .await;
}

#[tokio::test]
async fn without_a_configured_audience_any_audience_is_accepted() {
    let app = spawn(&secret_settings()).await;
    app.accepts(&hs256(&claims(json!({"aud": "whatever", "iss": "anyone"}))))
        .await;
}

#[tokio::test]
async fn scopes_come_from_the_scope_string_and_the_scp_array() {
    let app = spawn(&secret_settings()).await;
    let body = app
        .accepts(&hs256(&claims(
            json!({"scope": null, "scp": ["accounts:write", "events:read", "x"]}),
        )))
        .await;
    assert_eq!(body["scopes"], json!(["accounts:write", "events:read"]));
    let body = app
        .accepts(&hs256(&claims(
            json!({"scope": "accounts:read", "scp": ["accounts:admin"]}),
        )))
        .await;
    assert_eq!(body["scopes"], json!(["accounts:read", "accounts:admin"]));
    let body = app
        .accepts(&hs256(&claims(
            json!({"scope": null, "scp": "events:read"}),
        )))
        .await;
    assert_eq!(body["scopes"], json!(["events:read"]));
    let body = app.accepts(&hs256(&claims(json!({"scope": null})))).await;
    assert_eq!(body["scopes"], json!([]));
}

#[tokio::test]
async fn a_scope_claim_of_the_wrong_type_makes_the_token_invalid() {
    let app = spawn(&secret_settings()).await;
    app.refuses(&hs256(&claims(json!({"scope": 5})))).await;
    app.refuses(&hs256(&claims(json!({"scope": ["accounts:read"]}))))
        .await;
    app.refuses(&hs256(&claims(json!({"scp": {"accounts:read": true}}))))
        .await;
    app.refuses(&hs256(&claims(json!({"scp": ["accounts:read", 7]}))))
        .await;
}

#[tokio::test]
async fn a_token_without_a_subject_is_refused() {
    let app = spawn(&secret_settings()).await;
    app.refuses(&hs256(&claims(json!({"sub": null})))).await;
    app.refuses(&hs256(&claims(json!({"sub": 42})))).await;
}

#[tokio::test]
async fn a_missing_scope_is_403_naming_it() {
    let app = spawn(&secret_settings()).await;
    let response = app
        .client
        .post(format!("{}/write", app.base))
        .bearer_auth(hs256(&claims(
            json!({"scope": "accounts:read events:read"}),
        )))
        .send()
        .await
        .unwrap();
    expect_refusal(
        response,
        403,
        "forbidden",
        r#"Bearer error="insufficient_scope", scope="accounts:write""#,
    )
    .await;
    let response = app
        .client
        .post(format!("{}/write", app.base))
        .bearer_auth(hs256(&claims(json!({"scope": "accounts:admin"}))))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_minted_development_token_is_accepted() {
    let settings = AuthSettings {
        auth_issuer: Some(ISSUER.to_owned()),
        auth_audience: Some(AUDIENCE.to_owned()),
        ..secret_settings()
    };
    let app = spawn(&settings).await;
    let token = mint_token(
        &settings,
        &TokenRequest {
            sub: "carol".to_owned(),
            scopes: vec![Scope::AccountsRead, Scope::EventsRead],
            lifetime: Duration::from_secs(60),
            client_id: Some("cli".to_owned()),
        },
    )
    .unwrap();
    assert_eq!(
        app.accepts(&token).await,
        json!({"sub": "carol", "client_id": "cli", "scopes": ["accounts:read", "events:read"]})
    );
}

#[test]
fn without_a_key_source_the_service_is_told_what_to_set() {
    let error = Authenticator::new(&AuthSettings::default()).unwrap_err();
    assert!(matches!(error, AuthConfigError::NoKeySource));
    let message = error.to_string();
    assert!(message.contains("AUTH_JWT_SECRET") && message.contains("AUTH_JWKS_FILE"));
}

#[test]
fn a_short_secret_or_a_missing_jwks_file_is_refused_at_start() {
    let short = AuthSettings {
        auth_jwt_secret: Some(JwtSecret::new("0123456789abcdef0123456789abcde")),
        ..AuthSettings::default()
    };
    assert!(matches!(
        Authenticator::new(&short),
        Err(AuthConfigError::SecretTooShort(31))
    ));
    let missing = jwks_settings(std::env::temp_dir().join("no-such-jwks-file.json"));
    let error = Authenticator::new(&missing).unwrap_err();
    assert!(error.to_string().contains("AUTH_JWKS_FILE"));
}
