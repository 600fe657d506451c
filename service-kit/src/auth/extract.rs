//! The [`Caller`] extractor and the rejections it answers with: 401 and 403 problem
//! documents carrying the `WWW-Authenticate` challenge of RFC 6750.

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, HeaderValue, header, request::Parts};
use axum::response::{IntoResponse, Response};

use super::{Authenticator, Caller, Scope};
use crate::{ErrorCode, Problem};

/// Why a request was refused before its handler ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRejection {
    /// No bearer token (401, challenge without error).
    MissingToken,
    /// A token was presented and refused (401, `error="invalid_token"`).
    InvalidToken,
    /// A valid token without the scope the operation needs (403).
    InsufficientScope(Scope),
    /// The service forgot [`Authenticator::layer`]: a bug, answered with a 500.
    NotConfigured,
}

impl AuthRejection {
    pub fn problem(&self) -> Problem {
        match self {
            Self::MissingToken => Problem::new(
                ErrorCode::Unauthorized,
                "send a bearer token: Authorization: Bearer <JWT>",
            ),
            Self::InvalidToken => Problem::new(
                ErrorCode::Unauthorized,
                "the bearer token is malformed, badly signed, expired, not yet valid, \
                 or for another issuer or audience",
            ),
            Self::InsufficientScope(scope) => Problem::new(
                ErrorCode::Forbidden,
                format!("this operation needs the scope {scope}"),
            ),
            Self::NotConfigured => Problem::internal(
                &"no Authenticator in the request extensions: add Authenticator::layer",
            ),
        }
    }

    /// The `WWW-Authenticate` challenge, for 401 and 403.
    pub fn challenge(&self) -> Option<HeaderValue> {
        match self {
            Self::MissingToken => Some(HeaderValue::from_static("Bearer")),
            Self::InvalidToken => Some(HeaderValue::from_static(r#"Bearer error="invalid_token""#)),
            Self::InsufficientScope(scope) => HeaderValue::from_str(&format!(
                r#"Bearer error="insufficient_scope", scope="{scope}""#
            ))
            .ok(),
            Self::NotConfigured => None,
        }
    }
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let challenge = self.challenge();
        let mut response = self.problem().into_response();
        if let Some(challenge) = challenge {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// The bearer token of a request: `Ok(None)` when there is none (no `Authorization`
/// header, another scheme, or `Bearer` with nothing after it), `Err` when the header
/// cannot be a token at all.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthRejection> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        tracing::debug!("bearer token refused: several Authorization headers");
        return Err(AuthRejection::InvalidToken);
    }
    let Ok(value) = value.to_str() else {
        tracing::debug!("bearer token refused: the Authorization header is not ASCII");
        return Err(AuthRejection::InvalidToken);
    };
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    Ok((!token.is_empty()).then_some(token))
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(authenticator) = parts.extensions.get::<Authenticator>() else {
            return Err(AuthRejection::NotConfigured);
        };
        let Some(token) = bearer_token(&parts.headers)? else {
            tracing::debug!("request without a bearer token");
            return Err(AuthRejection::MissingToken);
        };
        authenticator.verify(token).map_err(|reason| {
            tracing::debug!(%reason, "bearer token refused");
            AuthRejection::InvalidToken
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn finds_the_token_after_a_case_insensitive_bearer() {
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def.ghi"])),
            Ok(Some("abc.def.ghi"))
        );
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok(Some("abc")));
    }

    #[test]
    fn no_header_another_scheme_or_an_empty_bearer_is_no_token() {
        assert_eq!(bearer_token(&headers(&[])), Ok(None));
        assert_eq!(
            bearer_token(&headers(&["Basic YWxpY2U6c2VjcmV0"])),
            Ok(None)
        );
        assert_eq!(bearer_token(&headers(&["Bearer"])), Ok(None));
        assert_eq!(bearer_token(&headers(&["Bearer   "])), Ok(None));
    }

    #[test]
    fn several_authorization_headers_are_refused() {
        assert_eq!(
            bearer_token(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthRejection::InvalidToken)
        );
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(AuthRejection::MissingToken.challenge().unwrap(), "Bearer");
        assert_eq!(
            AuthRejection::InsufficientScope(Scope::AccountsWrite)
                .challenge()
                .unwrap(),
            r#"Bearer error="insufficient_scope", scope="accounts:write""#
        );
    }
}
