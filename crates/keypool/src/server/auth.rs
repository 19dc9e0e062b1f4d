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
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::MissingToken)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.hashes.read().unwrap_or_else(|p| p.into_inner()).contains(&digest) {
            Ok(())
        } else {
            Err(ApiError::InvalidToken)
        }
    }
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
}
