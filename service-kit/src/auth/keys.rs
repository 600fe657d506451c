//! The keys tokens are checked against: the HS256 secret, and the RS256/ES256 keys of
//! a JSON Web Key Set file that is re-read (at most once a second) when it changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::TokenError;

/// How often the JWKS file's modification time is compared, at most.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// One public key of the set, with the one algorithm it verifies.
struct TrustedKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The usable signing keys of a JSON Web Key Set: RSA keys for RS256 and P-256 keys
/// for ES256. Encryption keys and other key types are left out.
pub(crate) struct KeySet {
    keys: Vec<TrustedKey>,
}

impl KeySet {
    pub(crate) fn parse(json: &[u8]) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|error| format!("not a JSON Web Key Set: {error}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let Some(algorithm) = signing_algorithm(jwk) else {
                continue;
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|error| {
                format!(
                    "key {:?} is not a valid {algorithm:?} key: {error}",
                    jwk.common.key_id.as_deref().unwrap_or("without kid")
                )
            })?;
            keys.push(TrustedKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            });
        }
        Ok(Self { keys })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token of `algorithm` naming `kid`; a token without `kid` is
    /// accepted only when one key of the set fits its algorithm.
    pub(crate) fn find(
        &self,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<&DecodingKey, TokenError> {
        let mut candidates = self.keys.iter().filter(|key| key.algorithm == algorithm);
        let found = match kid {
            Some(kid) => candidates.find(|key| key.kid.as_deref() == Some(kid)),
            None => match (candidates.next(), candidates.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            },
        };
        found.map(|key| &key.key).ok_or(TokenError::UnknownKey)
    }
}

/// The algorithm a JWK verifies, if it is a signing key this service accepts.
fn signing_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(ref usage) if *usage != PublicKeyUse::Signature) {
        return None;
    }
    let natural = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(natural),
        Some(KeyAlgorithm::RS256) if natural == Algorithm::RS256 => Some(natural),
        Some(KeyAlgorithm::ES256) if natural == Algorithm::ES256 => Some(natural),
        Some(_) => None,
    }
}

/// What identifies one version of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    let metadata = std::fs::metadata(path)?;
    Ok(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
    })
}

/// A JWKS file and the keys last read from it.
pub(crate) struct JwksFile {
    path: PathBuf,
    state: Mutex<Loaded>,
}

struct Loaded {
    checked_at: Instant,
    stamp: FileStamp,
    keys: Arc<KeySet>,
}

