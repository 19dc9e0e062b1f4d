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

fn names(pools: &PoolSet, order: &[Candidate]) -> Vec<String> {
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
    let pools = Pools::from_config(&config(TWO)).load();
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
    let pools = Pools::from_config(&config(TWO)).load();
    assert_eq!(names(&pools, &pools.plan(Some("deepseek-chat")).unwrap().order()), ["b", "c"]);
    assert_eq!(names(&pools, &pools.plan(Some("llama-3")).unwrap().order()), ["c"]);
    assert!(pools.plan(Some("llama-3")).unwrap().single().is_some());
    assert_eq!(names(&pools, &pools.plan(None).unwrap().order()), ["a"], "no model: the default upstream");
}

#[test]
fn aliases_rewrite_the_model_and_list_targets_in_order() {
    let pools = Pools::from_config(&config(TWO)).load();
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
    ))
    .load();
    assert_eq!(pools.plan(Some("claude-3")).unwrap_err(), RouteError::NoUpstream("claude-3".into()));
}

#[test]
fn the_plan_cache_stays_bounded() {
    let pools = Pools::from_config(&config(TWO)).load();
    for i in 0..(plan::CACHED_PLANS + 100) {
        pools.plan(Some(&format!("m-{i}"))).unwrap();
    }
    assert!(pools.plans.cached() <= plan::CACHED_PLANS);
}

#[test]
fn keys_go_to_their_upstream_and_unknown_upstreams_serve_nowhere() {
    let handle = Pools::from_config(&config(TWO));
    let orphans = handle.sync_keys(&[key(1, None), key(2, Some("b")), key(3, Some("gone"))]);
    assert_eq!(orphans, vec![(3, "gone".to_owned())]);
    let pools = handle.load();
    assert_eq!(pools.pool_of_key(1).map(Pool::name), Some("a"), "no upstream: the default");
    assert_eq!(pools.pool_of_key(2).map(Pool::name), Some("b"));
    assert!(pools.pool_of_key(3).is_none());
    assert_eq!(handle.census().total(), 2);
}

fn key(id: i64, upstream: Option<&str>) -> KeyRecord {
    KeyRecord {
        upstream: upstream.map(str::to_owned),
        ..KeyRecord::new(id, secrecy::SecretString::from(format!("sk-test-{id}")))
    }
}

#[test]
fn a_new_set_keeps_what_the_old_one_learned_and_says_what_changed() {
    let stop = tokio_util::sync::CancellationToken::new();
    let (first, _) = PoolSet::build(&config(TWO), None, &stop);
    first.sync_keys(&[key(1, None), key(2, Some("b"))]);
    let a_before = Arc::clone(first.by_name("a").unwrap().1);
    let b_scheduler = Arc::clone(&first.by_name("b").unwrap().1.scheduler);
    // b's weight changes, c goes, d comes (the alias follows it).
    let edited = TWO.replace("weight = 1\n", "weight = 2\n").replace("\"c\"", "\"d\"");
    let (second, changes) = PoolSet::build(&config(&edited), Some(&first), &stop);
    assert_eq!(changes, Changes { added: vec!["d".into()], changed: vec!["b".into()], removed: vec!["c".into()] });
    assert!(Arc::ptr_eq(second.by_name("a").unwrap().1, &a_before), "an unchanged upstream keeps its pool");
    let b = second.by_name("b").unwrap().1;
    assert_eq!(b.upstream.weight, 2);
    assert!(Arc::ptr_eq(&b.scheduler, &b_scheduler), "a changed upstream keeps its keys' state");
    assert!(b.scheduler.has_key(2));
    assert_eq!(second.generation(), first.generation() + 1);
    // A pool no set holds any more stops its probes.
    let c_probes = first.by_name("c").unwrap().1.probes_stop();
    assert!(!c_probes.is_cancelled());
    drop(first);
    assert!(c_probes.is_cancelled());
    assert!(!second.by_name("a").unwrap().1.probes_stop().is_cancelled());
}
