#![allow(clippy::unwrap_used)]
use super::*;
use http::HeaderName;

#[test]
fn joins_paths_under_a_relay_prefix() {
    let up = Upstream::new("https://relay.example.com/proxy/v1", None, Duration::from_secs(1)).unwrap();
    assert_eq!(
        up.url_for("chat/completions", Some("a=1&b=2")).unwrap().to_string(),
        "https://relay.example.com/proxy/v1/chat/completions?a=1&b=2"
    );
    let up = Upstream::new("https://api.openai.com/v1/", None, Duration::from_secs(1)).unwrap();
    assert_eq!(up.url_for("/models/gpt-4o", None).unwrap().to_string(), "https://api.openai.com/v1/models/gpt-4o");
}

#[test]
fn go_durations() {
    assert_eq!(parse_go_duration("859ms"), Some(Duration::from_millis(859)));
    assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
    assert_eq!(parse_go_duration("1h2m3.5s"), Some(Duration::from_secs_f64(3723.5)));
    assert_eq!(parse_go_duration("20s"), Some(Duration::from_secs(20)));
    assert_eq!(parse_go_duration("abc"), None);
    assert_eq!(parse_go_duration("5"), None);
}

#[test]
fn request_headers_drop_credentials_and_hop_by_hop() {
    let mut h = HeaderMap::new();
    h.insert("connection", "keep-alive, x-private".parse().unwrap());
    h.insert("x-private", "1".parse().unwrap());
    h.insert("authorization", "Bearer kp-x".parse().unwrap());
    h.insert("openai-organization", "org-1".parse().unwrap());
    let kept: Vec<_> =
        h.keys().filter(|n| !headers::is_dropped_request_header(n, &headers::Listed::of(&h), true)).collect();
    assert_eq!(kept, vec!["openai-organization"]);
    let kept: Vec<_> =
        h.keys().filter(|n| !headers::is_dropped_request_header(n, &headers::Listed::of(&h), false)).collect();
    assert!(kept.is_empty(), "account headers are dropped by default: {kept:?}");
}

#[test]
fn every_header_that_can_carry_a_credential_is_dropped() {
    let secret = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "apikey",
        "x-apikey",
        "x-auth-token",
        "x-access-token",
        "x-amz-security-token",
        "x-session-id",
        "x-client-secret",
        "ocp-apim-subscription-key",
        "x-portkey-api-key",
        "anthropic-api-key",
        "X_API_KEY",
    ];
    let mut h = HeaderMap::new();
    for name in secret {
        h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), "kp-secret".parse().unwrap());
    }
    let passed = ["idempotency-key", "x-stainless-lang", "openai-beta", "content-type", "user-agent", "x-request-id"];
    for name in passed {
        h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), "1".parse().unwrap());
    }
    let kept: Vec<_> =
        h.keys().filter(|n| !headers::is_dropped_request_header(n, &headers::Listed::of(&h), false)).collect();
    assert_eq!(kept, passed.to_vec());
}

#[test]
fn hostile_durations_never_panic() {
    assert_eq!(parse_go_duration("99999999999999999999h"), Some(Duration::from_secs(86_400)));
    assert_eq!(parse_go_duration("-5s"), None);
}

#[test]
fn paths_cannot_climb_out_of_the_base() {
    let up = Upstream::new("https://relay.example.com/proxy/v1", None, Duration::from_secs(1)).unwrap();
    assert!(up.url_for("../../echo", None).is_none());
    assert!(up.url_for("%2e%2e/%2E%2E/echo", None).is_none());
    assert_eq!(
        up.url_for("models/../chat/completions", None).unwrap().to_string(),
        "https://relay.example.com/proxy/v1/chat/completions"
    );
    assert_eq!(
        up.url_for("models/gpt-4.1", None).unwrap().to_string(),
        "https://relay.example.com/proxy/v1/models/gpt-4.1",
        "a dot inside a segment is not a dot segment"
    );
}

#[test]
fn backslashes_and_unusual_bytes_take_the_careful_path() {
    let up = Upstream::new("https://relay.example.com/proxy/v1#frag", None, Duration::from_secs(1)).unwrap();
    assert!(up.url_for("..\\..\\echo", None).is_none(), "a backslash is a slash to URL parsers");
    assert!(up.url_for("models\\..\\..\\..\\x", None).is_none());
    assert_eq!(up.url_for("a\\b", None).unwrap().to_string(), "https://relay.example.com/proxy/v1/a/b");
    assert_eq!(
        up.url_for("files/résumé", Some("q=\"x\"")).unwrap().to_string(),
        "https://relay.example.com/proxy/v1/files/r%C3%A9sum%C3%A9?q=%22x%22"
    );
    let up = Upstream::new("https://relay.example.com/v1?secret=1", None, Duration::from_secs(1)).unwrap();
    assert_eq!(
        up.url_for("models", Some("limit=2")).unwrap().to_string(),
        "https://relay.example.com/v1/models?limit=2",
        "the caller's query replaces the base's"
    );
}

