//! Typed configuration: built-in defaults, then the TOML file, then `KEYPOOL_*`
//! environment variables, then command-line flags; validated once at start.

mod admin;
mod alerts;
mod check;
mod cors;
mod headers;
mod listen;
mod load;
mod logging;
mod mask;
mod metrics;
pub mod models;
mod secret;
mod server;
mod upstreams;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scheduler::Strategy;

pub use admin::AdminConfig;
pub use alerts::{AlertEvent, AlertsConfig, WebhookConfig, WebhookFormat, WebhookUrl};
pub use check::{KeyFacts, Warning};
pub use cors::CorsConfig;
pub use headers::HeadersConfig;
pub use listen::parse_listen;
pub use logging::{Cidr, LogFormat, TelemetryConfig};
pub use mask::{mask_key, mask_url_password};
pub use models::{ModelConfig, ModelPrice, TimeoutsOverride};
pub use secret::{generate_admin_token, AdminToken, ADMIN_TOKEN_MIN_LEN, ADMIN_TOKEN_PREFIX};
pub use server::ServerConfig;
pub use upstreams::{
    deployment_for, AliasTarget, AliasTargets, HeaderSecret, UpstreamConfig, UpstreamKind, UpstreamLimits,
    BALANCE_INTERVAL, LEGACY_UPSTREAM_NAME,
};

/// Where the config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "keypool.toml";

