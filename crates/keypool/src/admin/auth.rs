//! The admin token check: a bearer token compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{AdminError, AdminState, LiveToken};

/// Lets the request through when it carries the admin token; 401 otherwise.
pub async fn require_token(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    match check(&state.token, req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Whether `headers` carry the admin token in force as
/// `Authorization: Bearer …` ([`crate::server::bearer_token`]'s rule).
///
/// # Errors
/// [`AdminError::MissingToken`] without a bearer token,
/// [`AdminError::InvalidToken`] with another one.
pub fn check(token: &LiveToken, headers: &HeaderMap) -> Result<(), AdminError> {
    let presented =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::server::bearer_token);
    match presented {
        None => Err(AdminError::MissingToken),
        Some(t) if !token.matches(t) => Err(AdminError::InvalidToken),
        Some(_) => Ok(()),
    }
}
