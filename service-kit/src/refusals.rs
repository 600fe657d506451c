//! The refusals an operation documents in its OpenAPI responses, declared as data: each
//! a problem document with one example per code it may carry. Operations list the
//! refusals they can answer with (`refusals!`) instead of repeating the response tuples.

use std::collections::BTreeMap;

use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};

use crate::{ErrorCode, Problem};

/// One documented refusal: its status, what it means for the operation, and the codes
/// it carries.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub status: u16,
    pub description: &'static str,
    pub codes: &'static [ErrorCode],
}

impl Refusal {
    pub const fn new(status: u16, description: &'static str, codes: &'static [ErrorCode]) -> Self {
        Self {
            status,
            description,
            codes,
        }
    }
}

/// A bad UUID, body, query parameter or header.
pub const INVALID_REQUEST: Refusal = Refusal::new(
    400,
    "invalid_request: malformed JSON, an unknown or missing field, a bad UUID, amount, currency, query parameter or Idempotency-Key.",
    &[ErrorCode::InvalidRequest],
);
/// No usable bearer token.
pub const UNAUTHORIZED: Refusal = Refusal::new(
    401,
    "unauthorized: no bearer token, or one that is malformed, badly signed, expired or not yet valid.",
    &[ErrorCode::Unauthorized],
);
/// An unknown account, or one the caller may not see.
pub const NOT_FOUND: Refusal = Refusal::new(
    404,
    "not_found: no account has this id, or it is not the caller's.",
    &[ErrorCode::NotFound],
);
/// A body over 64 KiB.
pub const PAYLOAD_TOO_LARGE: Refusal = Refusal::new(
    413,
    "payload_too_large: the body is over 64 KiB.",
    &[ErrorCode::PayloadTooLarge],
);
/// A body that is not JSON.
pub const UNSUPPORTED_MEDIA_TYPE: Refusal = Refusal::new(
    415,
    "unsupported_media_type: a body that is not application/json.",
    &[ErrorCode::UnsupportedMediaType],
);
/// A dependency down, or the request too slow.
pub const SERVICE_UNAVAILABLE: Refusal = Refusal::new(
    503,
    "service_unavailable: a database is unreachable or the request took too long.",
    &[ErrorCode::ServiceUnavailable],
);

/// The OpenAPI responses of `refusals`, keyed by status.
pub fn responses(refusals: &[Refusal]) -> BTreeMap<String, RefOr<Response>> {
    refusals
        .iter()
        .map(|refusal| {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem")));
            let content = match refusal.codes {
                [code] => content.example(Some(Problem::example(*code))),
                codes => content.examples_from_iter(codes.iter().map(|code| {
                    (
                        code.as_str(),
                        ExampleBuilder::new()
                            .value(Some(Problem::example(*code)))
                            .build(),
                    )
                })),
            };
            let response = ResponseBuilder::new()
                .description(refusal.description)
                .content("application/problem+json", content.build())
                .build();
            (refusal.status.to_string(), RefOr::T(response))
        })
        .collect()
}

/// Declares a type whose OpenAPI responses are the given refusals, for
/// `#[utoipa::path(responses((status = 200, ...), TheType))]`.
#[macro_export]
macro_rules! refusals {
    ($(#[$meta:meta])* $vis:vis $name:ident = [$($refusal:expr),* $(,)?]) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::refusals::responses(&[$($refusal),*])
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_with_several_codes_shows_one_example_each() {
        let conflicts = Refusal::new(
            409,
            "conflicts",
            &[ErrorCode::InvalidState, ErrorCode::ConcurrencyConflict],
        );
        let documented = serde_json::to_value(responses(&[NOT_FOUND, conflicts])).unwrap();
        let not_found = &documented["404"]["content"]["application/problem+json"];
        assert_eq!(not_found["example"]["code"], "not_found");
        let examples = &documented["409"]["content"]["application/problem+json"]["examples"];
        assert_eq!(examples["invalid_state"]["value"]["code"], "invalid_state");
        assert_eq!(
            examples["concurrency_conflict"]["value"]["code"],
            "concurrency_conflict"
        );
    }
}
