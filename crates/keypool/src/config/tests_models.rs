//! Per-model settings: the glob rule, prices (built-in, legacy, `[models]`)
//! and timeouts; and defaults long enough for a 10-minute generation.

use std::time::Duration;

use crate::config::models::{builtin_prices, glob_match, most_specific, Specificity};
use crate::config::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn globs_match_the_whole_name() {
    assert!(glob_match("gpt-4o*", "gpt-4o"));
    assert!(glob_match("gpt-4o*", "gpt-4o-mini-2024-07-18"));
    assert!(glob_match("*mini*", "gpt-4o-mini"));
    assert!(glob_match("o?-mini", "o3-mini"));
    assert!(glob_match("*", ""));
    assert!(glob_match("a*b*c", "aXbYbZc"));
    assert!(!glob_match("o?-mini", "o-mini"));
    assert!(!glob_match("gpt-4o", "gpt-4o-mini"));
    assert!(!glob_match("gpt-4o*", "xgpt-4o"));
    assert!(!glob_match("a*b", "ab-c"));
    assert!(glob_match("modèle-?", "modèle-é"));
    assert!(glob_match("*é", "aéé"));
    assert!(!glob_match("modèle-?", "modèle-éé"));
    assert!(glob_match("**", "x") && !glob_match("", "x") && glob_match("", ""));
}

#[test]
fn the_most_specific_pattern_wins_and_exact_beats_any_glob() {
    assert!(Specificity::of("gpt-4o") > Specificity::of("gpt-4o-mini-2024*"));
    assert!(Specificity::of("gpt-4o-mini*") > Specificity::of("gpt-4o*"));
    assert!(Specificity::of("gpt-4o*") > Specificity::of("gpt-4*"));
    // Same literals: fewer stars wins.
    assert!(Specificity::of("gpt-4o*") > Specificity::of("*gpt-4o*"));
    let pick = |model: &str| {
        most_specific(model, [vec![("*", 0), ("gpt-4o*", 1), ("gpt-4o-mini*", 2), ("gpt-4o", 3), ("*-mini", 4)]])
    };
    assert_eq!(pick("gpt-4o"), Some(3));
    assert_eq!(pick("gpt-4o-2024-08-06"), Some(1));
    assert_eq!(pick("gpt-4o-mini"), Some(2));
    assert_eq!(pick("o3-mini"), Some(4));
    assert_eq!(pick("llama"), Some(0));
    // A full tie: the earlier source, then the pattern that sorts first.
    assert_eq!(most_specific("ab", [vec![("a*", 1)], vec![("a*", 2)]]), Some(1));
    assert_eq!(most_specific("ab", [vec![("?b", 1), ("a?", 2)]]), Some(1));
    assert_eq!(most_specific("ab", [vec![("a?", 2), ("?b", 1)]]), Some(1));
}

#[test]
fn builtin_price_table_parses_with_its_source_and_date() {
    let t = builtin_prices();
    assert!(t.source.starts_with("https://"), "{}", t.source);
    assert_eq!(t.taken.len(), 10, "YYYY-MM-DD: {}", t.taken);
    assert!(t.models.len() >= 10);
    assert!(t.models.values().all(|p| p.is_valid()));
    let c = Config::default();
    assert_eq!(c.price_of("gpt-4o-mini-2024-07-18").map(|p| p.input), Some(0.15));
    assert_eq!(c.price_of("gpt-4o-2024-08-06").map(|p| p.output), Some(10.0));
    assert_eq!(c.model_price_of("gpt-4o").and_then(|p| p.cached_input), Some(1.25));
    assert_eq!(c.price_of("o3-pro").map(|p| p.input), Some(20.0));
    assert_eq!(c.price_of("text-embedding-3-small").map(|p| p.input), Some(0.02));
    assert_eq!(c.price_of("deepseek-chat"), None);
}

#[test]
fn configured_prices_override_the_builtin_table_by_the_same_rule() {
    let mut c = Config::default();
    // A catch-all prices only what nothing more specific prices.
    c.prices.insert("default".into(), Price { input: 1.0, output: 2.0 });
    assert_eq!(c.price_of("deepseek-chat").map(|p| p.input), Some(1.0));
    assert_eq!(c.price_of("gpt-4o-mini").map(|p| p.input), Some(0.15));
    // The same pattern in the file beats the built-in one (legacy prefix gpt-4o = gpt-4o*).
    c.prices.insert("gpt-4o".into(), Price { input: 3.0, output: 12.0 });
    assert_eq!(c.price_of("gpt-4o-2024-08-06").map(|p| p.input), Some(3.0));
    // [models] beats [prices] on an equal pattern, and carries cached_input.
    c.models.insert(
        "gpt-4o*".into(),
        ModelConfig {
            price: Some(ModelPrice { input: 4.0, output: 16.0, cached_input: Some(2.0) }),
            ..ModelConfig::default()
        },
    );
    assert_eq!(
        c.model_price_of("gpt-4o-2024-08-06"),
        Some(ModelPrice { input: 4.0, output: 16.0, cached_input: Some(2.0) })
    );
    // An exact name beats every glob.
    c.models.insert(
        "gpt-4o-mini".into(),
        ModelConfig {
            price: Some(ModelPrice { input: 9.0, output: 9.0, cached_input: None }),
            ..ModelConfig::default()
        },
    );
    assert_eq!(c.price_of("gpt-4o-mini").map(|p| p.input), Some(9.0));
    assert_eq!(c.price_of("gpt-4o-mini-2024-07-18").map(|p| p.input), Some(0.15));
}

