//! The bearer security scheme of the OpenAPI documents.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, OpenApi};

/// Name of the security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer";

/// Adds the `bearer` (HTTP, JWT) security scheme to `openapi` and requires it for
/// every operation, so Swagger UI shows an "Authorize" button and sends the token.
pub fn add_bearer_scheme(openapi: &mut OpenApi) {
    let components = openapi
        .components
        .get_or_insert_with(|| ComponentsBuilder::new().build());
    components.add_security_scheme(
        BEARER_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some(
                    "A JWT from the identity provider, or a development token from \
                     `<service> token --sub NAME --scope \"accounts:read accounts:write\"`",
                ))
                .build(),
        ),
    );
    let requirement = SecurityRequirement::new(BEARER_SCHEME, Vec::<String>::new());
    let security = openapi.security.get_or_insert_with(Vec::new);
    if !security.contains(&requirement) {
        security.push(requirement);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_offers_and_requires_a_bearer_jwt() {
        let mut openapi = OpenApi::default();
        add_bearer_scheme(&mut openapi);
        add_bearer_scheme(&mut openapi);
        let json = serde_json::to_value(&openapi).unwrap();
        assert_eq!(
            json["components"]["securitySchemes"]["bearer"],
            serde_json::json!({
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT from the identity provider, or a development token from \
                     `<service> token --sub NAME --scope \"accounts:read accounts:write\"`",
            })
        );
        assert_eq!(json["security"], serde_json::json!([{ "bearer": [] }]));
    }
}
