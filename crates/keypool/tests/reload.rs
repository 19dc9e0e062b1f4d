//! Hot reload (issue 16): `keypool serve` in its own process, its config
//! file edited while a load of requests runs. An upstream added to the
//! file, with a key added to it by `keys add --upstream`, serves within
//! the deadline; a broken file is refused and logged; nothing fails.
//! The children run with HTTP(S)_PROXY cleared (see `Served::start_keys`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::serve::Served;
use keypool::store::NewKey;
use keypool_sim::{SimConfig, SimKey, Simulator};

fn one_upstream(a: &str) -> String {
    format!(
        "sync_interval = \"200ms\"\n\
         [[upstreams]]\nname = \"a\"\nbase_url = \"{a}\"\nmodels = [\"gpt-4o*\"]\n"
    )
}

fn two_upstreams(a: &str, b: &str) -> String {
    format!(
        "{}\n[[upstreams]]\nname = \"b\"\nkind = \"openai_compatible\"\nprovider = \"deepseek\"\n\
         base_url = \"{b}\"\nmodels = [\"deepseek-*\"]\n",
        one_upstream(a)
    )
}

/// Where callers send requests, and their token.
#[derive(Clone)]
struct Caller {
    client: reqwest::Client,
    base: String,
    token: String,
}

async fn chat(caller: &Caller, model: &str) -> u16 {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8});
    let url = format!("{}/chat/completions", caller.base);
    match caller.client.post(url).bearer_auth(&caller.token).json(&body).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            status
        }
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_added_to_the_file_serves_under_load_and_a_broken_file_is_refused() {
    let a = Simulator::start(SimConfig { keys: vec![SimKey::new("sk-reload-aaaaaaaaaaaa")], ..SimConfig::default() })
        .await
        .unwrap();
    let b = Simulator::start(SimConfig {
        keys: vec![SimKey::new("sk-reload-bbbbbbbbbbbb")],
        models: vec!["deepseek-chat".into()],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let key = NewKey { secret: "sk-reload-aaaaaaaaaaaa".into(), ..NewKey::default() };
    let mut served = Served::start_keys(&[key], &one_upstream(&a.base_url()), &[]).await;
    let caller = Caller { client: reqwest::Client::new(), base: served.base.clone(), token: served.token.clone() };
    assert_eq!(chat(&caller, "deepseek-chat").await, 404, "no upstream serves it yet");

    // A steady load on the first upstream, through everything below.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed, caller) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&failed), caller.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = chat(&caller, "gpt-4o-mini").await;
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The second upstream goes into the file, then a key onto it.
    let started = Instant::now();
    std::fs::write(&served.file, two_upstreams(&a.base_url(), &b.base_url())).unwrap();
    // The CLI runs off the test's runtime, so the load goes on meanwhile.
    let (ok, err) =
        tokio::task::block_in_place(|| served.cli(&["keys", "add", "sk-reload-bbbbbbbbbbbb", "--upstream", "b"]));
    assert!(ok, "keys add --upstream b: {err}");
    let deadline = started + Duration::from_secs(15);
    loop {
        if chat(&caller, "deepseek-chat").await == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the new upstream never served");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let took = started.elapsed();
    eprintln!("the added upstream and its key served {took:?} after the file was written");
    assert_eq!(b.key_stats("sk-reload-bbbbbbbbbbbb").ok, 1);

    // A broken file is refused and logged; both upstreams keep serving.
    std::fs::write(&served.file, "[[upstreams]]\nname = \"a\"\nbase_url = \"not a url\"\n").unwrap();
    served.wait_for_line("the refusal is logged", |l| l.contains("the changed configuration is refused")).await;
    assert_eq!(chat(&caller, "deepseek-chat").await, 200);
    std::fs::write(&served.file, "this is not = = toml").unwrap();
    let refusals = |s: &Served| s.lines().iter().filter(|l| l.contains("the changed configuration is refused")).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while refusals(&served) < 2 {
        assert!(Instant::now() < deadline, "the unparsable file was not refused:\n{}", served.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat(&caller, "deepseek-chat").await, 200);

    // The good file again: taken at the next looks.
    let read_again = |s: &Served| s.lines().iter().filter(|l| l.contains("configuration read again")).count();
    std::fs::write(&served.file, two_upstreams(&a.base_url(), &b.base_url())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_again(&served) < 1 {
        assert!(Instant::now() < deadline, "the restored file was not read:\n{}", served.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGHUP reads the file at once, though it did not change (so only the signal can).
    let before = read_again(&served);
    let hup = std::process::Command::new("kill").args(["-HUP", &served.pid().to_string()]).status().unwrap();
    assert!(hup.success());
    served.wait_for_line("SIGHUP is taken", |l| l.contains("SIGHUP: reading the configuration again")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_again(&served) <= before {
        assert!(Instant::now() < deadline, "SIGHUP did not read the file:\n{}", served.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(chat(&caller, "deepseek-chat").await, 200);

    // The second upstream leaves the file: its key is kept but serves nowhere.
    std::fs::write(&served.file, one_upstream(&a.base_url())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while chat(&caller, "deepseek-chat").await != 404 {
        assert!(Instant::now() < deadline, "the removed upstream still serves");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    served.wait_for_line("the orphaned key is named", |l| l.contains("serves nowhere")).await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("load: {sent} requests, {failed} failed");
    assert!(sent > 20, "the load ran: {sent}");
    assert_eq!(failed, 0, "no request of the load failed through the reloads");
}