#[test]
fn defaults_let_a_ten_minute_generation_through() {
    let c = Config::default();
    let sdk_read_timeout = secs(600);
    let t = c.timeouts_for(Some("gpt-4o"));
    assert!(t.first_byte > sdk_read_timeout, "first_byte {:?}", t.first_byte);
    assert!(t.idle > sdk_read_timeout, "idle {:?}", t.idle);
    assert!(t.total > t.first_byte);
    assert!(c.deadline_for(Some("gpt-4o")) > t.first_byte + c.pool.max_wait.min(secs(60)));
    assert!(c.warnings(None).iter().all(|w| w.setting != "retry.deadline"));
}

#[test]
fn per_model_timeouts_resolve_field_by_field() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../keypool.example.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.toml");
    std::fs::write(
        &file,
        r#"
[timeouts]
first_byte = "30s"
[models."o*"]
timeouts = { first_byte = "20m", idle = "15m" }
[models."o3-pro"]
timeouts = { first_byte = "40m", deadline = "45m" }
price = { input = 20, output = 80, cached_input = 5 }
"#,
    )
    .unwrap();
    let c = Config::load(Some(&file), &Overrides::default()).unwrap();
    let t = c.timeouts_for(Some("o3-pro"));
    assert_eq!((t.first_byte, t.idle, t.connect), (secs(2400), secs(900), secs(10)));
    assert_eq!(c.deadline_for(Some("o3-pro")), secs(2700));
    let t = c.timeouts_for(Some("o4-mini"));
    assert_eq!((t.first_byte, t.idle), (secs(1200), secs(900)));
    assert_eq!(c.deadline_for(Some("o4-mini")), c.retry.deadline);
    assert_eq!(c.timeouts_for(Some("gpt-4o")).first_byte, secs(30));
    assert_eq!(c.timeouts_for(None), c.timeouts);
    assert_eq!(c.model_price_of("o3-pro").and_then(|p| p.cached_input), Some(5.0));
    // The example file shows the same shape and loads.
    let example = Config::load(Some(&path), &Overrides::default()).unwrap();
    assert!(!example.models.is_empty(), "keypool.example.toml shows [models]");
}

#[test]
fn impossible_per_model_values_name_their_pattern() {
    let mut c = Config::default();
    c.models.insert(
        "gpt-*".into(),
        ModelConfig {
            timeouts: TimeoutsOverride { first_byte: Some(Duration::ZERO), ..Default::default() },
            ..Default::default()
        },
    );
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("gpt-*") && err.contains("first_byte"), "{err}");
    let mut c = Config::default();
    c.models.insert(
        "x".into(),
        ModelConfig { price: Some(ModelPrice { input: -1.0, output: 0.0, cached_input: None }), ..Default::default() },
    );
    assert!(c.validate().unwrap_err().to_string().contains("\"x\""));
}

#[test]
fn per_request_lookups_allocate_nothing() {
    let mut c = Config::default();
    c.models.insert(
        "o*".into(),
        ModelConfig {
            timeouts: TimeoutsOverride { first_byte: Some(secs(1200)), ..Default::default() },
            price: Some(ModelPrice { input: 1.0, output: 2.0, cached_input: None }),
        },
    );
    c.prices.insert("default".into(), Price { input: 1.0, output: 1.0 });
    let _ = c.price_of("warm-up"); // parses the built-in table once
    let info = allocation_counter::measure(|| {
        for model in ["gpt-4o-mini-2024-07-18", "o3-pro", "llama-3-70b", "modèle"] {
            std::hint::black_box(c.price_of(model));
            std::hint::black_box(c.timeouts_for(Some(model)));
            std::hint::black_box(c.deadline_for(Some(model)));
        }
    });
    assert_eq!(info.count_total, 0, "{info:?}");
}

#[test]
fn cached_prompt_tokens_cost_their_own_price_and_reasoning_costs_output() {
    let usage = keypool_sse::Usage {
        prompt_tokens: 1_000,
        completion_tokens: 300,
        total_tokens: 1_300,
        cached_tokens: 400,
        reasoning_tokens: 200,
        estimated: false,
    };
    // 600 fresh × 2.0 + 400 cached × 0.5 + 300 out (200 of them reasoning) × 8.0.
    let with_cache = ModelPrice { input: 2.0, output: 8.0, cached_input: Some(0.5) };
    assert_eq!(with_cache.cost_micros(&usage), 1_200 + 200 + 2_400);
    // No cached price: cached tokens cost what input does.
    let without = ModelPrice { input: 2.0, output: 8.0, cached_input: None };
    assert_eq!(without.cost_micros(&usage), 2_000 + 2_400);
    // A provider reporting more cached than prompt tokens is not believed past the prompt.
    let odd = keypool_sse::Usage { cached_tokens: 5_000, ..usage };
    assert_eq!(with_cache.cost_micros(&odd), 500 + 2_400);
}
