//! Assembles a running gateway: store, scheduler, token set, upstream client
//! and router, plus the background task that syncs them with the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::records::{Recorder, WriterHandle};
use crate::routing::Pools;
use crate::server::{router, worker_count, AppState, Edge, TokenSet};
use crate::store::{SavedKeyState, Store, StoreError};

/// A gateway serving on a bound address until [`Running::shutdown`].
pub struct Running {
    addr: SocketAddr,
    /// `https` when the listener speaks TLS (`server.tls_cert`), else `http`.
    scheme: &'static str,
    /// Where `/metrics` is served without auth (`metrics_listen`), once bound.
    metrics_addr: Option<SocketAddr>,
    pools: Arc<Pools>,
    stop: CancellationToken,
    /// Ended (`GraceEnd::end`) when the stop's grace has passed: open answers are ended.
    ending: crate::server::GraceEnd,
    /// Cancelled to stop at once (a second signal): no more waiting for
    /// requests, only the usage totals are written.
    hurry: CancellationToken,
    grace: Duration,
    server: JoinHandle<std::io::Result<()>>,
    /// Stopped after the server, so usage of requests finishing during the
    /// shutdown is in the last write.
    sync_stop: CancellationToken,
    sync: JoinHandle<()>,
    /// The request log's writer, stopped once no request can end any more.
    writer: Option<WriterHandle>,
    recorder: Recorder,
    store: Store,
    alert_looks: crate::alerts::Looks,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound `metrics_listen` address (its port chosen when 0 was asked).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Base URL callers use, e.g. `http://127.0.0.1:8080/v1` (`https://`
    /// with TLS).
    pub fn base_url(&self) -> String {
        format!("{}://{}/v1", self.scheme, self.addr)
    }

    /// Every upstream's key pool (the live key state).
    pub fn scheduler(&self) -> &Arc<Pools> {
        &self.pools
    }

    /// Where requests' records go (its counts show what was written and dropped).
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The alerts task's count of finished looks ([`crate::alerts::Looks`]).
    pub fn alert_looks(&self) -> crate::alerts::Looks {
        self.alert_looks.clone()
    }

    /// How long a stop lets requests in flight finish (`server.shutdown_grace`).
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// A handle that makes a [`Running::shutdown`] under way stop at once:
    /// open answers end, and only the usage totals are still written.
    pub fn hurry(&self) -> CancellationToken {
        self.hurry.clone()
    }

    /// Stops accepting, lets open requests finish for at most
    /// `server.shutdown_grace` (or until [`Running::hurry`]), then ends those
    /// still open (event streams with an error event, waiting requests with
    /// 503), then writes every request record still queued (until the
    /// grace, [`ENDING_WAIT`] and [`LAST_WRITE`] have passed since the stop
    /// began, or for 0.8 s once hurried) and the last usage totals.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let stopping = tokio::time::Instant::now();
        self.stop.cancel();
        let mut server = self.server;
        let mut served = tokio::select! {
            served = &mut server => Some(served),
            _ = tokio::time::sleep(self.grace) => None,
            _ = self.hurry.cancelled() => None,
        };
        if served.is_none() {
            tracing::warn!(grace = ?self.grace, "requests still open after the shutdown grace; ending them");
            self.ending.end();
            // Ended answers close their connections at once; a connection that
            // still does not end (its caller does not read) is left behind.
            served = tokio::select! {
                served = &mut server => Some(served),
                _ = tokio::time::sleep(ENDING_WAIT) => None,
                _ = self.hurry.cancelled() => None,
            };
        }
        // The records and the usage totals are written side by side, so
        // neither waits on the other's database trouble.
        let last_write =
            (stopping + self.grace + ENDING_WAIT + LAST_WRITE).max(tokio::time::Instant::now() + MIN_LAST_WRITE);
        let records = async {
            if let Some(writer) = self.writer {
                writer.stop(last_write, self.hurry.clone()).await;
            }
        };
        self.sync_stop.cancel();
        let ((), synced) = tokio::join!(records, self.sync);
        // Closed once both are done: they share its connections.
        self.store.close().await;
        synced?;
        match served {
            Some(served) => served??,
            None => tracing::warn!("some connections were still open when keypool stopped"),
        }
        Ok(())
    }
}

