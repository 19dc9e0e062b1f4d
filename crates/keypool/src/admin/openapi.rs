//! The admin API's OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` annotations and the answer types; served at
//! `/admin/api/openapi.json` and committed as `docs/admin-openapi.json`
//! (tests/admin.rs fails when they differ; `KEYPOOL_UPDATE_OPENAPI=1`
//! rewrites the committed copy).

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use super::{audit, keys, overview, requests, session, stats, tokens, upstreams};

/// OpenAI's error shape, as every admin error is sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    /// `invalid_request_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The field or parameter the error is about.
    pub param: Option<String>,
    /// `invalid_value`, `invalid_json`, `invalid_admin_token`, `read_only_token`, `not_found`, …
    pub code: String,
}

#[derive(IntoResponses)]
#[response(status = 400, description = "Bad input: `param` names the field")]
#[allow(dead_code)]
pub struct BadRequest(ErrorBody);

#[derive(IntoResponses)]
#[response(status = 401, description = "Missing or wrong admin token")]
#[allow(dead_code)]
pub struct Unauthorized(ErrorBody);

#[derive(IntoResponses)]
#[response(status = 404, description = "No such id")]
#[allow(dead_code)]
pub struct NotFound(ErrorBody);

#[derive(IntoResponses)]
#[response(status = 409, description = "Already exists")]
#[allow(dead_code)]
pub struct Conflict(ErrorBody);

/// Adds the bearer scheme every route requires.
struct AdminBearer;

impl Modify for AdminBearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The `admin_token` setting (KEYPOOL_ADMIN_TOKEN), else the token `keypool serve` printed at its first start or `keypool admin token` set, or one `keypool admin tokens create` made. A read-only one gets 403 `read_only_token` on every method but GET and HEAD; past `admin.sign_in_attempts_per_minute` wrong tokens, an address gets 429 with `Retry-After`."))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "keypool admin API", description = "Keys, gateway tokens, the request log, statistics and the audit log of a keypool gateway."),
    paths(
        serve, session::session,
        overview::overview,
        upstreams::list, upstreams::test,
        keys::list, keys::add, keys::import, keys::one, keys::edit, keys::remove,
        keys::enable, keys::disable, keys::reset,
        tokens::list, tokens::create, tokens::edit, tokens::revoke, tokens::regenerate,
        requests::list, requests::one, requests::export,
        stats::by_subject, stats::series,
        audit::list,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&AdminBearer),
    security(("admin_token" = [])),
    tags(
        (name = "overview", description = "The dashboard's first screen: keys by state, load, capacity, the last minutes and spend per day"),
        (name = "upstreams", description = "The upstream: health, last hour, and a test request"),
        (name = "keys", description = "Upstream keys and their live state"),
        (name = "tokens", description = "Gateway tokens"),
        (name = "requests", description = "The request log"),
        (name = "stats", description = "Requests, errors, tokens, spend and latency per key, token and model, from the rollups"),
        (name = "audit", description = "Changes made through this API"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

/// The document as served and committed: pretty JSON with a final newline.
pub fn document() -> String {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut text = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".into());
        text.push('\n');
        text
    })
    .clone()
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/admin/api/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        Unauthorized))]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}