#[test]
fn proxy_variables_in_the_environment_are_noticed() {
    let none = |_: &str| None;
    assert!(!proxy_in_env(none));
    assert!(proxy_in_env(|n: &str| (n == "https_proxy").then(|| "http://p:3128".into())));
    assert!(proxy_in_env(|n: &str| (n == "ALL_PROXY").then(|| "socks5://p:1080".into())));
    assert!(!proxy_in_env(|n: &str| (n == "HTTP_PROXY").then(|| "".into())), "empty means unset");
}

#[test]
fn failures_are_described_without_addresses() {
    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused by relay.secret.example:443");
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);
    assert_eq!(describe(&Outer(refused)), "client error (Connect): connection refused");
}

#[test]
fn answer_headers_drop_hop_by_hop_ones_and_those_connection_lists() {
    let mut from = HeaderMap::new();
    from.insert("connection", "close, X-Hop".parse().unwrap());
    from.insert("x-hop", "1".parse().unwrap());
    from.insert("transfer-encoding", "chunked".parse().unwrap());
    from.insert("content-length", "12".parse().unwrap());
    from.insert("x-request-id", "req-1".parse().unwrap());
    let mut to = HeaderMap::new();
    headers::copy_response_headers(&from, &mut to);
    assert_eq!(to.keys().collect::<Vec<_>>(), vec!["x-request-id"]);
    // Without a Connection header, every end-to-end header passes.
    from.remove("connection");
    let mut to = HeaderMap::new();
    headers::copy_response_headers(&from, &mut to);
    let mut kept: Vec<_> = to.keys().map(|n| n.as_str()).collect();
    kept.sort_unstable();
    assert_eq!(kept, vec!["x-hop", "x-request-id"]);
}

fn azure(fields: serde_json::Value) -> Upstream {
    let mut fields = fields;
    fields["name"] = serde_json::json!("azure");
    fields["kind"] = serde_json::json!("azure");
    let u: crate::config::UpstreamConfig = serde_json::from_value(fields).unwrap();
    Upstream::for_upstream(&u, &crate::config::Config::default()).unwrap()
}

#[test]
fn azure_calls_go_to_deployment_paths_with_the_api_version() {
    let up = azure(serde_json::json!({
        "base_url": "https://res.openai.azure.com",
        "api_version": "2024-10-21",
        "deployments": {"gpt-4o*": "prod", "gpt-4o-mini": "mini"},
    }));
    let url = |rest, query, model| up.url_to(rest, query, model).unwrap().to_string();
    assert_eq!(
        url("chat/completions", None, Some("gpt-4o-mini")),
        "https://res.openai.azure.com/openai/deployments/mini/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(
        url("embeddings", Some("x=1"), Some("text-embedding-3-small")),
        "https://res.openai.azure.com/openai/deployments/text-embedding-3-small/embeddings?x=1&api-version=2024-10-21"
    );
    // Not a deployment's operation, or no model: under /openai/; a caller's own version is kept.
    assert_eq!(url("files", None, None), "https://res.openai.azure.com/openai/files?api-version=2024-10-21");
    assert_eq!(
        url("responses", Some("api-version=preview"), Some("gpt-4o")),
        "https://res.openai.azure.com/openai/responses?api-version=preview"
    );
    assert_eq!(up.body_model("gpt-4o"), None, "deployment paths leave the body alone");
    // A trailing slash still names the operation; a caller's version in any case is kept.
    assert_eq!(
        url("chat/completions/", Some("API-Version=x"), Some("gpt-3.5-turbo")),
        "https://res.openai.azure.com/openai/deployments/gpt-3.5-turbo/chat/completions/?API-Version=x"
    );
    // A caller's model never leaves its segment: one that is not a plain name has no URL.
    for model in ["../../x", "..", "a b", "a/b", "%2e%2e", "a?b", ""] {
        assert!(up.url_to("chat/completions", None, Some(model)).is_none(), "{model:?}");
        assert!(!up.model_fits_url(model), "{model:?}");
    }
    assert!(up.model_fits_url("gpt-4o"));
    let (name, value) = up.key_header(&SecretString::from("azure-secret")).unwrap();
    assert_eq!((name.as_str(), value.to_str().unwrap(), value.is_sensitive()), ("api-key", "azure-secret", true));
    // The v1 API: paths as for OpenAI, the deployment as the body's model.
    let v1 = azure(serde_json::json!({
        "base_url": "https://res.openai.azure.com/openai/v1",
        "deployments": {"gpt-4o-mini": "mini"},
    }));
    assert_eq!(
        v1.url_to("chat/completions", None, Some("gpt-4o-mini")).unwrap().to_string(),
        "https://res.openai.azure.com/openai/v1/chat/completions"
    );
    assert_eq!(v1.body_model("gpt-4o-mini"), Some("mini"));
    assert_eq!(v1.body_model("o3"), None);
}