/// How long connections have to close once their answers were ended.
const ENDING_WAIT: Duration = Duration::from_secs(2);
/// What the request log's last write may take past the grace and
/// [`ENDING_WAIT`] (a database that is down is retried until then): with the
/// default 25 s grace the whole stop ends within 29 s, inside Kubernetes'
/// 30 s before SIGKILL.
const LAST_WRITE: Duration = Duration::from_secs(2);
/// The least the last write gets, however long the stop took before it.
const MIN_LAST_WRITE: Duration = Duration::from_secs(1);

/// Opens the store, loads keys and tokens, binds `config.listen` and serves.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    start_with(config, None).await
}

/// [`start`], then keeps the upstreams in step with `source` (the config
/// file, watched, and `SIGHUP`; see [`crate::reload`]) when given.
pub async fn start_with(config: &Config, source: Option<crate::reload::Source>) -> anyhow::Result<Running> {
    let store = Store::connect(&config.database_url).await?.with_keyring(config.keyring.clone());
    store.protect_keys_at_start().await?;
    let keys: Vec<crate::config::KeyFacts> = store.list_keys().await?.iter().map(Into::into).collect();
    for warning in config.warnings(Some(&keys)) {
        tracing::warn!("{warning}");
    }
    let stop = CancellationToken::new();
    let pools = Arc::new(Pools::new(config, &stop));

    let tokens = Arc::new(TokenSet::default());
    // With `records.enabled` off the writer still runs: it keeps the
    // totals and statistics, without the log's rows.
    let (recorder, writer) = crate::records::spawn(store.clone(), config.records.writer(&config.time_zone));
    let writer = Some(writer);
    let sync_store = store.clone();
    let resync = Arc::new(crate::admin::Resync::default());
    // The admin API is always on: with no `admin_token` setting, behind the
    // token stored in the database (generated now if there is none).
    let admin_token = crate::admin::token::at_start(config.admin_token.clone(), &store).await?;
    // The admin API and /metrics each count wrong tokens on their own, so
    // a flood at one cannot lock the other out.
    let new_gate = || {
        Arc::new(crate::admin::Gate::new(
            Arc::clone(&admin_token.live),
            config.admin.sign_in_attempts_per_minute,
            config.forwarded_for_from().to_vec(),
        ))
    };
    let gate = new_gate();
    let admin = crate::admin::router(Arc::new(crate::admin::AdminState {
        store: store.clone(),
        pools: Arc::clone(&pools),
        gate: Arc::clone(&gate),
        resync: Arc::clone(&resync),
        main: tokio::runtime::Handle::current(),
        config: Arc::new(config.clone()),
    }));
    let keys_lock: crate::reload::KeysLock = Arc::default();
    let mut sync = Sync {
        resync,
        store,
        keys_lock: Arc::clone(&keys_lock),
        pools: Arc::clone(&pools),
        tokens: Arc::clone(&tokens),
        revision: None,
        saved: HashMap::new(),
        tz: jiff::tz::TimeZone::get(&config.time_zone).unwrap_or(jiff::tz::TimeZone::UTC),
    };
    sync.reload_if_changed().await?;
    sync.restore_key_states().await?;
    // Build the tokenizer off the request path when it will be needed (a
    // key learning a TPM limit later starts the build on first use).
    if pools.counts_tokens() || !config.prices.is_empty() {
        crate::tokens::start_building();
    }
    let counts = pools.census();
    if counts.total() > 0 && counts.usable() == 0 {
        tracing::warn!("no key can serve yet: {}", counts.describe());
    } else if counts.total() == 0 {
        tracing::warn!(
            "no upstream keys yet: add one with `keypool keys add sk-...` (or `keypool keys import FILE`); \
             this server picks it up within {:?}, no restart needed",
            config.sync_interval
        );
    }
    // Every upstream's client is built once here, so a bad proxy or CA file stops the start.
    let probe_clients = crate::server::Clients::build(&pools.load(), config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("could not listen on {} (the `listen` setting)", config.listen))?;
    let addr = listener.local_addr()?;
    announce_admin_token(&admin_token, config, addr);
    // /metrics: on the main listener behind the admin API's token.
    let scrape = crate::metrics::Scrape { pools: Arc::clone(&pools), recorder: recorder.clone() };
    let metrics = crate::metrics::router(scrape.clone(), Some(new_gate()));
    // Each worker has its own upstream client, so pooled upstream connections
    // stay on the thread that uses them.
    let affinity =
        Arc::new(crate::routing::Affinity::new(Some(sync_store.clone()), Some(tokio::runtime::Handle::current())));
    let make_router = || -> anyhow::Result<axum::Router> {
        let clients = crate::server::Clients::build(&pools.load(), config)?;
        let gateway = router(Arc::new(AppState {
            pools: Arc::clone(&pools),
            tokens: Arc::clone(&tokens),
            clients: std::sync::Mutex::new(Arc::new(clients)),
            config: config.clone(),
            prices: crate::config::models::PriceCache::default(),
            recorder: recorder.clone(),
            affinity: Arc::clone(&affinity),
            store: sync_store.clone(),
            main: tokio::runtime::Handle::current(),
        }));
        // The admin API under /admin/api/, and /metrics behind its token.
        Ok(gateway.merge(admin.clone()).merge(metrics.clone()))
    };
    let metrics_addr = match config.metrics_listen {
        Some(at) => Some(serve_metrics(at, scrape, stop.clone()).await?),
        None => None,
    };
    let ending = crate::server::GraceEnd::default();
    let edge = Edge {
        config: config.server.clone(),
        ending: ending.clone(),
        trusted_proxies: config.telemetry.trusted_proxies.clone(),
    };
    let server = crate::server::serve(listener, worker_count(config.workers), make_router, stop.clone(), edge)?;
    let sync_stop = CancellationToken::new();
    let sync = tokio::spawn(sync.run(config.sync_interval, sync_stop.clone()));
    let r = &config.records;
    let retention = crate::records::retention::Retention {
        records: r.retention,
        rollups: r.rollup_retention,
        minute_rollups: r.minute_rollup_retention,
    };
    tokio::spawn(crate::admin::token::follow(
        Arc::clone(&admin_token.live),
        sync_store.clone(),
        config.sync_interval,
        stop.clone(),
    ));
    tokio::spawn(crate::records::retention::run(sync_store.clone(), retention, stop.clone()));
    // Each upstream's keys are probed, and the upstream itself, with its own client.
    for (pool, client) in pools.load().all().iter().zip(probe_clients.into_list()) {
        crate::reload::spawn_probes(pool, client, config);
    }
    if let Some(source) = source {
        let asked = Arc::new(tokio::sync::Notify::new());
        #[cfg(unix)]
        tokio::spawn(hangups(Arc::clone(&asked), stop.clone()));
        tokio::spawn(crate::reload::watch(
            source,
            config.clone(),
            Arc::clone(&pools),
            sync_store.clone(),
            keys_lock,
            stop.clone(),
            asked,
        ));
    }
    let alert_looks = crate::alerts::spawn(Arc::clone(&pools), Arc::clone(&tokens), &config.alerts, stop.clone());
    Ok(Running {
        addr,
        scheme: config.server.scheme(),
        metrics_addr,
        pools,
        stop,
        ending,
        hurry: CancellationToken::new(),
        grace: config.server.shutdown_grace,
        server,
        sync_stop,
        sync,
        writer,
        recorder,
        store: sync_store,
        alert_looks,
    })
}

