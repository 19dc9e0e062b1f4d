//! Reading the layers: defaults, the TOML file, `KEYPOOL_*` variables, flags.
//!
//! An unknown key in the file is an error naming the file, the line and the
//! closest valid name. An unknown `KEYPOOL_*` variable is only a warning:
//! orchestrators inject variables such as `KEYPOOL_PORT` for a service named
//! keypool, and that must not stop it from starting.

use std::path::Path;

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Source};

use super::{Config, ConfigError, Overrides, DEFAULT_CONFIG_FILE};

/// Most unknown variables dropped one by one before giving up.
const MAX_IGNORED: usize = 64;

pub(super) fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let file = match file {
        Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.to_owned())),
        Some(path) => Some(path.to_owned()),
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => Some(DEFAULT_CONFIG_FILE.into()),
        None => None,
    };
    let mut ignored: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    loop {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &file {
            figment = figment.merge(Toml::file(path));
        }
        let skip = ignored.clone();
        // KEYPOOL_CONFIG names the file itself; it is not a setting. The
        // master keys are read apart (crate::crypt), never into the figment.
        let env = Env::prefixed("KEYPOOL_")
            .split("__")
            .ignore(&["config", "master_key", "master_key_old"])
            .filter(move |k| !skip.iter().any(|s| k.as_str().eq_ignore_ascii_case(s)));
        figment = figment.merge(env).merge(Serialized::globals(overrides));
        let error = match figment.extract::<Config>() {
            Ok(mut config) => {
                config.env_ignored = notes;
                config.keyring = crate::crypt::Keyring::from_env()?;
                config.validate()?;
                return Ok(config);
            }
            Err(e) => e,
        };
        match unknown_env_variable(&error) {
            Some((key, note)) if ignored.len() < MAX_IGNORED => {
                ignored.push(key);
                notes.push(note);
            }
            _ => return Err(describe(error, file.as_deref())),
        }
    }
}

pub(super) fn from_toml(text: &str) -> Result<Config, ConfigError> {
    let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
    let config: Config = figment.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
    config.validate()?;
    Ok(config)
}

/// For an unknown field that came from the environment: the dotted key to
/// drop and the warning naming the variable.
fn unknown_env_variable(error: &figment::Error) -> Option<(String, String)> {
    let Kind::UnknownField(field, expected) = &error.kind else { return None };
    let md = error.metadata.as_ref()?;
    if !md.name.contains("environment variable") {
        return None;
    }
    let mut path = parent_path(error, field);
    path.push(field.clone());
    let variable = format!("KEYPOOL_{}", path.join("__").to_ascii_uppercase());
    let mut note = format!("{variable} is not a keypool setting and was ignored");
    // Only a near miss is suggested: KEYPOOL_PORT is not a typo of KEYPOOL_POOL.
    if let Some(close) = closest(field, expected).filter(|c| edit_distance(field, c) <= field.chars().count() / 3) {
        let mut near = parent_path(error, field);
        near.push(close.to_owned());
        note.push_str(&format!(" (closest setting: KEYPOOL_{})", near.join("__").to_ascii_uppercase()));
    }
    Some((path.join("."), note))
}

/// The path of the table holding `field` (figment's path may or may not end with it).
fn parent_path(error: &figment::Error, field: &str) -> Vec<String> {
    let mut path: Vec<String> = error.path.iter().filter(|p| p.as_str() != "default").cloned().collect();
    if path.last().is_some_and(|last| last == field) {
        path.pop();
    }
    path
}

/// One message for a figment error; a bad key or value in the file names the
/// file and its line, and an unknown key the closest valid name.
fn describe(error: figment::Error, file: Option<&Path>) -> ConfigError {
    let from_file = matches!(error.metadata.as_ref().and_then(|m| m.source.as_ref()), Some(Source::File(_)));
    let Some(path) = file.filter(|_| from_file) else { return ConfigError::Parse(Box::new(error)) };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if let Kind::UnknownField(field, expected) = &error.kind {
        let mut keys = parent_path(&error, field);
        keys.push(field.clone());
        return ConfigError::UnknownSetting {
            file: path.to_owned(),
            line: line_of(&text, &keys),
            setting: keys.join("."),
            closest: closest(field, expected).map(str::to_owned),
        };
    }
    let keys: Vec<String> = error.path.iter().filter(|p| p.as_str() != "default").cloned().collect();
    if keys.is_empty() {
        return ConfigError::Parse(Box::new(error));
    }
    ConfigError::InvalidInFile {
        file: path.to_owned(),
        line: line_of(&text, &keys),
        setting: keys.join("."),
        reason: error.kind.to_string(),
    }
}

/// The 1-based line where the key at `keys` is written, found by parsing the
/// file again with spans.
pub(super) fn line_of(text: &str, keys: &[String]) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut span = None;
    for (i, key) in keys.iter().enumerate() {
        let (k, v) = table.iter().find(|(k, _)| k.get_ref() == key)?;
        span = Some(k.span());
        if i + 1 < keys.len() {
            match v.get_ref() {
                toml::de::DeValue::Table(t) => table = t,
                _ => return None,
            }
        }
    }
    let start = span?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

/// The valid name nearest to `name` by edit distance (a swap of two
/// neighbours counts as one edit: `rmp` is one from `rpm`).
pub(super) fn closest<'a>(name: &str, valid: &[&'a str]) -> Option<&'a str> {
    valid.iter().copied().min_by_key(|v| edit_distance(name, v))
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions
/// and swaps of adjacent characters.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[(i - 1) * w + j] + 1).min(d[i * w + j - 1] + 1).min(d[(i - 1) * w + j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * w + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * w + b.len()]
}