/// Everything keypool can be told. Each field's doc is what `config check` and
/// the example config explain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the gateway listens on: `127.0.0.1:8080`, `localhost:8080`,
    /// `:8080` or `8080` (the last two: every interface, as in Go and nginx).
    #[serde(deserialize_with = "listen::deserialize")]
    pub listen: SocketAddr,
    /// Threads serving requests, each with its own connections (0: one per core).
    pub workers: usize,
    /// Base URL of the upstream API, including its version prefix (`/v1`).
    /// A relay with its own path prefix works: `https://relay.example.com/proxy/v1`.
    pub upstream: String,
    /// Outbound HTTP(S) proxy for upstream traffic, e.g. `http://user:pw@proxy:3128`.
    /// When unset, the standard `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` variables apply.
    pub proxy: Option<String>,
    /// Where keys, tokens and usage are stored.
    pub database_url: String,
    /// `token`: callers must present a gateway token; `none`: anyone who can reach the port may use it.
    pub auth: AuthMode,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: u64,
    /// How often the server looks for key/token changes made by the CLI and
    /// writes the usage it counted in memory.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Limits applied to keys that do not carry their own.
    pub limits: LimitsConfig,
    /// How the pool chooses keys and holds requests when every key is busy.
    pub pool: PoolConfig,
    /// Retries on another key when an attempt fails.
    pub retry: RetryConfig,
    /// Limits on how long the upstream may take.
    pub timeouts: TimeoutsConfig,
    /// Probing of unhealthy keys and of the upstream itself.
    pub health: HealthConfig,
    /// USD per million tokens, by model name prefix (`gpt-4o` means the glob
    /// `gpt-4o*`; `default` means `*`). Kept for existing files; `[models]`
    /// says the same with globs, and both follow [`models`]' one rule.
    pub prices: BTreeMap<String, Price>,
    /// Per-model settings by model-name glob (`[models."gpt-4o*"]`): timeouts
    /// and price. The rule that picks among patterns and the order of
    /// precedence (model, then upstream, then global) are in [`models`].
    pub models: BTreeMap<String, ModelConfig>,
    /// Log filter in `RUST_LOG` syntax (`RUST_LOG` itself wins when set).
    pub log: String,
    /// Warnings about `KEYPOOL_*` variables that are not settings, which
    /// loading ignored (see [`Config::warnings`]).
    #[serde(skip)]
    pub env_ignored: Vec<String>,

    /// How callers' connections are served and the server stops.
    pub server: ServerConfig,
    /// A PEM file of extra CA certificates to trust for the upstream (a
    /// private CA), besides the built-in roots and `SSL_CERT_FILE`.
    pub ca_file: Option<PathBuf>,
    /// Add `stream_options.include_usage` to chat and completions streams
    /// whose caller did not ask for usage (and hide it from them), so tokens
    /// and spend are the upstream's own count. Off: usage is counted from the
    /// streamed text. Turned off by itself for an upstream that refuses the field.
    pub stream_usage: bool,
    /// The request log: one record per caller request, written in batches
    /// off the request path.
    pub records: RecordsSettings,
    /// The IANA time zone (`Asia/Shanghai`, `UTC`) where the statistics'
    /// hours and days begin.
    pub time_zone: String,
    /// The master keys that encrypt upstream keys at rest, from
    /// `KEYPOOL_MASTER_KEY` (and `KEYPOOL_MASTER_KEY_OLD` during a
    /// rotation) only: never from the file, which often sits beside the
    /// database it would unlock. None: keys are stored in clear.
    #[serde(skip)]
    pub keyring: Option<crate::crypt::Keyring>,
    /// The admin API's bearer token (`KEYPOOL_ADMIN_TOKEN`): at least
    /// [`ADMIN_TOKEN_MIN_LEN`] characters. Unset: the token stored (as a
    /// SHA-256 digest) in the database, generated by the first `serve` or
    /// set by `keypool admin token` (see `admin::token`). Set, it wins.
    pub admin_token: Option<AdminToken>,
    /// The admin API's sign-in guard (`[admin]`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Browser pages on other origins allowed to call keypool (`[cors]`;
    /// off unless configured).
    #[serde(default)]
    pub cors: CorsConfig,
    /// What answers tell callers in their headers (`[headers]`).
    #[serde(default)]
    pub headers: HeadersConfig,
    /// Webhooks told when keys fail or the pool cannot serve (`[alerts]`).
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// A second address serving only `/metrics` (Prometheus), without auth,
    /// e.g. `127.0.0.1:9090`. Unset: `/metrics` is served only on `listen`,
    /// behind the admin API's token (see docs/metrics.md).
    #[serde(default, deserialize_with = "metrics::deserialize_listen", skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Whether `serve` collects Prometheus metrics (default on). Off, no
    /// recorder is installed, the request path records nothing for them, and
    /// `/metrics` answers 404 on both listeners.
    pub metrics: bool,
    /// keypool's own log format, trusted proxies, and trace export (`[telemetry]`).
    pub telemetry: TelemetryConfig,
    /// The APIs keys belong to (`[[upstreams]]`), the default first; empty:
    /// the single `upstream` setting above (see [`upstreams`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Model names that stand for other models, on named upstreams
    /// (`[model_aliases]`); an alias wins over an upstream's own name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_aliases: BTreeMap<String, AliasTargets>,
}

/// The request log (`[records]`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsSettings {
    /// Keep one record per caller request in the database. Off, no request
    /// is recorded, but every request still counts in the key and token
    /// totals and the statistics (the rollups).
    pub enabled: bool,
    /// Records waiting to be written at most (while the database is slow or
    /// down); past it they are dropped, counted in
    /// `keypool_records_dropped_total` and logged.
    pub buffer: usize,
    /// Records written in one transaction at most.
    pub batch: usize,
    /// A record is written at the latest this long after its request ended
    /// (when the database keeps up).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Also keep each request's body and its answer's (a streamed answer as
    /// its assembled text), each cut to `body_max_bytes`.
    pub bodies: bool,
    /// The most of each body kept, in bytes (cut at a character boundary).
    pub body_max_bytes: usize,
    /// Records older than this are deleted in the background ("0s": kept forever).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Hourly and daily statistics older than this are deleted ("0s": kept forever).
    #[serde(with = "humantime_serde")]
    pub rollup_retention: Duration,
    /// Per-minute statistics older than this are deleted ("0s": kept
    /// forever); they are many (one row per key per minute) and only the
    /// last hours' charts read them.
    #[serde(with = "humantime_serde")]
    pub minute_rollup_retention: Duration,
}

