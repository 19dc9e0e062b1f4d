//! Upstream keys encrypted at rest: the master key (`KEYPOOL_MASTER_KEY`),
//! the subkeys derived from it, sealing and opening a key's ciphertext, and
//! the fingerprint that finds duplicates without the plaintext.
//!
//! Choices, and why:
//! - **AES-256-GCM** (RustCrypto `aes-gcm`): an authenticated cipher, so a
//!   ciphertext that was altered, or copied to another row, fails to open
//!   instead of yielding garbage that would be sent upstream; hardware AES on
//!   every server CPU keypool targets.
//! - **A random 96-bit nonce per seal** (`OsRng`): the master key seals at
//!   most a few thousand keys over its life, far below the 2^32 messages
//!   where random GCM nonces start to risk a repeat.
//! - **The key id (and the master-key version) as associated data**: the
//!   ciphertext is bound to its row, so swapping two rows' ciphertexts (by
//!   hand, or by a bug) makes both fail to open.
//! - **Subkeys by HKDF-SHA256** (RFC 5869) with distinct labels: the
//!   encryption key, the fingerprint key and the version are independent of
//!   each other, so the fingerprint (stored beside the ciphertext) says
//!   nothing about the encryption key, and the version says nothing about
//!   either.
//! - **The fingerprint is HMAC-SHA256** of the key under its own subkey: a
//!   plain hash of an API key could be checked against a leaked key list by
//!   anyone holding the database; an HMAC needs the master key.
//! - **The version is 32 bits of HKDF output**: enough to tell the master
//!   keys of one deployment apart, and it lets a server holding two master
//!   keys (during a rotation) open each row with the key that sealed it.

#[cfg(test)]
mod tests;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::zeroize::Zeroizing;
use secrecy::SecretString;
use sha2::Sha256;

/// The variable holding the master key.
pub const MASTER_KEY_ENV: &str = "KEYPOOL_MASTER_KEY";
/// The variable holding the previous master key during a rotation (read only).
pub const MASTER_KEY_OLD_ENV: &str = "KEYPOOL_MASTER_KEY_OLD";

/// Bytes of nonce in front of each ciphertext.
const NONCE_LEN: usize = 12;

/// A master key that cannot be used. The message names the setting and
/// never holds its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterKeyError {
    #[error(
        "{setting} is not a master key: it must be 32 bytes written as base64 (standard or URL-safe) or as \
         64 hex digits (it has {chars} characters); `keypool keys gen-master-key` prints one"
    )]
    Malformed { setting: String, chars: usize },
    #[error(
        "{old} is set but {new} is not: during a rotation, set {new} to the new master key and {old} to the old one"
    )]
    OldWithoutNew { old: &'static str, new: &'static str },
}

/// Why a stored key could not be opened. Each message says which setting to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "key {id} is stored encrypted and no master key is set: set {MASTER_KEY_ENV} to the master key it \
         was encrypted with"
    )]
    NoMasterKey { id: i64 },
    #[error(
        "key {id} is encrypted under master key version {}, and {MASTER_KEY_ENV} is version {}: set \
         {MASTER_KEY_ENV} to the master key it was encrypted with (during a rotation, the old one in \
         {MASTER_KEY_OLD_ENV})",
        show_version(*version), show_version(*have)
    )]
    WrongMasterKey { id: i64, version: i64, have: i64 },
    #[error(
        "key {id} does not decrypt with {MASTER_KEY_ENV} (version {}): its stored ciphertext was altered \
         or copied from another row",
        show_version(*version)
    )]
    Corrupt { id: i64, version: i64 },
    #[error("the stored keys are encrypted: set {MASTER_KEY_ENV} to their master key to add more")]
    AddNeedsMasterKey,
}

/// A version as printed: 8 hex digits.
pub fn show_version(version: i64) -> String {
    format!("{version:08x}")
}

/// One master key's subkeys. Never printed: `Debug` shows the version only.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Aes256Gcm,
    fingerprint: Hmac<Sha256>,
    version: i64,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(version {})", show_version(self.version))
    }
}

impl PartialEq for MasterKey {
    fn eq(&self, other: &MasterKey) -> bool {
        self.version == other.version
    }
}

