//! The admin token: a secret that never prints, serializes only masked, and
//! is compared in constant time.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Fewest characters an admin token may have (`openssl rand -hex 16` gives 32).
pub const ADMIN_TOKEN_MIN_LEN: usize = 24;

/// The bearer token of the admin API (`admin_token`, `KEYPOOL_ADMIN_TOKEN`,
/// or the one `keypool serve` generated and stored as a SHA-256 digest).
/// `Debug` and `Serialize` show `***`; equality compares SHA-256 digests in
/// constant time.
#[derive(Clone)]
pub struct AdminToken {
    /// The token itself; `None` when only its digest is known (stored).
    secret: Option<SecretString>,
    /// SHA-256 of the token.
    digest: [u8; 32],
}

/// What a generated admin token starts with (`kpa_`, then 43 URL-safe
/// base64 characters: 256 random bits).
pub const ADMIN_TOKEN_PREFIX: &str = "kpa_";

/// A new random admin token: `kpa_` and 43 characters (256 bits).
pub fn generate_admin_token() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    format!("{ADMIN_TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl AdminToken {
    pub fn new(token: impl Into<String>) -> AdminToken {
        let token = token.into();
        let digest = Sha256::digest(token.as_bytes()).into();
        AdminToken { secret: Some(SecretString::from(token)), digest }
    }

    /// A token known only by its SHA-256 digest (64 hex digits, as
    /// [`AdminToken::sha256_hex`] gives it); `None` when `hex` is not one.
    pub fn from_sha256_hex(hex_digest: &str) -> Option<AdminToken> {
        let digest: [u8; 32] = hex::decode(hex_digest.trim()).ok()?.try_into().ok()?;
        Some(AdminToken { secret: None, digest })
    }

    /// The token's SHA-256 digest, 64 lowercase hex digits (what is stored).
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.digest)
    }

    /// The token itself, to send it as a client (the CLI asking a running
    /// server); never to print. `None` for a token known only by its digest.
    pub fn expose(&self) -> Option<&str> {
        self.secret.as_ref().map(|s| s.expose_secret())
    }

    /// Whether `presented` is this token, in time independent of where they
    /// differ (it is hashed first, so not even the length leaks).
    pub fn matches(&self, presented: &str) -> bool {
        let theirs = Sha256::digest(presented.as_bytes());
        self.digest.ct_eq(theirs.as_slice()).into()
    }

    /// Whether this token's SHA-256 is `theirs`, in constant time.
    pub fn digest_is(&self, theirs: &[u8; 32]) -> bool {
        self.digest.ct_eq(theirs).into()
    }

    /// A short public name for the token, for the audit log: the first 8 hex
    /// digits of its SHA-256 (it identifies which token acted, and cannot be
    /// used to act).
    pub fn fingerprint(&self) -> String {
        format!("admin:{}", &hex::encode(self.digest)[..8])
    }

    /// Why this token is too weak to accept, if it is.
    pub(super) fn weakness(&self) -> Option<String> {
        let token = self.secret.as_ref()?.expose_secret();
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
        self.digest.ct_eq(&other.digest).into()
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
