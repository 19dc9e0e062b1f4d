//! The config file: TOML text into the typed, validated config.

use crate::config::Config;

/// A config file's text (not UTF-8: nothing to read).
///
/// Checks: loading and validating never panic, whatever the text; a config
/// that loads can be shown (`config check` prints it as TOML), what is shown
/// is TOML again, and the secrets in it (the admin token, upstream header
/// values) are masked.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match Config::from_toml(text) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = config.warnings(None);
    let _ = format!("{config:?}");
    let shown = match config.to_masked_toml() {
        Ok(shown) => shown,
        Err(e) => panic!("a config that loads cannot be shown: {e}"),
    };
    let table: toml::Table = match toml::from_str(&shown) {
        Ok(table) => table,
        Err(e) => panic!("the config shown is not TOML: {e}\n{shown}"),
    };
    let masked = |v: Option<&toml::Value>| v.is_none_or(|v| v.as_str() == Some("***"));
    assert!(masked(table.get("admin_token")), "the admin token is shown");
    let upstreams = table.get("upstreams").and_then(toml::Value::as_array);
    for upstream in upstreams.into_iter().flatten() {
        let headers = upstream.get("headers").and_then(toml::Value::as_table);
        for (name, value) in headers.into_iter().flatten() {
            assert!(masked(Some(value)), "upstream header {name} is shown");
        }
    }
}
