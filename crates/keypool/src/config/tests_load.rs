//! Loading: unknown keys, the listen forms, and the warnings.

use crate::config::load::{closest, edit_distance, line_of};
use crate::config::*;
use crate::scheduler::Strategy;

fn load_text(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keypool.toml");
    std::fs::write(&file, text).unwrap();
    Config::load(Some(&file), &Overrides::default())
}

#[test]
fn an_unknown_key_names_file_line_and_the_closest_valid_name() {
    let err = load_text("log = \"info\"\n\n[limits]\nrmp = 3\n").unwrap_err();
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(shown.contains("keypool.toml"), "{shown}");
    assert!(shown.contains("`limits.rmp`") && shown.contains("line 4"), "{shown}");
    assert!(shown.contains("did you mean `rpm`"), "{shown}");
    assert_eq!(shown.matches("rmp").count(), 1, "said once: {shown}");

    let err = load_text("upstrem = \"http://x/v1\"\n").unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("`upstream`"), "{err}");
    let err = load_text("[models.\"gpt-*\"]\ntimeouts = { frist_byte = \"1s\" }\n").unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("`first_byte`"), "{err}");
}

#[test]
fn a_bad_value_in_the_file_names_its_setting_and_line() {
    let err = load_text("log = \"info\"\n[timeouts]\nfirst_byte = \"soon\"\n").unwrap_err().to_string();
    assert!(err.contains("`timeouts.first_byte`") && err.contains("line 3") && err.contains("duration"), "{err}");
    let err = load_text("\nlisten = \"nowhere:1\"\n").unwrap_err().to_string();
    assert!(err.contains("`listen`") && err.contains("line 2") && err.contains("localhost"), "{err}");
}

#[test]
fn lines_are_found_in_tables_dotted_keys_and_inline_tables() {
    let text = "a = 1\n[t]\nb = 2\nc.d = 3\n[m.\"x*\"]\ne = { f = 1 }\n";
    let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(line_of(text, &keys(&["a"])), Some(1));
    assert_eq!(line_of(text, &keys(&["t", "b"])), Some(3));
    assert_eq!(line_of(text, &keys(&["t", "c", "d"])), Some(4));
    assert_eq!(line_of(text, &keys(&["m", "x*", "e", "f"])), Some(6));
    assert_eq!(line_of(text, &keys(&["nope"])), None);
    assert_eq!(closest("upstrem", &["listen", "upstream", "proxy"]), Some("upstream"));
    assert_eq!(edit_distance("rmp", "rpm"), 1);
    assert_eq!(edit_distance("port", "pool"), 2);
    assert_eq!(edit_distance("", "abc"), 3);
}

#[test]
fn listen_takes_what_users_type() {
    let p = |s: &str| parse_listen(s).map(|a| a.to_string());
    assert_eq!(p("127.0.0.1:8080").unwrap(), "127.0.0.1:8080");
    assert_eq!(p("localhost:8080").unwrap(), "127.0.0.1:8080");
    assert_eq!(p(":8080").unwrap(), "0.0.0.0:8080");
    assert_eq!(p("8080").unwrap(), "0.0.0.0:8080");
    assert_eq!(p("[::1]:8080").unwrap(), "[::1]:8080");
    assert!(p("example.com:8080").unwrap_err().contains("not an IP address"));
    assert!(p("localhost:http").unwrap_err().contains("port"));
    assert!(p("70000").unwrap_err().contains("port"));
    // The file takes the same forms, and a bare number.
    assert_eq!(load_text("listen = \":9000\"\n").unwrap().listen.to_string(), "0.0.0.0:9000");
    assert_eq!(load_text("listen = 9001\n").unwrap().listen.to_string(), "0.0.0.0:9001");
    assert_eq!(load_text("listen = \"localhost:9002\"\n").unwrap().listen.to_string(), "127.0.0.1:9002");
    assert!(load_text("listen = \"nowhere:1\"\n").unwrap_err().to_string().contains("listen"));
}

fn settings(c: &Config, keys: Option<&[KeyFacts]>) -> Vec<String> {
    c.warnings(keys).into_iter().map(|w| w.setting).collect()
}

