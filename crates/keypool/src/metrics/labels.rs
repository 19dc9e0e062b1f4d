//! The bounded `model` label: a request's model name, kept only when the
//! operator or keypool knows it, so a caller cannot create series at will.
//!
//! Known names come from the patterns of `[models]`, `[prices]` and the
//! built-in price table (`config/prices.toml`). A model is labelled:
//! - with its own name when a pattern names it exactly, or is that name
//!   followed by one `*` (`gpt-4o*` knows `gpt-4o`);
//! - else with the most specific pattern it matches, as written
//!   (`gpt-4o-2024-08-06` is `gpt-4o*`); catch-alls (`*`, `default`) do not count;
//! - else `other`; a request without a model is `none`.
//!
//! So there are at most two labels per pattern, plus `other` and `none`.

use std::collections::HashMap;

use crate::config::models::{builtin_prices, glob_match, legacy_price_pattern, Specificity};
use crate::config::Config;

/// Label for a request that named no model.
pub const NONE: &str = "none";
/// Label for a model no pattern knows.
pub const OTHER: &str = "other";

/// Index of a label in [`ModelLabels::name`].
pub type LabelId = u16;

/// The model labels of one configuration (see the module docs).
#[derive(Debug, Clone)]
pub struct ModelLabels {
    /// Every label, by id: `none`, `other`, then names and patterns.
    names: Vec<String>,
    /// Exact names and the stems of `name*` patterns.
    exact: HashMap<String, LabelId>,
    /// Patterns with wildcards (not catch-alls), with their label id.
    globs: Vec<(String, Specificity, LabelId)>,
}

const NONE_ID: LabelId = 0;
const OTHER_ID: LabelId = 1;
/// Most labels kept; patterns past it are labelled `other` (a config with
/// thousands of model patterns is not expected).
const MAX_LABELS: usize = 4096;

impl ModelLabels {
    /// The labels of `config`'s patterns and the built-in price table.
    pub fn new(config: &Config) -> ModelLabels {
        let mut patterns: Vec<String> = config.models.keys().cloned().collect();
        patterns.extend(config.prices.keys().map(|p| legacy_price_pattern(p).into_owned()));
        patterns.extend(builtin_prices().models.keys().cloned());
        ModelLabels::from_patterns(patterns)
    }

    /// The labels of these model-name globs.
    pub fn from_patterns(patterns: impl IntoIterator<Item = String>) -> ModelLabels {
        let mut labels =
            ModelLabels { names: vec![NONE.to_owned(), OTHER.to_owned()], exact: HashMap::new(), globs: Vec::new() };
        for pattern in patterns {
            if labels.names.len() + 2 > MAX_LABELS {
                break;
            }
            if pattern.is_empty() || pattern.chars().all(|c| c == '*' || c == '?') {
                continue;
            }
            let wild = pattern.contains(['*', '?']);
            if !wild {
                labels.add_exact(&pattern);
                continue;
            }
            if let Some(stem) = pattern.strip_suffix('*').filter(|s| !s.is_empty() && !s.contains(['*', '?'])) {
                labels.add_exact(stem);
            }
            if labels.globs.iter().all(|(p, ..)| *p != pattern) {
                let id = labels.push(&pattern);
                labels.globs.push((pattern.clone(), Specificity::of(&pattern), id));
            }
        }
        labels
    }

    fn add_exact(&mut self, name: &str) {
        if !self.exact.contains_key(name) {
            let id = self.push(name);
            self.exact.insert(name.to_owned(), id);
        }
    }

    fn push(&mut self, label: &str) -> LabelId {
        self.names.push(label.to_owned());
        LabelId::try_from(self.names.len() - 1).unwrap_or(OTHER_ID)
    }

    /// The label of a request's model (see the module docs).
    pub fn of(&self, model: Option<&str>) -> LabelId {
        let Some(model) = model else { return NONE_ID };
        if let Some(id) = self.exact.get(model) {
            return *id;
        }
        let mut best: Option<(Specificity, LabelId)> = None;
        for (pattern, specificity, id) in &self.globs {
            if best.is_none_or(|(s, _)| *specificity > s) && glob_match(pattern, model) {
                best = Some((*specificity, *id));
            }
        }
        best.map_or(OTHER_ID, |(_, id)| id)
    }

    /// The label's text.
    pub fn name(&self, id: LabelId) -> &str {
        self.names.get(usize::from(id)).map_or(OTHER, String::as_str)
    }

    /// How many labels there are (`none` and `other` included).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Never true: `none` and `other` are always there.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(patterns: &[&str]) -> ModelLabels {
        ModelLabels::from_patterns(patterns.iter().map(|p| (*p).to_owned()))
    }

    fn label<'a>(l: &'a ModelLabels, model: Option<&str>) -> &'a str {
        l.name(l.of(model))
    }

    #[test]
    fn known_names_keep_their_name_and_the_rest_is_bounded() {
        let l = labels(&["gpt-4o*", "gpt-4o-mini*", "text-embedding-3-small", "*", "o?-mini"]);
        assert_eq!(label(&l, Some("gpt-4o")), "gpt-4o");
        assert_eq!(label(&l, Some("gpt-4o-mini")), "gpt-4o-mini");
        assert_eq!(label(&l, Some("gpt-4o-2024-08-06")), "gpt-4o*");
        assert_eq!(label(&l, Some("gpt-4o-mini-2024-07-18")), "gpt-4o-mini*", "the most specific pattern");
        assert_eq!(label(&l, Some("text-embedding-3-small")), "text-embedding-3-small");
        assert_eq!(label(&l, Some("o3-mini")), "o?-mini");
        assert_eq!(label(&l, Some("llama-3-70b")), OTHER, "a catch-all does not make a name known");
        assert_eq!(label(&l, None), NONE);
        // gpt-4o, gpt-4o*, gpt-4o-mini, gpt-4o-mini*, text-embedding-3-small, o?-mini, none, other.
        assert_eq!(l.len(), 8);
    }

    #[test]
    fn the_builtin_table_and_the_config_are_known() {
        let mut config = Config::default();
        config.models.insert("my-local-model".into(), crate::config::ModelConfig::default());
        config.prices.insert("claude-3".into(), crate::config::Price { input: 1.0, output: 2.0 });
        let l = ModelLabels::new(&config);
        assert_eq!(label(&l, Some("my-local-model")), "my-local-model");
        assert_eq!(label(&l, Some("claude-3")), "claude-3");
        assert_eq!(label(&l, Some("gpt-4.1-mini")), "gpt-4.1-mini");
        assert_eq!(label(&l, Some("caller-made-this-up")), OTHER);
    }
}