/// The most memory the records' bodies may take while they wait for the
/// database (`records.buffer` × 2 × `records.body_max_bytes`).
const BODIES_IN_BUFFER_MAX: u128 = 1 << 30;

/// A day, for the retention defaults.
const DAY: Duration = Duration::from_secs(86_400);

impl Default for RecordsSettings {
    fn default() -> RecordsSettings {
        let d = crate::records::RecordsConfig::default();
        RecordsSettings {
            enabled: true,
            buffer: d.buffer,
            batch: d.batch,
            flush_interval: d.flush_interval,
            bodies: false,
            body_max_bytes: 16 * 1024,
            retention: 30 * DAY,
            rollup_retention: 400 * DAY,
            minute_rollup_retention: 7 * DAY,
        }
    }
}

impl RecordsSettings {
    /// The writer's settings; `time_zone` was validated at load.
    pub fn writer(&self, time_zone: &str) -> crate::records::RecordsConfig {
        let tz = jiff::tz::TimeZone::get(time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
        crate::records::RecordsConfig {
            log: self.enabled,
            bodies: self.bodies.then_some(self.body_max_bytes),
            buckets: std::sync::Arc::new(crate::records::rollup::Buckets::new(tz)),
            buffer: self.buffer,
            batch: self.batch,
            flush_interval: self.flush_interval,
        }
    }
}

/// Per-key defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests per minute for a key without its own `--rpm`.
    pub rpm: Option<u32>,
    /// Tokens per minute for a key without its own `--tpm`.
    pub tpm: Option<u32>,
    /// Requests per day for a key without its own `--rpd`.
    pub rpd: Option<u32>,
    /// Requests in flight at once per key, for a key without its own `--max-inflight`.
    pub max_inflight: Option<u32>,
    /// Completion tokens assumed for a request that sets no `max_tokens`, when
    /// reserving tokens against a key's TPM.
    pub default_max_tokens: u32,
}

/// The pool's scheduling.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// least_used, round_robin, weighted, least_inflight or balance_even.
    pub strategy: Strategy,
    /// Longest a request waits for a key with room before it gets a 429.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Most requests waiting at once; past it new ones get a 429 at once.
    pub max_queue: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { strategy: Strategy::LeastUsed, max_wait: Duration::from_secs(30), max_queue: 1024 }
    }
}

/// Retry policy: which failures are retried follows the upstream's error
/// table; these settle how often and how long.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts after the first.
    pub max_retries: u32,
    /// Back-off before a retry is random in [0, min(cap, base × 2^attempt)] (full jitter).
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Whole time a request may spend in keypool before its answer starts,
    /// waits and retries included; no retry starts after it. Default 12 min:
    /// at least `timeouts.first_byte` (11 min) plus a wait for a key, so a
    /// 10-minute generation is not cut and a failure before it is retried.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Retries after a first-byte timeout, apart from `max_retries`: a
    /// generation that timed out may still be running (and billed) upstream,
    /// so it is sent again at most this often (0: never).
    pub first_byte_retries: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 3,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            deadline: Duration::from_secs(12 * 60),
            first_byte_retries: 1,
        }
    }
}

/// How long the upstream may take.
///
/// The defaults let a 10-minute generation through. The official OpenAI SDKs
/// wait up to 600 s for bytes to arrive (their read timeout, applied both
/// before the first byte and between two bytes); a non-streamed answer sends
/// nothing until the whole generation is done, and a reasoning model's stream
/// can be silent for minutes. So `first_byte` and `idle` are 11 min (the SDK's
/// 10 plus a minute of upstream queueing: the caller's own timeout fires
/// first, keypool never cuts an answer its caller still waits for), and
/// `retry.deadline` is 12 min. `connect` (10 s) and `total` (30 min, already
/// longer than any of these) do not change. Per-model overrides:
/// `[models."o1*"] timeouts = { first_byte = "20m" }` (see [`models`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// To open a connection.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From sending a request to the answer's first byte (its status line).
    /// Default 11 min (was 120 s, which cut long non-streamed generations).
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
    /// Longest silence between two chunks of an answer. Default 11 min (was
    /// 120 s), matching the SDK's read timeout.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Whole request, streaming included.
    #[serde(with = "humantime_serde")]
    pub total: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(11 * 60),
            idle: Duration::from_secs(11 * 60),
            total: Duration::from_secs(1800),
        }
    }
}

