#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use secrecy::ExposeSecret;

use super::*;

const A: [u8; 32] = [7; 32];
const B: [u8; 32] = [9; 32];

fn key(bytes: &[u8; 32]) -> MasterKey {
    MasterKey::from_bytes(bytes).unwrap()
}

#[test]
fn a_master_key_is_read_as_hex_or_either_base64() {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    // Bytes whose base64 holds `+` and `/` (standard) or `-` and `_` (URL-safe).
    let bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(0xfb));
    let forms = [
        hex::encode(bytes),
        hex::encode_upper(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        format!("  {}\n", URL_SAFE_NO_PAD.encode(bytes)),
    ];
    assert!(forms[2].contains(['+', '/']) && forms[4].contains(['-', '_']), "{forms:?}");
    for form in forms {
        assert_eq!(MasterKey::parse(&form, MASTER_KEY_ENV).unwrap().version(), key(&bytes).version(), "{form}");
    }
}

#[test]
fn a_malformed_master_key_is_refused_naming_the_setting_not_the_value() {
    let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
    for bad in ["", "hunter2-not-a-key", &"ab".repeat(31), &"zz".repeat(32), &short] {
        let err = MasterKey::parse(bad, MASTER_KEY_ENV).unwrap_err().to_string();
        assert!(err.contains("KEYPOOL_MASTER_KEY") && err.contains("32 bytes"), "{err}");
        assert!(bad.is_empty() || !err.contains(bad), "the value is echoed: {err}");
    }
}

#[test]
fn a_sealed_key_opens_only_in_its_own_row() {
    let k = key(&A);
    let one = k.seal(1, "sk-first-secret-material");
    let two = k.seal(2, "sk-second-secret-material");
    assert_eq!(k.open(1, &one).unwrap().expose_secret(), "sk-first-secret-material");
    assert_eq!(k.open(2, &two).unwrap().expose_secret(), "sk-second-secret-material");
    // The rows' ciphertexts swapped: neither opens.
    assert_eq!(k.open(1, &two).unwrap_err(), SealError::Corrupt { id: 1, version: k.version() });
    assert_eq!(k.open(2, &one).unwrap_err(), SealError::Corrupt { id: 2, version: k.version() });
    // Nor does a flipped bit.
    let mut bytes = base64::engine::general_purpose::STANDARD.decode(&one).unwrap();
    bytes[20] ^= 1;
    let flipped = base64::engine::general_purpose::STANDARD.encode(bytes);
    assert!(matches!(k.open(1, &flipped), Err(SealError::Corrupt { .. })));
    assert!(!one.contains("first") && !one.contains("c2stZmlyc3"), "{one}");
}

#[test]
fn each_seal_uses_a_fresh_nonce() {
    let k = key(&A);
    assert_ne!(k.seal(1, "sk-same"), k.seal(1, "sk-same"));
}

#[test]
fn another_master_key_neither_opens_nor_fingerprints_alike() {
    let (a, b) = (key(&A), key(&B));
    assert_ne!(a.version(), b.version());
    assert_ne!(a.fingerprint("sk-x"), b.fingerprint("sk-x"));
    assert_eq!(a.fingerprint("sk-x"), key(&A).fingerprint("sk-x"));
    assert_ne!(a.fingerprint("sk-x"), a.fingerprint("sk-y"));
    let sealed = a.seal(5, "sk-x");
    // The same row under the wrong key fails to authenticate...
    assert!(matches!(b.open(5, &sealed), Err(SealError::Corrupt { .. })));
    // ...and a keyring without A's version says which key it needs.
    let err = Keyring::new(b.clone()).open(5, a.version(), &sealed).unwrap_err();
    assert_eq!(err, SealError::WrongMasterKey { id: 5, version: a.version(), have: b.version() });
    assert!(err.to_string().contains("KEYPOOL_MASTER_KEY"), "{err}");
    // A rotation's keyring opens both.
    let ring = Keyring { current: b.clone(), old: Some(a.clone()) };
    assert_eq!(ring.open(5, a.version(), &sealed).unwrap().expose_secret(), "sk-x");
    assert_eq!(ring.open(6, b.version(), &b.seal(6, "sk-z")).unwrap().expose_secret(), "sk-z");
    assert_eq!(ring.fingerprints("sk-x"), vec![b.fingerprint("sk-x"), a.fingerprint("sk-x")]);
}

#[test]
fn a_generated_master_key_parses_and_debug_shows_no_key() {
    let text = MasterKey::generate();
    let k = MasterKey::parse(text.expose_secret(), MASTER_KEY_ENV).unwrap();
    let shown = format!("{k:?} {:?}", Keyring::new(k.clone()));
    assert!(!shown.contains(text.expose_secret()) && shown.contains(&show_version(k.version())), "{shown}");
    assert_ne!(MasterKey::generate().expose_secret(), text.expose_secret());
}
