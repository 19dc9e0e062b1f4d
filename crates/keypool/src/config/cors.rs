//! The `[cors]` section: which web pages on other origins may call keypool
//! from a browser. Off unless configured: no origin is named, no CORS
//! header is sent, and browsers keep other origins' scripts out.

use serde::{Deserialize, Serialize};

/// Origins allowed to call keypool from a browser script (a chat front-end
/// such as NextChat or LobeChat served from another address). Each is an
/// origin as a browser sends it: `https://chat.example.com` (scheme, host
/// and port if not the default; no path), or `*` for any.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed on the OpenAI-compatible API (`/v1/*`).
    pub origins: Vec<String>,
    /// Origins allowed on the admin API (`/admin/api/*`): for a dashboard
    /// hosted elsewhere. `*` is refused here: it would let any page a
    /// signed-in operator visits try the admin API.
    pub admin_origins: Vec<String>,
}

impl CorsConfig {
    /// Why the lists cannot be used, naming the setting.
    pub(super) fn problem(&self) -> Option<(&'static str, String)> {
        if self.admin_origins.iter().any(|o| o == "*") {
            return Some(("cors.admin_origins", "`*` is not allowed here; name each origin".into()));
        }
        for (setting, list) in [("cors.origins", &self.origins), ("cors.admin_origins", &self.admin_origins)] {
            for origin in list {
                if origin == "*" {
                    if list.len() > 1 {
                        return Some((setting, "`*` already allows every origin; list it alone".into()));
                    }
                    continue;
                }
                if let Some(reason) = origin_problem(origin) {
                    return Some((setting, format!("{origin:?} {reason}")));
                }
            }
        }
        None
    }
}

/// Why `origin` is not a browser origin (`scheme://host[:port]`).
fn origin_problem(origin: &str) -> Option<&'static str> {
    let Ok(url) = reqwest::Url::parse(origin) else {
        return Some("is not an origin such as https://chat.example.com");
    };
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Some("must be http:// or https:// with a host");
    }
    if url.path() != "/" || origin.ends_with('/') || url.query().is_some() || url.fragment().is_some() {
        return Some("must have no path, not even a trailing `/` (browsers send the origin without one)");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Some("must not carry a user name or password");
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn of(origins: &[&str], admin: &[&str]) -> CorsConfig {
        CorsConfig {
            origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            admin_origins: admin.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn origins_are_checked_and_star_is_refused_for_the_admin_api() {
        assert_eq!(of(&[], &[]).problem(), None);
        assert_eq!(of(&["*"], &["https://ops.example.com"]).problem(), None);
        assert_eq!(of(&["http://localhost:3000", "https://chat.example.com"], &[]).problem(), None);
        assert_eq!(of(&[], &["*"]).problem().unwrap().0, "cors.admin_origins");
        assert_eq!(of(&["*", "https://a.example"], &[]).problem().unwrap().0, "cors.origins");
        for bad in ["chat.example.com", "https://chat.example.com/", "https://chat.example.com/app", "ftp://x.example"]
        {
            let (setting, reason) = of(&[bad], &[]).problem().unwrap();
            assert_eq!(setting, "cors.origins");
            assert!(reason.contains(bad), "{reason}");
        }
    }
}