impl JwksFile {
    /// Reads the file now; a missing, unreadable or invalid file is an error.
    pub(crate) fn open(path: PathBuf) -> Result<Self, String> {
        let stamp = stamp(&path).map_err(|error| format!("cannot read it: {error}"))?;
        let keys = read(&path)?;
        if keys.len() == 0 {
            return Err("it holds no RS256 or ES256 signing key".to_owned());
        }
        Ok(Self {
            path,
            state: Mutex::new(Loaded {
                checked_at: Instant::now(),
                stamp,
                keys: Arc::new(keys),
            }),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The current keys, re-read first when the file changed since the last look
    /// (looked at most once a second). A file that cannot be read or parsed keeps
    /// the previous keys in force, with a warning.
    pub(crate) fn keys(&self) -> Arc<KeySet> {
        let mut loaded = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if loaded.checked_at.elapsed() >= RELOAD_CHECK_INTERVAL {
            loaded.checked_at = Instant::now();
            self.reload_if_changed(&mut loaded);
        }
        Arc::clone(&loaded.keys)
    }

    fn reload_if_changed(&self, loaded: &mut Loaded) {
        let current = match stamp(&self.path) {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "cannot read the JWKS file; keeping the keys in force");
                return;
            }
        };
        if current == loaded.stamp {
            return;
        }
        match read(&self.path) {
            Ok(keys) => {
                tracing::info!(path = %self.path.display(), keys = keys.len(), "JWKS file changed; keys reloaded");
                loaded.stamp = current;
                loaded.keys = Arc::new(keys);
            }
            Err(reason) => {
                tracing::warn!(path = %self.path.display(), %reason, "JWKS file changed but cannot be used; keeping the keys in force");
            }
        }
    }
}

fn read(path: &Path) -> Result<KeySet, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("cannot read it: {error}"))?;
    KeySet::parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public half of `tests/fixtures/test-only-rsa-a.pem`.
    const RSA_KEY: &str = r#"{"kty":"RSA","kid":"rsa-1","n":"uZcerMxOgDIsPmxXo_yGCeGozwfErssGHLUzQpk_5bMBgOiczcBuqi_I2lUJMUWTtpZsJv5pG2EMlcHlXIwqP3IBPomoE0P3k2MyMo9NEJTfGeRovEsv9A4tLhHrjL2_Usd79W3U9oTu8dxFBHO5A-v23IXBOI0mEhf80q5yvlsWMkoI1jC3oO0r8fK4f6LOXaGqpETTgRrpsuM9jIcJ2KbRaJQ1HGuF1rqe_FY-vHKh7bfiop1bYQr54V2_FM9v8Cktg0W4shfatQLwQ65rTd9ihpEf8fcG7Tq1ieSBcpW91Xo0KFeoGAD0mPgNNFBdd5Y0YvEHBzsh5HbwpZvsOw","e":"AQAB"}"#;
    /// The public half of `tests/fixtures/test-only-ec-p256.pem`.
    const EC_KEY: &str = r#"{"kty":"EC","kid":"ec-1","crv":"P-256","x":"c6c08oTMKlESNzp_TBXB-bUTEJxUJV1BGzJiGM-xSEI","y":"rja_p7lvCXZ6yZxmGixbFKr1akPxtqE-UjG8nP6_fbo"}"#;

    fn set(keys: &[&str]) -> KeySet {
        let json = format!(r#"{{"keys":[{}]}}"#, keys.join(","));
        KeySet::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn rsa_keys_verify_rs256_and_p256_keys_es256() {
        let keys = set(&[RSA_KEY, EC_KEY]);
        assert!(keys.find(Some("rsa-1"), Algorithm::RS256).is_ok());
        assert!(keys.find(Some("ec-1"), Algorithm::ES256).is_ok());
        assert!(keys.find(Some("rsa-1"), Algorithm::ES256).is_err());
        assert!(keys.find(Some("other"), Algorithm::RS256).is_err());
    }

    #[test]
    fn a_token_without_kid_needs_a_single_fitting_key() {
        assert!(set(&[RSA_KEY, EC_KEY]).find(None, Algorithm::RS256).is_ok());
        let second = RSA_KEY.replace("rsa-1", "rsa-2");
        assert!(
            set(&[RSA_KEY, &second])
                .find(None, Algorithm::RS256)
                .is_err()
        );
    }

    #[test]
    fn encryption_keys_other_algorithms_and_key_types_are_left_out() {
        let encryption = RSA_KEY.replace(r#""kty":"RSA""#, r#""kty":"RSA","use":"enc""#);
        let ps256 = RSA_KEY.replace(r#""kty":"RSA""#, r#""kty":"RSA","alg":"PS256""#);
        let octet = r#"{"kty":"oct","kid":"hmac","k":"c2VjcmV0"}"#;
        assert_eq!(set(&[&encryption, &ps256, octet]).len(), 0);
        let declared =
            RSA_KEY.replace(r#""kty":"RSA""#, r#""kty":"RSA","alg":"RS256","use":"sig""#);
        assert_eq!(set(&[&declared]).len(), 1);
    }

    #[test]
    fn a_file_that_is_not_a_key_set_is_refused() {
        assert!(KeySet::parse(b"{\"keys\": 5}").is_err());
        assert!(KeySet::parse(b"not json").is_err());
    }
}
