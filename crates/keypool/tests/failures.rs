//! Failures never reach the caller while the pool can still answer: retries
//! on another key, timeouts, cancellation, key health, and the upstream's own
//! outages, all against the simulator's fault injection over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{chat, key, spawn};
use futures_util::StreamExt;
use keypool_sim::{Faults, KeyState, SimConfig, SimKey, Simulator};
use tokio::time::Instant;

fn sim_keys(names: &[&str]) -> SimConfig {
    SimConfig { keys: names.iter().map(|n| SimKey::new(*n)).collect(), ..SimConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_requests_through_500s_resets_and_hangs_nearly_all_succeed() {
    let names = ["sk-flaky-aaaaaaaaaaa", "sk-flaky-bbbbbbbbbbb", "sk-flaky-ccccccccccc", "sk-flaky-ddddddddddd"];
    let sim = SimConfig {
        faults: Faults {
            error_500_rate: 0.10,
            reset_rate: 0.05,
            hang_rate: 0.03,
            hang_for: Duration::from_secs(3),
            ..Faults::default()
        },
        ..sim_keys(&names)
    };
    let app = spawn(sim, names.iter().map(|n| key(n, None)).collect(), |c| {
        c.timeouts.first_byte = Duration::from_millis(300);
        c.retry.max_retries = 5;
        // The simulator's hangs are not generations running on: resend them
        // as often as other failures (the default resends a timeout once).
        c.retry.first_byte_retries = 5;
        c.retry.backoff_base = Duration::from_millis(5);
        c.retry.backoff_cap = Duration::from_millis(50);
    })
    .await;
    let ok = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (ok, next, client, url, token) = (
                Arc::clone(&ok),
                Arc::clone(&next),
                app.client.clone(),
                app.url("chat/completions"),
                app.token.clone(),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < 2000 {
                    let resp = client.post(&url).bearer_auth(&token).json(&chat("hi")).send().await.unwrap();
                    if resp.status() == 200 && resp.bytes().await.is_ok() {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok >= 1998, "at least 99.9% succeed: {ok} of 2000");
    let stats = app.sim.stats();
    let (errors, resets, hangs): (u64, u64, u64) =
        stats.keys.values().fold((0, 0, 0), |a, k| (a.0 + k.server_errors, a.1 + k.resets, a.2 + k.hangs));
    assert!(errors > 100 && resets > 50 && hangs > 20, "the faults really happened: {errors} {resets} {hangs}");
    let views = app.gateway.scheduler().snapshot();
    assert!(views.iter().all(|v| v.status == "active" || v.status == "cooling"), "no key blamed: {views:?}");
}

#[tokio::test]
async fn refused_keys_are_marked_at_once_and_return_after_healing_and_a_probe() {
    let names = ["sk-heal-dead-aaaaaaa", "sk-heal-poor-aaaaaaa", "sk-heal-good-aaaaaaa"];
    let app = spawn(sim_keys(&names), names.iter().map(|n| key(n, None)).collect(), |c| {
        c.health.probe_invalid = Duration::from_millis(200);
        c.health.probe_exhausted = Duration::from_millis(200);
    })
    .await;
    app.sim.set_key_state(names[0], KeyState::Invalid);
    app.sim.set_key_state(names[1], KeyState::InsufficientQuota);
    for i in 0..12 {
        let resp = app.post("chat/completions").json(&chat(&format!("q{i}"))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "retried onto the good key");
    }
    // One 401 and one insufficient_quota each, then no further traffic.
    assert_eq!(app.sim.key_stats(names[0]).requests, 1);
    assert_eq!(app.sim.key_stats(names[1]).requests, 1);
    let status =
        |app: &common::TestApp| app.gateway.scheduler().snapshot().iter().map(|v| v.status).collect::<Vec<_>>();
    assert_eq!(status(&app)[..2], ["invalid", "exhausted"]);
    // Probes keep failing while the keys are bad...
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&app)[..2], ["invalid", "exhausted"]);
    // ...and the keys return once the upstream takes them again.
    app.sim.set_key_state(names[0], KeyState::Active);
    app.sim.set_key_state(names[1], KeyState::Active);
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&app) != ["active", "active", "active"] {
        assert!(Instant::now() < deadline, "keys never came back: {:?}", status(&app));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..9 {
        assert_eq!(app.post("chat/completions").json(&chat(&format!("r{i}"))).send().await.unwrap().status(), 200);
    }
    assert!(app.sim.key_stats(names[0]).ok > 0 && app.sim.key_stats(names[1]).ok > 0, "back in rotation");
}

#[tokio::test]
async fn a_stream_failing_after_its_first_byte_ends_with_an_error_event_and_done_without_retry() {
    let sim = SimConfig {
        stream_chunks: 6,
        faults: Faults { fail_stream_after_chunks: Some(2), ..Faults::default() },
        ..sim_keys(&["sk-midfail-aaaaaaaaa", "sk-midfail-bbbbbbbbb"])
    };
    let app = spawn(sim, vec![key("sk-midfail-aaaaaaaaa", None), key("sk-midfail-bbbbbbbbb", None)], |_| {}).await;
    let mut body = chat("stream then fail");
    body["stream"] = true.into();
    let text = app.post("chat/completions").json(&body).send().await.unwrap().text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.trim().is_empty()).collect();
    assert!(events.len() >= 3, "{text}");
    assert!(events[events.len() - 2].starts_with("data: {\"error\""), "an error event before the end: {text}");
    assert_eq!(events[events.len() - 1].trim(), "data: [DONE]");
    assert_eq!(app.sim.stats().total_requests, 1, "nothing is retried after the first byte");
}

#[tokio::test]
async fn a_stream_that_goes_silent_past_the_idle_timeout_ends_with_an_error_event() {
    let sim = SimConfig {
        stream_chunks: 4,
        chunk_interval: Duration::from_millis(800),
        ..sim_keys(&["sk-idle-aaaaaaaaaaaa"])
    };
    let app =
        spawn(sim, vec![key("sk-idle-aaaaaaaaaaaa", None)], |c| c.timeouts.idle = Duration::from_millis(200)).await;
    let mut body = chat("slow stream");
    body["stream"] = true.into();
    let text = app.post("chat/completions").json(&body).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("stream_interrupted") && text.contains("no data for"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[tokio::test]
async fn a_caller_leaving_mid_stream_closes_the_upstream_within_100ms() {
    let sim = SimConfig {
        stream_chunks: 200,
        chunk_interval: Duration::from_millis(10),
        ..sim_keys(&["sk-leave-aaaaaaaaaaa"])
    };
    let app = spawn(sim, vec![key("sk-leave-aaaaaaaaaaa", None)], |_| {}).await;
    let mut body = chat("long stream");
    body["stream"] = true.into();
    let resp = app.post("chat/completions").json(&body).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
    }
    drop(stream);
    let left = Instant::now();
    while app.sim.key_stats("sk-leave-aaaaaaaaaaa").streams_cancelled == 0 {
        assert!(left.elapsed() < Duration::from_millis(100), "the upstream stream was not closed within 100 ms");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The key's reservation is given back and the request recorded as cancelled, not failed.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let v = &app.gateway.scheduler().snapshot()[0];
        if v.inflight == 0 {
            assert_eq!((v.requests, v.failures), (1, 0), "{v:?}");
            break;
        }
        assert!(Instant::now() < deadline, "reservation never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_400_from_upstream_reaches_the_caller_unchanged_after_one_attempt() {
    let error = r#"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
    let sim = SimConfig {
        faults: Faults { status_override: Some((400, error.to_owned())), ..Faults::default() },
        ..sim_keys(&["sk-c400-aaaaaaaaaaaa", "sk-c400-bbbbbbbbbbbb"])
    };
    let app = spawn(sim, vec![key("sk-c400-aaaaaaaaaaaa", None), key("sk-c400-bbbbbbbbbbbb", None)], |_| {}).await;
    let resp = app.post("chat/completions").json(&chat("far too long")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.unwrap(), error, "byte for byte");
    assert_eq!(app.sim.stats().total_requests, 1, "exactly one attempt");
    assert!(app.gateway.scheduler().snapshot().iter().all(|v| v.failures == 0 && v.status == "active"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_down_for_20s_blames_no_key_and_traffic_resumes_within_2s() {
    let names = ["sk-outage-aaaaaaaaaa", "sk-outage-bbbbbbbbbb", "sk-outage-cccccccccc"];
    // This test's own upstream, which it stops and restarts on the same port.
    let upstream = Simulator::start(sim_keys(&names)).await.unwrap();
    let addr = upstream.addr();
    let base = upstream.base_url();
    let app = spawn(SimConfig::default(), names.iter().map(|n| key(n, None)).collect(), |c| {
        c.upstream = base;
        c.pool.max_wait = Duration::from_secs(3);
        c.retry.backoff_cap = Duration::from_millis(200);
    })
    .await;
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::<(Instant, u16, String)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (outcomes, stop, client, url, token) = (
                Arc::clone(&outcomes),
                Arc::clone(&stop),
                app.client.clone(),
                app.url("chat/completions"),
                app.token.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let resp = client.post(&url).bearer_auth(&token).json(&chat("hi")).send().await.unwrap();
                    let status = resp.status().as_u16();
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
                    outcomes.lock().unwrap().push((Instant::now(), status, code));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The upstream goes away: connections are refused for 20 s.
    drop(upstream);
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut restarted = None;
    for _ in 0..50 {
        match Simulator::start(SimConfig { listen: Some(addr), ..sim_keys(&names) }).await {
            Ok(s) => {
                restarted = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let back = restarted.expect("the simulator restarts on its old port");
    let up_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let during: Vec<_> =
        outcomes.iter().filter(|(t, _, _)| *t > down_at + Duration::from_secs(1) && *t < up_at).collect();
    assert!(!during.is_empty());
    for (_, status, code) in &during {
        assert!(
            *status == 200 || code == "upstream_unavailable" || code == "upstream_failed",
            "a clear upstream error during the outage, got {status} {code}"
        );
    }
    assert!(during.iter().any(|(_, _, code)| code == "upstream_unavailable"), "the breaker answered for the upstream");
    let first_ok_after = outcomes.iter().filter(|(t, s, _)| *t > up_at && *s == 200).map(|(t, _, _)| *t).min();
    let resumed = first_ok_after.expect("traffic resumed") - up_at;
    assert!(resumed <= Duration::from_secs(2), "traffic resumed {resumed:?} after the upstream returned");
    assert!(back.stats().total_requests > 0);
    let views = app.gateway.scheduler().snapshot();
    assert!(
        views.iter().all(|v| v.status != "invalid" && v.status != "exhausted"),
        "no key blamed for the upstream's outage: {views:?}"
    );
}
