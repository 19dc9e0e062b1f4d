//! Gateway tokens: who may use the pool. Only SHA-256 hashes are held.

use std::collections::HashSet;
use std::sync::RwLock;

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Prefix of every gateway token, so they are easy to tell from upstream keys.
pub const TOKEN_PREFIX: &str = "kp-";

/// The hashes of every live (unrevoked) token.
#[derive(Debug, Default)]
pub struct TokenSet {
    hashes: RwLock<HashSet<[u8; 32]>>,
}

/// SHA-256 of a token, as hex (how the store keeps it).
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `kp-` and 48 hex characters (192 bits).
pub fn generate_token() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

impl TokenSet {
    /// Replaces the live set with these stored hex hashes (malformed ones are skipped).
    pub fn replace<'a>(&self, hex_hashes: impl IntoIterator<Item = &'a str>) {
        let set = hex_hashes.into_iter().filter_map(|h| hex::decode(h).ok()?.try_into().ok()).collect();
        *self.hashes.write().unwrap_or_else(|p| p.into_inner()) = set;
    }

    /// Accepts the request when its bearer token is live.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or(ApiError::MissingToken)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.hashes.read().unwrap_or_else(|p| p.into_inner()).contains(&digest) {
            Ok(())
        } else {
            Err(ApiError::InvalidToken)
        }
    }
}

/// The credentials of a `Bearer` Authorization value. The scheme is
/// case-insensitive and may be followed by any run of spaces or tabs (RFC 9110
/// §11.1, §11.4).
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    let token = rest.trim_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_live_tokens_pass() {
        let set = TokenSet::default();
        let token = generate_token();
        assert!(token.starts_with("kp-") && token.len() == 51);
        let hash = hash_token(&token);
        set.replace([hash.as_str()]);
        let mut h = HeaderMap::new();
        assert!(matches!(set.check(&h), Err(ApiError::MissingToken)));
        h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        assert!(set.check(&h).is_ok());
        set.replace([]);
        assert!(matches!(set.check(&h), Err(ApiError::InvalidToken)));
    }

    #[test]
    fn the_scheme_is_matched_case_insensitively() {
        for value in ["Bearer kp-1", "bearer kp-1", "BEARER kp-1", "bEaReR  kp-1", "Bearer\tkp-1 "] {
            assert_eq!(bearer_token(value), Some("kp-1"), "{value:?}");
        }
        for value in ["Bearer", "Bearer ", "Basic kp-1", "Bearerkp-1", "kp-1"] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
