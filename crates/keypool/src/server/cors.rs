//! CORS for browser pages on other origins (`[cors]`): off unless origins
//! are configured, in which case tower-http's layer answers preflights and
//! adds the `Access-Control-*` headers for the origins named, and for no
//! other.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// The response headers a page's script may read: the request's id, the
/// rate-limit view and when to retry (OpenAI's names, and keypool's own).
const EXPOSED: &[&str] = &[
    "x-request-id",
    "x-keypool-request-id",
    "x-keypool-attempts",
    "x-keypool-queue-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "retry-after",
    "openai-processing-ms",
];

/// The layer for `origins` (validated at config load: `*` alone, or
/// `scheme://host[:port]` each); `None` for none, so an unconfigured
/// gateway adds nothing to its requests' path.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let exposed: Vec<HeaderName> = EXPOSED.iter().map(|h| HeaderName::from_static(h)).collect();
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            // SDKs send their own headers (`x-stainless-*`, `openai-beta`):
            // whatever a preflight asks for is allowed; the token still decides.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(ExposeHeaders::list(exposed.into_iter().chain([header::CONTENT_TYPE])))
            .max_age(PREFLIGHT_MAX_AGE),
    )
}