#[test]
fn an_open_gateway_on_every_interface_is_warned_about() {
    let mut c = Config { auth: AuthMode::None, ..Config::default() };
    assert!(!settings(&c, None).contains(&"auth".to_owned()));
    c.listen = parse_listen(":8080").unwrap();
    let w = c.warnings(None);
    assert!(w.iter().any(|w| w.setting == "auth" && w.message.contains("0.0.0.0:8080")), "{w:?}");
    c.auth = AuthMode::Token;
    assert!(!settings(&c, None).contains(&"auth".to_owned()));
}

#[test]
fn an_upstream_without_a_version_path_is_warned_about() {
    for url in ["http://127.0.0.1:8000", "http://127.0.0.1:8000/", "https://u:secret@relay.example.com"] {
        let c = Config { upstream: url.into(), ..Config::default() };
        let w = c.warnings(None);
        let found = w.iter().find(|w| w.setting == "upstream").unwrap_or_else(|| panic!("{url}: {w:?}"));
        assert!(found.message.contains("/v1") && !found.message.contains("secret"), "{found}");
    }
    for url in ["https://api.openai.com/v1", "http://relay.local/proxy/v1", "https://x.openai.azure.com/openai"] {
        let c = Config { upstream: url.into(), ..Config::default() };
        assert!(!settings(&c, None).contains(&"upstream".to_owned()), "{url}");
    }
}

#[test]
fn budgets_without_prices_and_balance_even_without_budgets_are_warned_about() {
    let key = |id, budget: Option<u64>| KeyFacts { id, enabled: true, budget_micros: budget };
    let mut c = Config::default();
    let keys = [key(1, Some(5_000_000)), key(2, None)];
    let w = c.warnings(Some(&keys));
    let prices = w.iter().find(|w| w.setting == "prices").unwrap_or_else(|| panic!("{w:?}"));
    assert!(prices.message.contains("key(s) 1 ") && prices.message.contains("platform.openai.com"), "{prices}");
    // A catch-all price covers every model: nothing to say.
    c.models.insert(
        "*".into(),
        ModelConfig { price: Some(ModelPrice { input: 1.0, output: 1.0, cached_input: None }), ..Default::default() },
    );
    assert!(!settings(&c, Some(&keys)).contains(&"prices".to_owned()));
    let c = Config { prices: [("default".to_owned(), Price::default())].into(), ..Config::default() };
    assert!(!settings(&c, Some(&keys)).contains(&"prices".to_owned()));

    let mut c = Config::default();
    c.pool.strategy = Strategy::BalanceEven;
    let none = [key(1, None), key(2, None)];
    let w = c.warnings(Some(&none));
    assert!(w.iter().any(|w| w.setting == "pool.strategy" && w.message.contains("no key has one")), "{w:?}");
    let w = c.warnings(Some(&keys));
    assert!(w.iter().any(|w| w.setting == "pool.strategy" && w.message.contains("key(s) 2 ")), "{w:?}");
    // Without the store's keys, nothing about budgets is claimed.
    assert!(!settings(&c, None).contains(&"pool.strategy".to_owned()));
    c.pool.strategy = Strategy::LeastUsed;
    assert!(!settings(&c, Some(&none)).contains(&"pool.strategy".to_owned()));
}

#[test]
fn a_model_whose_first_byte_outlasts_its_deadline_is_warned_about() {
    let mut c = Config::default();
    let long = ModelConfig {
        timeouts: TimeoutsOverride { first_byte: Some(std::time::Duration::from_secs(1800)), ..Default::default() },
        ..Default::default()
    };
    c.models.insert("o1-pro*".into(), long.clone());
    let w = c.warnings(None);
    assert!(w.iter().any(|w| w.setting == "models.\"o1-pro*\"" && w.message.contains("deadline")), "{w:?}");
    c.models.insert(
        "o1-pro*".into(),
        ModelConfig {
            timeouts: TimeoutsOverride { deadline: Some(std::time::Duration::from_secs(1900)), ..long.timeouts },
            ..long
        },
    );
    assert!(c.warnings(None).is_empty(), "{:?}", c.warnings(None));
}
