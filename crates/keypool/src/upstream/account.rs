//! Per-key account headers: a key may belong to several organizations or
//! projects, and OpenAI then charges the default one unless the request
//! names another (`OpenAI-Organization`, `OpenAI-Project`; see
//! /work/shared/openai-semantics.md "Requests").

use http::{HeaderMap, HeaderName, HeaderValue};

static ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
static PROJECT: HeaderName = HeaderName::from_static("openai-project");

/// The account headers one key is sent with; empty for most keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    organization: Option<HeaderValue>,
    project: Option<HeaderValue>,
}

impl Account {
    /// Headers from the stored settings. A value that cannot be a header
    /// (the CLI refuses those) is left out rather than failing every request.
    pub fn new(organization: Option<&str>, project: Option<&str>) -> Account {
        let value = |v: Option<&str>| v.filter(|s| !s.is_empty()).and_then(|s| HeaderValue::from_str(s).ok());
        Account { organization: value(organization), project: value(project) }
    }

    /// Sets the headers on a request going upstream, replacing any already there.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(v) = &self.organization {
            headers.insert(ORGANIZATION.clone(), v.clone());
        }
        if let Some(v) = &self.project {
            headers.insert(PROJECT.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replaces_what_is_there_and_leaves_out_what_is_unset() {
        let mut h = HeaderMap::new();
        h.insert("openai-organization", HeaderValue::from_static("org-caller"));
        Account::new(Some("org-key"), None).apply(&mut h);
        assert_eq!(h.get("openai-organization").unwrap(), "org-key");
        assert!(h.get("openai-project").is_none());
        assert_eq!(Account::new(Some("bad\nvalue"), Some("")), Account::default());
    }
}
