//! Alerts: webhooks told when a key turns invalid or exhausted, a key's
//! or a gateway token's spend passes a share of its budget, or no key can
//! serve (and when keys can again), rate limited. Off the request path: a
//! background task looks at the scheduler's key views and the tokens'
//! budget views every `alerts.check_interval`, compares each with the last
//! look, and POSTs what changed ([`deliver`]). Never a secret: an alert
//! names a key by its id and label, a token by its id and name.

mod deliver;
mod limit;
mod tokens;
mod watch;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::AlertsConfig;
use crate::routing::Pools;
use crate::server::TokenSet;
pub use deliver::{body, text};
pub use limit::Limiter;
pub use tokens::TokenWatch;
pub use watch::{Alert, Watch};

/// How many looks at the key views the alerts task has finished (its alerts
/// handed to their webhooks); stays 0 when no webhook is configured. For
/// tests and diagnostics: a state seen by a look finished after the change.
pub type Looks = tokio::sync::watch::Receiver<u64>;

/// Starts the alerts task when a webhook is configured; it ends at `stop`.
/// It reads the keys through `scheduler`'s views and the gateway tokens'
/// budgets through `tokens`' ([`TokenSet::budget_views`]).
pub fn spawn(scheduler: Arc<Pools>, tokens: Arc<TokenSet>, config: &AlertsConfig, stop: CancellationToken) -> Looks {
    let (looked, looks) = tokio::sync::watch::channel(0);
    if !config.webhooks.is_empty() {
        tokio::spawn(run(scheduler, tokens, config.clone(), stop, looked));
    }
    looks
}

async fn run(
    scheduler: Arc<Pools>,
    tokens: Arc<TokenSet>,
    config: AlertsConfig,
    stop: CancellationToken,
    looked: tokio::sync::watch::Sender<u64>,
) {
    let client = match reqwest::Client::builder().timeout(config.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "alerts are off: the webhook client could not be built");
            return;
        }
    };
    let mut watch = Watch::new(config.budget_thresholds.clone());
    let mut token_watch = TokenWatch::new(config.budget_thresholds.clone());
    let mut limiter = Limiter::new(config.min_interval, config.max_per_minute);
    let mut tick = tokio::time::interval(config.check_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_ms = crate::store::now_unix_ms();
        let mut alerts = watch.look(&scheduler.snapshot(), now_ms);
        alerts.extend(token_watch.look(&tokens.budget_views(), now_ms));
        for mut alert in alerts {
            if !limiter.admit(&mut alert, tokio::time::Instant::now()) {
                continue;
            }
            tracing::info!(event = alert.event.as_str(), key_id = alert.key_id, token_id = alert.token_id, "alert");
            for hook in config.webhooks.iter().filter(|h| h.wants(alert.event)) {
                let send = deliver::Send {
                    client: client.clone(),
                    url: hook.url.clone(),
                    body: body(hook.format, &alert),
                    retries: config.retries,
                };
                tokio::spawn(send.run());
            }
        }
        looked.send_modify(|n| *n += 1);
    }
}
