#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn masks_keep_only_a_recognisable_tail() {
    assert_eq!(mask_key("sk-proj-1234567890abcd"), "sk-…abcd");
    assert!(!mask_key("sk-short").contains("short"));
    assert_eq!(mask_url_password("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
    assert_eq!(mask_url_password("sqlite://keypool.db"), "sqlite://keypool.db");
}

/// Every form a database URL can carry its password in is masked.
#[test]
fn no_form_of_a_database_password_is_shown() {
    for url in [
        "postgres://kp:s3cret@db/k",
        "postgres://kp@db/k?password=s3cret",
        "postgres://kp@db/k?sslmode=require&PASSWORD=s3cret",
        "postgres://kp:s3/cr#et@db/k",
        "postgresql://kp:s3?cr@et@db:5432/k",
    ] {
        let shown = mask_url_password(url);
        assert!(!shown.contains("s3"), "{url} shown as {shown}");
        assert!(shown.contains("db"), "{url} shown as {shown}");
    }
    assert!(mask_url_password("postgres://kp@db/k?sslmode=require&password=x").contains("sslmode=require"));
    // Nothing to hide: shown exactly as given.
    assert_eq!(mask_url_password("http://127.0.0.1:9"), "http://127.0.0.1:9");
}

#[test]
fn a_postgres_database_url_is_accepted_and_others_are_named() {
    let mut c = Config { database_url: "postgres://kp:pw@db.internal/keypool".into(), ..Config::default() };
    assert!(c.validate().is_ok());
    c.database_url = "mysql://root@db/k".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("database_url") && err.contains("postgres://"), "{err}");
}

#[test]
fn file_then_overrides_and_unknown_fields_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.toml");
    std::fs::write(&path, "upstream = \"http://relay.local/proxy/v1\"\n[limits]\nrpm = 3\n").unwrap();
    let over = Overrides { listen: Some("127.0.0.1:9999".parse().unwrap()), ..Default::default() };
    let c = Config::load(Some(&path), &over).unwrap();
    assert_eq!(c.upstream, "http://relay.local/proxy/v1");
    assert_eq!(c.limits.rpm, Some(3));
    assert_eq!(c.listen.port(), 9999);

    std::fs::write(&path, "upstrem = \"x\"\n").unwrap();
    let err = Config::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
    assert!(err.contains("upstrem"), "{err}");
}

#[test]
fn impossible_values_name_their_setting() {
    let c = Config { upstream: "ftp://x".into(), ..Config::default() };
    assert!(c.validate().unwrap_err().to_string().contains("upstream"));
    let c = Config { limits: LimitsConfig { rpm: Some(0), ..Default::default() }, ..Config::default() };
    assert!(c.validate().unwrap_err().to_string().contains("limits"));
}

#[test]
fn example_config_in_repo_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../keypool.example.toml");
    Config::load(Some(&path), &Overrides::default()).unwrap();
}

#[test]
fn prices_match_the_longest_prefix_then_default() {
    let mut c = Config::default();
    c.prices.insert("gpt-4o".into(), Price { input: 2.5, output: 10.0 });
    c.prices.insert("gpt-4o-mini".into(), Price { input: 0.15, output: 0.6 });
    assert_eq!(c.price_of("gpt-4o-mini-2024-07-18").map(|p| p.input), Some(0.15));
    assert_eq!(c.price_of("gpt-4o-2024-08-06").map(|p| p.input), Some(2.5));
    assert_eq!(c.price_of("llama-3-70b"), None);
    c.prices.insert("default".into(), Price { input: 1.0, output: 1.0 });
    assert_eq!(c.price_of("llama-3-70b").map(|p| p.output), Some(1.0));
}

#[path = "tests_load.rs"]
mod load;
#[path = "tests_models.rs"]
mod models;

#[test]
fn bodies_that_could_fill_memory_while_the_database_is_down_are_refused() {
    let mut c = Config::default();
    c.records.bodies = true;
    // 100,000 records × two 16 KiB bodies: 3.1 GiB.
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("records.buffer") && e.contains("32768 or less"), "{e}");
    c.records.buffer = 32_768;
    assert!(c.validate().is_ok());
    c.records.bodies = false;
    c.records.buffer = 100_000;
    assert!(c.validate().is_ok(), "bodies off: the buffer holds no body");
}
