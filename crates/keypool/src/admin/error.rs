//! The admin API's errors, and the one place they become OpenAI's JSON
//! shape (`{"error":{"message","type","param","code"}}`); plus the
//! extractors that turn bad input into a 400 naming the field.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::store::StoreError;

/// Everything an admin request can fail with. Who caused it decides the
/// status: the caller (401, 400, 404, 409) or the gateway (500, 503).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("Missing admin token. Send `Authorization: Bearer <admin token>`: the `admin_token` setting (KEYPOOL_ADMIN_TOKEN), else the one `keypool serve` printed at its first start (`keypool admin token` sets a new one).")]
    MissingToken,
    #[error("Invalid admin token. Send the `admin_token` setting (KEYPOOL_ADMIN_TOKEN), else the one `keypool serve` printed at its first start, as `Authorization: Bearer …` (`keypool admin token` sets a new one).")]
    InvalidToken,
    /// Too many wrong admin tokens from the caller's address this minute
    /// (`admin.sign_in_attempts_per_minute`).
    #[error("Too many wrong admin tokens from your address; try again in {} s.", retry_after.as_secs().max(1))]
    TooManySignIns { retry_after: std::time::Duration },
    #[error(
        "This admin token is read-only: it can read the admin API but not change anything. Use a full admin token."
    )]
    ReadOnly,
    /// A value the caller sent is wrong; `param` names the field.
    #[error("Invalid value for '{param}': {reason}")]
    InvalidField { param: String, reason: String },
    /// The body is not JSON at all (no field to name).
    #[error("We could not parse the JSON body of your request: {0}")]
    BadJson(String),
    #[error("No {what} with id {id}.")]
    NotFound { what: &'static str, id: i64 },
    #[error("No upstream named {0:?}: see /admin/api/upstreams.")]
    UnknownUpstream(String),
    #[error("Unknown admin path {0}: see /admin/api/openapi.json for the routes.")]
    UnknownPath(String),
    #[error("{method} is not allowed on {path}: see /admin/api/openapi.json for the routes.")]
    MethodNotAllowed { method: String, path: String },
    #[error("This key is already in the pool as key {id}.")]
    DuplicateKey { id: i64 },
    #[error("A token named {0:?} already exists; choose another name.")]
    TokenNameTaken(String),
    /// The store failed: the gateway's fault, worth a retry.
    #[error("The database failed: {0}")]
    Store(StoreError),
    #[error("Internal error: {0}.")]
    Internal(&'static str),
}

impl AdminError {
    /// A 400 naming `param`.
    pub fn field(param: impl Into<String>, reason: impl Into<String>) -> AdminError {
        AdminError::InvalidField { param: param.into(), reason: reason.into() }
    }

    fn status_type_code(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            AdminError::MissingToken | AdminError::InvalidToken => {
                (StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_admin_token")
            }
            AdminError::TooManySignIns { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "invalid_request_error", "too_many_sign_in_attempts")
            }
            AdminError::ReadOnly => (StatusCode::FORBIDDEN, "invalid_request_error", "read_only_token"),
            AdminError::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value"),
            AdminError::BadJson(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json"),
            AdminError::NotFound { .. } => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            AdminError::UnknownUpstream(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            AdminError::UnknownPath(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "unknown_url"),
            AdminError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method_not_allowed")
            }
            AdminError::DuplicateKey { .. } => (StatusCode::CONFLICT, "invalid_request_error", "duplicate_key"),
            AdminError::TokenNameTaken(_) => (StatusCode::CONFLICT, "invalid_request_error", "duplicate_name"),
            AdminError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "database_error"),
            AdminError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error"),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            AdminError::InvalidField { param, .. } => Some(param),
            AdminError::TokenNameTaken(_) => Some("name"),
            AdminError::DuplicateKey { .. } => Some("key"),
            AdminError::NotFound { .. } => Some("id"),
            AdminError::UnknownUpstream(_) => Some("name"),
            _ => None,
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> AdminError {
        match e {
            StoreError::NotFound { what, id } => AdminError::NotFound { what, id },
            StoreError::TokenNameTaken(name) => AdminError::TokenNameTaken(name),
            other => AdminError::Store(other),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, kind, code) = self.status_type_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "admin request failed");
        }
        let body = serde_json::json!({
            "error": { "message": self.to_string(), "type": kind, "param": self.param(), "code": code }
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let AdminError::TooManySignIns { retry_after } = self {
            // Whole seconds, rounded up, as `Retry-After` takes them (RFC 9110 §10.2.3).
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
        }
        response
    }
}

/// A JSON body parsed into `T`; a failure names the field it is about.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Body<T>, AdminError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| AdminError::BadJson(format!("could not read the body: {}", e.body_text())))?;
        parse_json(&bytes).map(Body)
    }
}

