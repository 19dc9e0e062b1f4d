//! The admin token check: a bearer token compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AdminError, AdminState};

/// Lets the request through when it carries the admin token; 401 otherwise.
pub async fn require_token(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    match presented {
        None | Some("") => AdminError::MissingToken.into_response(),
        Some(token) if !state.token.matches(token) => AdminError::InvalidToken.into_response(),
        Some(_) => next.run(req).await,
    }
}
