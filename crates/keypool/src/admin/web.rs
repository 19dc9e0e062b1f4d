//! The dashboard: a static page (HTML, CSS, vanilla JavaScript) embedded in
//! the binary at build time and served at `/admin`, which reads and changes
//! everything through the admin REST API with the token the operator types
//! in (kept in the tab's sessionStorage).
//!
//! The page and its assets are not behind the admin token (the sign-in form
//! must load); they hold no data. Every answer carries a strict
//! Content-Security-Policy: only this origin's scripts, styles and API.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The policy: nothing but this origin's own files and API; no inline
/// script or style, no framing, no form posts, no `<base>`.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

const INDEX: &str = include_str!("../../web/index.html");

/// The assets under `/admin/assets/`: (file name, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../web/app.js")),
    ("app.css", "text/css; charset=utf-8", include_str!("../../web/app.css")),
    ("i18n.js", "text/javascript; charset=utf-8", include_str!("../../web/i18n.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_str!("../../web/charts.js")),
    ("favicon.svg", "image/svg+xml", include_str!("../../web/favicon.svg")),
];

/// `GET /admin`, `/admin/` and `/admin/assets/{file}`, for any router state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/admin", get(index)).route("/admin/", get(index)).route("/admin/assets/{file}", get(asset))
}

/// The headers every dashboard answer carries.
fn with_headers(status: StatusCode, content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The assets change with the binary: revalidate rather than go stale
    // across an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

async fn index() -> Response {
    with_headers(StatusCode::OK, "text/html; charset=utf-8", INDEX, "no-cache")
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => with_headers(StatusCode::OK, content_type, body, "no-cache"),
        None => {
            with_headers(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "no such dashboard file\n", "no-store")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_only_this_origin() {
        assert!(CSP.contains("default-src 'none'"));
        assert!(CSP.contains("script-src 'self';"));
        assert!(!CSP.contains("unsafe"));
    }

    #[test]
    fn the_page_loads_only_embedded_assets() {
        for (name, _, body) in ASSETS {
            assert!(!body.is_empty(), "{name} is empty");
        }
        for needed in ["/admin/assets/app.js", "/admin/assets/app.css"] {
            assert!(INDEX.contains(needed), "index.html does not load {needed}");
        }
    }
}