/// Health checks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// First probe of an invalid key (401/403 with a key-specific code), doubling up to an hour.
    #[serde(with = "humantime_serde")]
    pub probe_invalid: Duration,
    /// Probe interval of an exhausted key (insufficient_quota).
    #[serde(with = "humantime_serde")]
    pub probe_exhausted: Duration,
    /// Kept so that existing files load: connect failures are the
    /// upstream's (its breaker answers for them) and no longer rest a key.
    pub key_connect_failures: u32,
    /// Failures in a row, across keys, after which the upstream itself is
    /// considered down: callers get upstream_unavailable while it is probed.
    pub upstream_failures: u32,
    /// How often a down upstream is probed.
    #[serde(with = "humantime_serde")]
    pub upstream_probe: Duration,
    /// The key probe: unset, `GET models` (free); a model name, a one-token
    /// chat on that model (for relays without `/models`).
    pub probe_model: Option<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            probe_invalid: Duration::from_secs(60),
            probe_exhausted: Duration::from_secs(6 * 3600),
            key_connect_failures: 3,
            upstream_failures: 10,
            upstream_probe: Duration::from_secs(1),
            probe_model: None,
        }
    }
}

/// A model's price in USD per million tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Token,
    None,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workers: 0,
            upstream: "https://api.openai.com/v1".into(),
            proxy: None,
            database_url: "sqlite://keypool.db".into(),
            auth: AuthMode::Token,
            max_body_bytes: 64 * 1024 * 1024,
            sync_interval: Duration::from_secs(2),
            limits: LimitsConfig { rpm: None, tpm: None, rpd: None, max_inflight: None, default_max_tokens: 1024 },
            pool: PoolConfig::default(),
            retry: RetryConfig::default(),
            timeouts: TimeoutsConfig::default(),
            health: HealthConfig::default(),
            prices: BTreeMap::new(),
            models: BTreeMap::new(),
            log: "info".into(),
            env_ignored: Vec::new(),
            keyring: None,

            server: ServerConfig::default(),
            ca_file: None,
            stream_usage: true,
            records: RecordsSettings::default(),
            time_zone: "UTC".into(),
            admin_token: None,
            admin: AdminConfig::default(),
            cors: CorsConfig::default(),
            headers: HeadersConfig::default(),
            alerts: AlertsConfig::default(),
            metrics_listen: None,
            metrics: true,
            telemetry: TelemetryConfig::default(),
            upstreams: Vec::new(),
            model_aliases: BTreeMap::new(),
        }
    }
}

