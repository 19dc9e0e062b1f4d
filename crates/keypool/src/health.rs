//! Background health checks: invalid and exhausted keys are probed and return
//! to rotation when they answer well; a down upstream is probed until it
//! answers again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::HealthConfig;
use crate::scheduler::Scheduler;
use crate::upstream::{Breaker, ProbeRequest, Upstream};

/// Probes unhealthy keys when their probe is due, with the configured probe
/// request (`GET models` by default; see `upstream::probe` for what each
/// answer proves).
pub async fn probe_keys(scheduler: Arc<Scheduler>, upstream: Upstream, config: HealthConfig, stop: CancellationToken) {
    // Keys become unhealthy at any time; look at least this often for new due probes.
    let look_every = config.probe_invalid.min(Duration::from_secs(1));
    let how = ProbeRequest::from_model(config.probe_model.as_deref());
    loop {
        let next = scheduler.next_probe_at().unwrap_or_else(|| Instant::now() + look_every);
        let wake = next.min(Instant::now() + look_every);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.cancelled() => return,
        }
        for (id, secret) in scheduler.due_probes() {
            let probed = upstream.probe_key(&secret, &how, Duration::from_secs(10)).await;
            tracing::debug!(key_id = id, ?probed, "probed key");
            scheduler.probe_result(id, probed);
        }
    }
}

/// While the upstream's breaker is open, checks every `every` whether the
/// upstream answers; closes the breaker as soon as it does.
pub async fn probe_upstream(
    breaker: Arc<Breaker>,
    scheduler: Arc<Scheduler>,
    upstream: Upstream,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = breaker.opened() => {}
            _ = stop.cancelled() => return,
        }
        while breaker.is_open() {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            if upstream.reachable(every.max(Duration::from_millis(500))).await {
                scheduler.forgive_connect_failures();
                breaker.close();
            }
        }
    }
}

/// Reads each enabled key's balance from the provider every `every` (its
/// first read at once), and gives it to the scheduler: `balance_even`
/// spends by it, and a key at zero gets no request. A read that fails
/// leaves the last one in force.
pub async fn read_balances(
    scheduler: Arc<Scheduler>,
    upstream: Upstream,
    api: &'static dyn crate::upstream::providers::BalanceApi,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        for (id, secret, account) in scheduler.enabled_keys() {
            if stop.is_cancelled() {
                return;
            }
            match upstream.balance(api, id, &secret, &account, Duration::from_secs(10)).await {
                Some(balance) => {
                    tracing::debug!(key_id = id, micros = balance.micros, "read the key's balance");
                    scheduler.set_balance(id, balance.micros);
                }
                None => tracing::debug!(key_id = id, "the provider did not tell the key's balance"),
            }
        }
    }
}