impl MasterKey {
    /// Parses 32 bytes written as 64 hex digits or as base64 (standard or
    /// URL-safe, padded or not); surrounding whitespace is ignored.
    /// `setting` names where the text came from, for the error.
    pub fn parse(text: &str, setting: &str) -> Result<MasterKey, MasterKeyError> {
        let malformed =
            || MasterKeyError::Malformed { setting: setting.to_owned(), chars: text.trim().chars().count() };
        let text = text.trim();
        let bytes: Zeroizing<Vec<u8>> = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Zeroizing::new(hex::decode(text).map_err(|_| malformed())?)
        } else {
            use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
            let decoded = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .ok_or_else(malformed)?;
            Zeroizing::new(decoded)
        };
        let bytes: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| malformed())?;
        MasterKey::from_bytes(bytes).ok_or_else(malformed)
    }

    /// The subkeys of 32 bytes of key material (None cannot happen: HKDF
    /// and HMAC take these lengths).
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<MasterKey> {
        let hkdf = hkdf::Hkdf::<Sha256>::new(None, bytes);
        let mut enc = Zeroizing::new([0u8; 32]);
        hkdf.expand(b"keypool/v1/key-encryption", enc.as_mut()).ok()?;
        let mut fp = Zeroizing::new([0u8; 32]);
        hkdf.expand(b"keypool/v1/key-fingerprint", fp.as_mut()).ok()?;
        let mut version = [0u8; 4];
        hkdf.expand(b"keypool/v1/master-key-version", &mut version).ok()?;
        // 0 means "stored in clear"; a master key whose version would be 0 takes 1.
        let version = i64::from(u32::from_be_bytes(version)).max(1);
        Some(MasterKey {
            cipher: Aes256Gcm::new_from_slice(enc.as_ref()).ok()?,
            fingerprint: <Hmac<Sha256> as Mac>::new_from_slice(fp.as_ref()).ok()?,
            version,
        })
    }

    /// A fresh master key, as `keys gen-master-key` prints it (base64).
    pub fn generate() -> SecretString {
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&Aes256Gcm::generate_key(&mut OsRng));
        SecretString::from(base64::engine::general_purpose::STANDARD.encode(bytes.as_ref()))
    }

    /// The short id stored with each ciphertext (never 0).
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The HMAC fingerprint of `secret`, in hex: equal keys have equal
    /// fingerprints under one master key, and nothing else can be learnt.
    pub fn fingerprint(&self, secret: &str) -> String {
        let mut mac = self.fingerprint.clone();
        mac.update(secret.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// `secret` sealed for row `id`: base64 of `nonce || ciphertext || tag`.
    pub fn seal(&self, id: i64, secret: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = associated_data(id, self.version);
        // Encryption fails only for messages over 64 GiB.
        let sealed = self.cipher.encrypt(&nonce, Payload { msg: secret.as_bytes(), aad: &aad }).unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Opens what [`MasterKey::seal`] made for row `id`.
    pub fn open(&self, id: i64, stored: &str) -> Result<SecretString, SealError> {
        let corrupt = || SealError::Corrupt { id, version: self.version };
        let bytes = base64::engine::general_purpose::STANDARD.decode(stored).map_err(|_| corrupt())?;
        if bytes.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let aad = associated_data(id, self.version);
        let plain = Zeroizing::new(
            self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &aad }).map_err(|_| corrupt())?,
        );
        let text = std::str::from_utf8(&plain).map_err(|_| corrupt())?;
        Ok(SecretString::from(text.to_owned()))
    }
}

/// What a ciphertext is bound to: its row and the master key's version.
fn associated_data(id: i64, version: i64) -> [u8; 28] {
    let mut aad = [0u8; 28];
    aad[..12].copy_from_slice(b"keypool key ");
    aad[12..20].copy_from_slice(&id.to_be_bytes());
    aad[20..28].copy_from_slice(&version.to_be_bytes());
    aad
}

/// The master keys a process holds: the current one (seals, fingerprints)
/// and, during a rotation, the old one (opens rows it sealed).
#[derive(Debug, Clone, PartialEq)]
pub struct Keyring {
    pub current: MasterKey,
    pub old: Option<MasterKey>,
}

impl Keyring {
    /// From `KEYPOOL_MASTER_KEY` and `KEYPOOL_MASTER_KEY_OLD`; None when
    /// neither is set (keys are then stored in clear). A set but empty
    /// variable is malformed, not unset: a deployment that meant to set it
    /// must not quietly run without.
    pub fn from_env() -> Result<Option<Keyring>, MasterKeyError> {
        let read = |name: &'static str| -> Result<Option<MasterKey>, MasterKeyError> {
            match std::env::var_os(name) {
                None => Ok(None),
                Some(value) => match value.to_str() {
                    Some(text) => MasterKey::parse(text, name).map(Some),
                    None => Err(MasterKeyError::Malformed { setting: name.to_owned(), chars: 0 }),
                },
            }
        };
        let current = read(MASTER_KEY_ENV)?;
        let old = read(MASTER_KEY_OLD_ENV)?;
        match (current, old) {
            (Some(current), old) => Ok(Some(Keyring { current, old })),
            (None, None) => Ok(None),
            (None, Some(_)) => Err(MasterKeyError::OldWithoutNew { old: MASTER_KEY_OLD_ENV, new: MASTER_KEY_ENV }),
        }
    }

    /// Only `current`.
    pub fn new(current: MasterKey) -> Keyring {
        Keyring { current, old: None }
    }

    /// The held key of `version`, if any.
    pub fn by_version(&self, version: i64) -> Option<&MasterKey> {
        std::iter::once(&self.current).chain(self.old.as_ref()).find(|k| k.version == version)
    }

    /// Opens row `id`'s secret stored under `version`.
    pub fn open(&self, id: i64, version: i64, stored: &str) -> Result<SecretString, SealError> {
        match self.by_version(version) {
            Some(key) => key.open(id, stored),
            None => Err(SealError::WrongMasterKey { id, version, have: self.current.version }),
        }
    }

    /// `secret`'s fingerprint under each held key (the current one first):
    /// during a rotation a duplicate may still carry the old one's.
    pub fn fingerprints(&self, secret: &str) -> Vec<String> {
        std::iter::once(&self.current).chain(self.old.as_ref()).map(|k| k.fingerprint(secret)).collect()
    }
}