/// Values given on the command line; they override everything else.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthMode>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// Not `#[source]`: the message already holds figment's, and a chain
    /// printed with `{:#}` would say it twice.
    #[error("invalid configuration: {0}")]
    Parse(Box<figment::Error>),
    #[error(
        "unknown setting `{setting}` in {}{}{}",
        file.display(),
        line.map(|l| format!(", line {l}")).unwrap_or_default(),
        closest.as_ref().map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default()
    )]
    UnknownSetting { file: PathBuf, line: Option<usize>, setting: String, closest: Option<String> },
    #[error(
        "invalid setting `{setting}` in {}{}: {reason}",
        file.display(),
        line.map(|l| format!(", line {l}")).unwrap_or_default()
    )]
    InvalidInFile { file: PathBuf, line: Option<usize>, setting: String, reason: String },
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid { setting: &'static str, reason: String },
    /// `KEYPOOL_MASTER_KEY` (or `_OLD`) is set but unusable; names the variable, never its value.
    #[error(transparent)]
    MasterKey(#[from] crate::crypt::MasterKeyError),
}

impl Config {
    /// Loads defaults < file < env < overrides. An explicitly named file must
    /// exist; the default `./keypool.toml` is read only when present.
    ///
    /// An unknown key in the file is [`ConfigError::UnknownSetting`]; an
    /// unknown `KEYPOOL_*` variable is ignored and reported by [`Config::warnings`].
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        load::load(file, overrides)
    }

    /// The defaults under `text`, a config file's TOML, validated; no file,
    /// `KEYPOOL_*` variable or flag is read (the master keys neither).
    ///
    /// An unknown or invalid key is [`ConfigError::Parse`] (there is no file
    /// to name); an impossible value is [`ConfigError::Invalid`].
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        load::from_toml(text)
    }

    /// Rejects values that cannot work, naming the setting.
    /// The proxies whose `X-Forwarded-For` is believed: `telemetry.trusted_proxies`,
    /// or none with `server.proxy_protocol` on. The PROXY header then names
    /// the client, and a load balancer that passes TCP through adds no such
    /// header: believing one on top would let any client in the trusted
    /// range name any address.
    pub fn forwarded_for_from(&self) -> &[Cidr] {
        if self.server.proxy_protocol {
            &[]
        } else {
            &self.telemetry.trusted_proxies
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let upstream = reqwest::Url::parse(&self.upstream).map_err(|e| ConfigError::Invalid {
            setting: "upstream",
            reason: format!("{e} (expected e.g. https://api.openai.com/v1)"),
        })?;
        if !matches!(upstream.scheme(), "http" | "https") || upstream.cannot_be_a_base() {
            return Err(ConfigError::Invalid {
                setting: "upstream",
                reason: "must be an http:// or https:// URL".into(),
            });
        }
        if upstream.query().is_some() {
            return Err(ConfigError::Invalid { setting: "upstream", reason: "must not carry a query string".into() });
        }
        if let Some(proxy) = &self.proxy {
            reqwest::Proxy::all(proxy).map_err(|e| ConfigError::Invalid { setting: "proxy", reason: e.to_string() })?;
        }
        if crate::store::Backend::of(&self.database_url).is_none() {
            return Err(ConfigError::Invalid {
                setting: "database_url",
                reason: "must be a sqlite:// URL (e.g. sqlite://keypool.db) or a postgres:// one \
                         (e.g. postgres://keypool:PASSWORD@db.internal/keypool)"
                    .into(),
            });
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::Invalid { setting: "max_body_bytes", reason: "must be > 0".into() });
        }
        let t = &self.timeouts;
        if [t.connect, t.first_byte, t.idle, t.total, self.retry.deadline, self.health.upstream_probe]
            .iter()
            .any(Duration::is_zero)
        {
            return Err(ConfigError::Invalid {
                setting: "timeouts",
                reason: "timeouts, retry.deadline and health.upstream_probe must be > 0".into(),
            });
        }
        if self.health.probe_invalid < Duration::from_millis(100)
            || self.health.probe_exhausted < Duration::from_millis(100)
        {
            return Err(ConfigError::Invalid {
                setting: "health",
                reason: "probe_invalid and probe_exhausted must be at least 100ms".into(),
            });
        }
        if self.health.upstream_failures == 0 || self.health.key_connect_failures == 0 {
            return Err(ConfigError::Invalid {
                setting: "health",
                reason: "upstream_failures and key_connect_failures must be > 0".into(),
            });
        }
        if let Some(setting) = self.server.zero_duration() {
            return Err(ConfigError::Invalid { setting, reason: "must be > 0".into() });
        }
        self.server.validate_front(&self.telemetry.trusted_proxies)?;
        for (setting, value) in [
            ("server.max_uri_bytes", self.server.max_uri_bytes),
            ("server.max_header_bytes", self.server.max_header_bytes),
        ] {
            if value < 256 {
                return Err(ConfigError::Invalid { setting, reason: "must be at least 256 bytes".into() });
            }
        }
        if self.sync_interval.is_zero() {
            return Err(ConfigError::Invalid { setting: "sync_interval", reason: "must be > 0".into() });
        }
        for (setting, value) in [("records.buffer", self.records.buffer), ("records.batch", self.records.batch)] {
            if value == 0 {
                return Err(ConfigError::Invalid { setting, reason: "must be > 0".into() });
            }
        }
        if self.records.bodies && self.records.body_max_bytes == 0 {
            return Err(ConfigError::Invalid {
                setting: "records.body_max_bytes",
                reason: "must be > 0 when records.bodies is on".into(),
            });
        }
        // Records wait in the buffer while the database is down: with
        // bodies, each may hold two of body_max_bytes.
        let r = &self.records;
        let worst = (r.buffer as u128) * 2 * (r.body_max_bytes as u128);
        if r.bodies && worst > BODIES_IN_BUFFER_MAX {
            let fits = (BODIES_IN_BUFFER_MAX / (2 * r.body_max_bytes.max(1) as u128)).max(1);
            return Err(ConfigError::Invalid {
                setting: "records.buffer",
                reason: format!(
                    "with records.bodies on, {} records of two {}-byte bodies could hold {} MiB while the database \
                     is down (at most {} MiB): set records.buffer to {fits} or less, or lower records.body_max_bytes",
                    r.buffer,
                    r.body_max_bytes,
                    worst >> 20,
                    BODIES_IN_BUFFER_MAX >> 20
                ),
            });
        }
        if let Err(e) = jiff::tz::TimeZone::get(&self.time_zone) {
            return Err(ConfigError::Invalid {
                setting: "time_zone",
                reason: format!("{e} (expected an IANA name such as UTC or Asia/Shanghai)"),
            });
        }
        if self.records.flush_interval.is_zero() {
            return Err(ConfigError::Invalid { setting: "records.flush_interval", reason: "must be > 0".into() });
        }
        let l = &self.limits;
        if [l.rpm, l.tpm, l.rpd, l.max_inflight].contains(&Some(0)) {
            return Err(ConfigError::Invalid {
                setting: "limits",
                reason: "rpm, tpm, rpd and max_inflight must be > 0 when set (leave them out for no limit)".into(),
            });
        }
        if self.pool.max_queue == 0 && !self.pool.max_wait.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "pool.max_queue",
                reason: "must be > 0 when max_wait is set (or set max_wait = \"0s\" to never wait)".into(),
            });
        }
        if let Some((model, _)) = self.prices.iter().find(|(_, p)| !ModelPrice::from(**p).is_valid()) {
            return Err(ConfigError::Invalid {
                setting: "prices",
                reason: format!("price of {model:?} must be a non-negative number of USD per million tokens"),
            });
        }
        if let Some(reason) = self.admin_token.as_ref().and_then(AdminToken::weakness) {
            return Err(ConfigError::Invalid { setting: "admin_token", reason });
        }
        if let Some((setting, reason)) = self.cors.problem() {
            return Err(ConfigError::Invalid { setting, reason });
        }
        self.telemetry.validate()?;
        self.validate_upstreams()?;
        self.validate_models()
    }

    /// The effective config as TOML with passwords in URLs masked.
    pub fn to_masked_toml(&self) -> Result<String, toml::ser::Error> {
        let mut shown = self.clone();
        shown.database_url = mask_url_password(&shown.database_url);
        shown.upstream = mask_url_password(&shown.upstream);
        shown.proxy = shown.proxy.as_deref().map(mask_url_password);
        for u in &mut shown.upstreams {
            u.base_url = mask_url_password(&u.base_url);
            u.proxy = u.proxy.as_deref().map(mask_url_password);
            for value in u.headers.values_mut() {
                *value = HeaderSecret("***".into());
            }
        }
        shown.telemetry.otlp_endpoint = shown.telemetry.otlp_endpoint.as_deref().map(mask_url_password);
        toml::to_string(&shown)
    }
}

#[cfg(test)]
mod tests;