/// Asks for a reload on each `SIGHUP` until `stop`.
#[cfg(unix)]
async fn hangups(asked: Arc<tokio::sync::Notify>, stop: CancellationToken) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("SIGHUP cannot be caught here: reloads follow the config file only");
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => match got {
                Some(()) => {
                    tracing::info!("SIGHUP: reading the configuration again");
                    asked.notify_one();
                }
                None => return,
            },
        }
    }
}

/// Serves `/metrics` without auth on `at` (`metrics_listen`) until `stop`;
/// any other path is 404. Returns the bound address.
async fn serve_metrics(
    at: SocketAddr,
    scrape: crate::metrics::Scrape,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(at)
        .await
        .with_context(|| format!("could not listen on {at} (the `metrics_listen` setting)"))?;
    let addr = listener.local_addr()?;
    let app = crate::metrics::router(scrape, None);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics listener (metrics_listen) stopped");
        }
    });
    tracing::info!("metrics on http://{addr}/metrics (metrics_listen, no auth)");
    Ok(addr)
}

/// Shows a token generated at this start once, on stderr (never in the
/// log), with the dashboard's address; else says which token is in force.
fn announce_admin_token(token: &crate::admin::token::StartToken, config: &Config, addr: SocketAddr) {
    let mut shown = addr;
    if shown.ip().is_unspecified() {
        shown.set_ip(if shown.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let scheme = config.server.scheme();
    match &token.generated {
        Some(secret) => eprintln!(
            "\nadmin token (shown only this once; only its hash is stored): {secret}\n\
             dashboard: {scheme}://{shown}/admin (sign in with the admin token)\n\
             lost it? `keypool admin token` sets a new one; this server takes it within {:?}\n",
            config.sync_interval
        ),
        None if token.live.is_configured() => {
            tracing::info!(
                "admin API and dashboard at {scheme}://{shown}/admin (admin token: the `admin_token` setting)"
            )
        }
        None => tracing::info!(
            "admin API and dashboard at {scheme}://{shown}/admin, with the admin token printed at the first start \
             (`keypool admin token` sets a new one)"
        ),
    }
}

/// Keeps the in-memory state and the store in step: what the scheduler
/// learned about keys goes out, operator changes (from the CLI) come in.
/// (Usage totals are the record writer's: summed from the request records,
/// a key's in their transaction, a token's with the statistics.)
struct Sync {
    store: Store,
    /// Shared with the config reload (see [`crate::reload::KeysLock`]).
    keys_lock: crate::reload::KeysLock,
    pools: Arc<Pools>,
    tokens: Arc<TokenSet>,
    revision: Option<i64>,
    /// Key state as last written, so only changes are written again.
    saved: HashMap<i64, SavedKeyState>,
    /// Admin changes ask for a reload at once and wait for it.
    resync: Arc<crate::admin::Resync>,
    /// Where tokens' days and months begin (`time_zone`).
    tz: jiff::tz::TimeZone,
}

impl Sync {
    async fn run(mut self, every: std::time::Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.resync.asked() => {}
                _ = stop.cancelled() => break,
            }
            self.save_key_states().await;
            if let Err(e) = self.reload_if_changed().await {
                tracing::warn!(error = %e, "could not reload keys and tokens; keeping the current ones");
            }
        }
        self.save_key_states().await;
    }

    /// Takes back what an earlier run learned about the keys (before serving).
    async fn restore_key_states(&mut self) -> Result<(), StoreError> {
        let states = self.store.load_key_states().await?;
        let held_back = self.pools.restore_state(&states);
        if held_back > 0 {
            tracing::info!(keys = held_back, "keys invalid, exhausted or cooling before the restart stay so");
        }
        self.saved = states.into_iter().map(|s| (s.key_id, s)).collect();
        Ok(())
    }

    /// Writes key state that changed since the last write (health, cooling,
    /// learned limits, last minute's use), off the request path.
    async fn save_key_states(&mut self) {
        let changed: Vec<SavedKeyState> =
            self.pools.export_state().into_iter().filter(|s| self.saved.get(&s.key_id) != Some(s)).collect();
        match self.store.save_key_states(&changed).await {
            Ok(()) => self.saved.extend(changed.into_iter().map(|s| (s.key_id, s))),
            Err(e) => tracing::warn!(error = %e, "could not save key state; will retry"),
        }
    }

    async fn reload_if_changed(&mut self) -> Result<(), StoreError> {
        let revision = self.store.revision().await?;
        if self.revision == Some(revision) {
            self.resync.applied(revision);
            return Ok(());
        }
        let guard = self.keys_lock.lock().await;
        let keys = self.store.list_keys().await?;
        let tokens = self.store.list_tokens().await?;
        let orphans = self.pools.sync_keys(&keys);
        drop(guard);
        for (id, upstream) in orphans {
            tracing::warn!(
                key_id = id,
                upstream,
                "the key belongs to an upstream that is not configured; it serves nowhere until that upstream \
                 is configured again or the key is moved (`keypool keys edit ID --upstream NAME`)"
            );
        }
        let mut live = Vec::with_capacity(tokens.len());
        for t in tokens.iter().filter(|t| t.revoked_at.is_none()) {
            let period = t.settings.budget_period;
            let spent = match t.settings.budget_micros {
                Some(_) if self.tokens.needs_spend(t.id, period) => Some(match period {
                    crate::tenants::BudgetPeriod::Total => t.usage.spent_micros,
                    _ => {
                        let (start, _) = crate::tenants::period_bounds(period, &self.tz, crate::store::now_unix());
                        self.store.token_spent_since(t.id, start).await?
                    }
                }),
                _ => None,
            };
            live.push(crate::server::LiveToken {
                id: t.id,
                name: &t.name,
                hash: &t.hash,
                settings: t.settings.clone(),
                spent,
            });
        }
        self.tokens.replace(live, &self.tz);
        tracing::info!(
            keys = keys.len(),
            enabled = keys.iter().filter(|k| k.enabled).count(),
            tokens = tokens.iter().filter(|t| t.revoked_at.is_none()).count(),
            "loaded keys and tokens"
        );
        self.revision = Some(revision);
        self.resync.applied(revision);
        Ok(())
    }
}
