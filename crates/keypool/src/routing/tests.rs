#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;

fn config(toml: &str) -> Config {
    let config: Config = toml::from_str(toml).unwrap();
    config.validate().unwrap();
    config
}

const TWO: &str = r#"
[[upstreams]]
name = "a"
base_url = "http://a.example/v1"
models = ["gpt-4o*", "shared"]
priority = 10
weight = 3
[[upstreams]]
name = "b"
base_url = "http://b.example/v1"
models = ["gpt-4o*", "deepseek-*", "shared"]
priority = 10
weight = 1
[[upstreams]]
name = "c"
base_url = "http://c.example/v1"
models = ["*"]
[model_aliases]
"cheap" = { upstream = "b", model = "deepseek-chat" }
"smart" = [{ upstream = "c", model = "gpt-4o" }, { model = "deepseek-chat" }]
"#;

fn names(pools: &Pools, order: &[Candidate]) -> Vec<String> {
    order
        .iter()
        .map(|c| {
            let name = pools.get(c.pool).unwrap().name().to_owned();
            match &c.model {
                Some(m) => format!("{name}:{m}"),
                None => name,
            }
        })
        .collect()
}

#[test]
fn weights_split_exactly_and_evenly_within_a_priority() {
    let pools = Pools::from_config(&config(TWO));
    let plan = pools.plan(Some("gpt-4o-mini")).unwrap();
    let firsts: Vec<String> = (0..1000).map(|_| names(&pools, &plan.order())[0].clone()).collect();
    assert_eq!(firsts.iter().filter(|n| *n == "a").count(), 750);
    assert_eq!(firsts.iter().filter(|n| *n == "b").count(), 250);
    // Smooth: never more than three `a` in a row for weights 3:1.
    assert!(!firsts.windows(4).any(|w| w.iter().all(|n| n == "a")), "{:?}", &firsts[..8]);
    // Each order holds every candidate once: the next priority group last.
    let order = names(&pools, &plan.order());
    assert_eq!(order.len(), 3);
    assert_eq!(order[2], "c");
}

#[test]
fn globs_pick_the_upstreams_and_higher_priority_comes_first() {
    let pools = Pools::from_config(&config(TWO));
    assert_eq!(names(&pools, &pools.plan(Some("deepseek-chat")).unwrap().order()), ["b", "c"]);
    assert_eq!(names(&pools, &pools.plan(Some("llama-3")).unwrap().order()), ["c"]);
    assert!(pools.plan(Some("llama-3")).unwrap().single().is_some());
    assert_eq!(names(&pools, &pools.plan(None).unwrap().order()), ["a"], "no model: the default upstream");
}

#[test]
fn aliases_rewrite_the_model_and_list_targets_in_order() {
    let pools = Pools::from_config(&config(TWO));
    assert_eq!(names(&pools, &pools.plan(Some("cheap")).unwrap().order()), ["b:deepseek-chat"]);
    // The second target has no upstream: every upstream serving it, by priority.
    assert_eq!(
        names(&pools, &pools.plan(Some("smart")).unwrap().order()),
        ["c:gpt-4o", "b:deepseek-chat", "c:deepseek-chat"]
    );
}

#[test]
fn a_model_no_upstream_serves_is_the_callers_error() {
    let pools = Pools::from_config(&config(
        "[[upstreams]]\nname = \"a\"\nbase_url = \"http://a.example/v1\"\nmodels = [\"gpt-*\"]",
    ));
    assert_eq!(pools.plan(Some("claude-3")).unwrap_err(), RouteError::NoUpstream("claude-3".into()));
}

#[test]
fn the_plan_cache_stays_bounded() {
    let pools = Pools::from_config(&config(TWO));
    for i in 0..(plan::CACHED_PLANS + 100) {
        pools.plan(Some(&format!("m-{i}"))).unwrap();
    }
    assert!(pools.plans.cached() <= plan::CACHED_PLANS);
}

#[test]
fn keys_go_to_their_upstream_and_unknown_upstreams_serve_nowhere() {
    use secrecy::SecretString;
    let pools = Pools::from_config(&config(TWO));
    let key = |id: i64, upstream: Option<&str>| KeyRecord {
        upstream: upstream.map(str::to_owned),
        ..KeyRecord::new(id, SecretString::from(format!("sk-test-{id}")))
    };
    let orphans = pools.sync_keys(&[key(1, None), key(2, Some("b")), key(3, Some("gone"))]);
    assert_eq!(orphans, vec![(3, "gone".to_owned())]);
    assert_eq!(pools.pool_of_key(1).map(Pool::name), Some("a"), "no upstream: the default");
    assert_eq!(pools.pool_of_key(2).map(Pool::name), Some("b"));
    assert!(pools.pool_of_key(3).is_none());
    assert_eq!(pools.census().total(), 2);
}