/// Parses `bytes` as `T`, naming the field of the first error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AdminError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = match parsed {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let reason = inner.to_string();
            if inner.is_syntax() || inner.is_eof() {
                return Err(AdminError::BadJson(reason));
            }
            // Unknown and missing fields are named in the message, not the path.
            let named = between_backticks(&reason);
            let param = match (named, path.as_str()) {
                (Some(field), "." | "") => field.to_owned(),
                // An unknown field's path already ends with it; a missing
                // one's is its parent's.
                (Some(field), path) if path.ends_with(field) => path.to_owned(),
                (Some(field), parent) if reason.starts_with("missing field") => format!("{parent}.{field}"),
                (_, "." | "") => return Err(AdminError::BadJson(reason)),
                (_, path) => path.to_owned(),
            };
            return Err(AdminError::InvalidField { param, reason });
        }
    };
    de.end().map_err(|e| AdminError::BadJson(e.to_string()))?;
    Ok(value)
}

fn between_backticks(s: &str) -> Option<&str> {
    let start = s.find('`')? + 1;
    let len = s[start..].find('`')?;
    Some(&s[start..start + len])
}

/// A path's `{id}`: an integer, else a 400 naming `id`.
pub struct Id(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for Id {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Id, AdminError> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| AdminError::field("id", e.body_text()))?;
        raw.parse().map(Id).map_err(|_| AdminError::field("id", format!("{raw:?} is not an integer id")))
    }
}

/// A query string's parameters, read one by one by name, so each error
/// names its parameter; [`Query::finish`] refuses the ones no one read.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Query, AdminError> {
        let raw = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|e| AdminError::field("query", format!("the query string does not parse: {e}")))?;
        Ok(Query { pairs })
    }
}

impl Query {
    /// The parameter's text, once (`None` when absent).
    pub fn text(&mut self, name: &str) -> Result<Option<String>, AdminError> {
        let mut found = None;
        let mut i = 0;
        while i < self.pairs.len() {
            if self.pairs[i].0 == name {
                if found.is_some() {
                    return Err(AdminError::field(name, "given more than once"));
                }
                found = Some(self.pairs.remove(i).1);
            } else {
                i += 1;
            }
        }
        if found.as_deref().is_some_and(|t| t.contains('\0')) {
            return Err(AdminError::field(name, "must not contain a NUL character"));
        }
        Ok(found)
    }

    /// The parameter as an integer in `min..=max`.
    pub fn int(&mut self, name: &str, min: i64, max: i64) -> Result<Option<i64>, AdminError> {
        let Some(text) = self.text(name)? else { return Ok(None) };
        let n: i64 = text.parse().map_err(|_| AdminError::field(name, format!("{text:?} is not an integer")))?;
        if !(min..=max).contains(&n) {
            return Err(AdminError::field(name, format!("{n} is out of range ({min} to {max})")));
        }
        Ok(Some(n))
    }

    /// Refuses parameters no one asked for (a typo would otherwise filter nothing).
    pub fn finish(self) -> Result<(), AdminError> {
        match self.pairs.into_iter().next() {
            Some((name, _)) => Err(AdminError::field(name, "unknown parameter")),
            None => Ok(()),
        }
    }
}
