//! The admin token: a secret that never prints, serializes only masked, and
//! is compared in constant time.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Fewest characters an admin token may have (`openssl rand -hex 16` gives 32).
pub const ADMIN_TOKEN_MIN_LEN: usize = 24;

/// The bearer token of the admin API (`admin_token`, `KEYPOOL_ADMIN_TOKEN`).
/// `Debug` and `Serialize` show `***`; equality compares SHA-256 digests in
/// constant time.
#[derive(Clone)]
pub struct AdminToken(SecretString);

impl AdminToken {
    pub fn new(token: impl Into<String>) -> AdminToken {
        AdminToken(SecretString::from(token.into()))
    }

    /// The token itself, to send it as a client (the CLI asking a running
    /// server); never to print.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether `presented` is this token, in time independent of where they
    /// differ (both are hashed first, so not even the length leaks).
    pub fn matches(&self, presented: &str) -> bool {
        let ours = Sha256::digest(self.0.expose_secret().as_bytes());
        let theirs = Sha256::digest(presented.as_bytes());
        ours.ct_eq(&theirs).into()
    }

    /// A short public name for the token, for the audit log: the first 8 hex
    /// digits of its SHA-256 (it identifies which token acted, and cannot be
    /// used to act).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.expose_secret().as_bytes());
        format!("admin:{}", &hex::encode(digest)[..8])
    }

    /// Why this token is too weak to accept, if it is.
    pub(super) fn weakness(&self) -> Option<String> {
        let token = self.0.expose_secret();
        if token.chars().count() < ADMIN_TOKEN_MIN_LEN {
            return Some(format!("must be at least {ADMIN_TOKEN_MIN_LEN} characters (e.g. `openssl rand -hex 24`)"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Some("must be printable ASCII without spaces (it is sent as a header)".into());
        }
        None
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl PartialEq for AdminToken {
    fn eq(&self, other: &AdminToken) -> bool {
        self.matches(other.0.expose_secret())
    }
}

impl Serialize for AdminToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for AdminToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AdminToken, D::Error> {
        String::deserialize(d).map(AdminToken::new)
    }
}
