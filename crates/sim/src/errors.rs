//! OpenAI-shaped error answers. Gateways classify upstream failures by status *and* by
//! `error.code`/`error.type`, so the shapes here follow OpenAI's exactly.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// `{"error":{"message","type","param","code"}}` with the given status.
pub fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let body = error_body(message, kind, param, code);
    (status, axum::Json(body)).into_response()
}

pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// OpenAI shows only the first 3 and last 4 characters of a wrong key, so logs and
/// screenshots of the error do not leak the key.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 7 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

pub fn invalid_key(key: Option<&str>) -> Response {
    let message = match key {
        Some(k) => format!(
            "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
            mask_key(k)
        ),
        None => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".to_string(),
    };
    error_response(StatusCode::UNAUTHORIZED, &message, "invalid_request_error", None, Some("invalid_api_key"))
}

/// Azure OpenAI's 401 for a wrong or missing `api-key`.
pub fn azure_denied() -> Response {
    let message = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.";
    (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"code": "401", "message": message}}))).into_response()
}

pub fn insufficient_quota() -> Response {
    error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        None,
        Some("insufficient_quota"),
    )
}

pub fn server_error() -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
        Some("server_error"),
    )
}

pub fn bad_json() -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
        "invalid_request_error",
        None,
        None,
    )
}

pub fn missing_param(param: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        &format!("Missing required parameter: '{param}'."),
        "invalid_request_error",
        Some(param),
        Some("missing_required_parameter"),
    )
}

/// Raw status + body, for `Faults::status_override`: the body is sent byte for byte so
/// tests can check that the gateway passes errors through untouched.
pub fn raw(status: u16, body: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_openai() {
        assert_eq!(mask_key("sk-abcdefghxyz1"), "sk-********xyz1");
        assert_eq!(mask_key("short"), "*****");
    }
}
