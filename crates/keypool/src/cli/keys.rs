//! `keypool keys …`: add, import, list, edit, test, enable, disable, remove,
//! and the master key that encrypts them at rest (gen-master-key, rotate-master-key).

use std::io::Read;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::paste::{self, check_key, looks_like_provider_key, Pasted};
use crate::config::{mask_key, Config};
use secrecy::ExposeSecret;

use crate::crypt::{show_version, Keyring, MasterKey, MASTER_KEY_ENV, MASTER_KEY_OLD_ENV};
use crate::store::{now_unix, AddOutcome, KeyChange, NewKey, Reseal, Store};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add keys given as arguments (prefer `import -` to keep keys out of shell history).
    Add {
        /// The keys: any non-empty value a header can carry (`EMPTY` and `ollama` suit local servers).
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        opts: KeyOpts,
    },
    /// Add keys from a file, or `-` for stdin: one a line, or several separated by commas or
    /// spaces; quotes, a byte-order mark and CRLF are ignored; blank lines and `#` comments skipped.
    Import {
        /// The file to read, or `-` for standard input.
        file: PathBuf,
        #[command(flatten)]
        opts: KeyOpts,
    },
    /// List keys (masked) with their state as the running server knows it, and their counts.
    List {
        /// Print JSON (an array of keys) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change a key's settings (only those given; an empty text value clears it).
    Edit {
        /// The key's id, as `keys list` shows it.
        id: i64,
        #[command(flatten)]
        opts: KeyOpts,
    },
    /// Send each key (or the ones given) a minimal request and report what the upstream said.
    Test(super::keytest::TestArgs),
    /// Put a disabled key back into rotation.
    Enable {
        /// The key's id, as `keys list` shows it.
        id: i64,
    },
    /// Take a key out of rotation (kept, with its counts).
    Disable {
        /// The key's id, as `keys list` shows it.
        id: i64,
    },
    /// Delete a key.
    Rm {
        /// The key's id, as `keys list` shows it.
        id: i64,
    },
    /// Print a fresh master key (base64) for KEYPOOL_MASTER_KEY, which encrypts keys at rest.
    GenMasterKey,
    /// Re-encrypt every key under a new master key (and encrypt keys stored in clear).
    RotateMasterKey(RotateArgs),
}

/// The master keys of a rotation. Prefer the variables: a flag's value is
/// visible to other users in the process list.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The master key the keys are encrypted with now (not needed for keys stored in clear).
    #[arg(long, env = "KEYPOOL_MASTER_KEY_OLD", hide_env_values = true)]
    old: Option<String>,
    /// The master key to encrypt them with from now on.
    #[arg(long, env = "KEYPOOL_MASTER_KEY", hide_env_values = true)]
    new: Option<String>,
}

#[derive(Debug, Args)]
pub struct KeyOpts {
    /// A name to recognise the key by.
    #[arg(long)]
    label: Option<String>,
    /// Requests per minute this key allows.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rpm: Option<u32>,
    /// Tokens per minute this key allows.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    tpm: Option<u32>,
    /// Requests per day this key allows (it cools until 00:00 UTC once spent).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rpd: Option<u32>,
    /// Most requests in flight at once on this key.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_inflight: Option<u32>,
    /// Share of traffic under the `weighted` strategy.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    weight: Option<u32>,
    /// Balance in USD this key may spend (the `balance_even` strategy spends keys' budgets evenly).
    #[arg(long, value_parser = parse_usd)]
    budget: Option<u64>,
    /// When the key stops working: a duration from now (30d, 12h), a date (YYYY-MM-DD) or RFC 3339;
    /// among equals, the soonest to expire is used first.
    #[arg(long, value_parser = parse_expiry)]
    expires: Option<i64>,
    /// Sent upstream as `OpenAI-Organization` with this key (a key in several organizations).
    #[arg(long, value_parser = parse_header_text)]
    organization: Option<String>,
    /// Sent upstream as `OpenAI-Project` with this key.
    #[arg(long, value_parser = parse_header_text)]
    project: Option<String>,
    /// The upstream (an `[[upstreams]]` name) the key belongs to; without it, the default
    /// upstream (the first configured). `keys edit --upstream ""` moves a key back to the default.
    #[arg(long)]
    upstream: Option<String>,
}

impl KeyOpts {
    /// Refuses an upstream name the config does not define, listing those it does.
    fn check_upstream(&self, config: &Config) -> anyhow::Result<()> {
        let Some(name) = self.upstream.as_deref().filter(|n| !n.is_empty()) else { return Ok(()) };
        let listed = config.upstream_list();
        if !listed.iter().any(|u| u.name == name) {
            let names: Vec<&str> = listed.iter().map(|u| u.name.as_str()).collect();
            anyhow::bail!(
                "--upstream {name:?} is not configured (configured: {}); add an [[upstreams]] entry named so first",
                names.join(", ")
            );
        }
        Ok(())
    }
}

/// Text that will be sent as a header value.
pub(crate) fn parse_header_text(s: &str) -> Result<String, String> {
    if s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_owned())
    } else {
        Err("must be printable ASCII without spaces (it is sent as a header)".into())
    }
}

/// USD to micro-USD.
pub(crate) fn parse_usd(s: &str) -> Result<u64, String> {
    let usd: f64 = s.trim_start_matches('$').parse().map_err(|_| format!("{s:?} is not an amount in USD"))?;
    usd_to_micros(usd)
}

/// A budget in USD as micro-USD: a finite, non-negative amount.
pub(crate) fn usd_to_micros(usd: f64) -> Result<u64, String> {
    if !(usd.is_finite() && usd >= 0.0 && usd * 1e6 < u64::MAX as f64) {
        return Err("budget must be a non-negative amount in USD".into());
    }
    Ok((usd * 1e6).round() as u64)
}

/// An expiry to Unix seconds: a duration from now (`30d`, `12h`, `2w`,
/// humantime's forms), a date (`YYYY-MM-DD`, midnight UTC) or an RFC 3339
/// time. The one parser for keys' and tokens' expiries, in the CLI and the
/// admin API. A time not in the future is refused (nothing would ever be
/// served).
pub(crate) fn parse_expiry(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        if d.is_zero() {
            return Err(format!("{s:?} is no time at all: an expiry must be in the future"));
        }
        let secs = i64::try_from(d.as_secs()).map_err(|_| format!("{s:?} is too far away"))?;
        return now_unix().checked_add(secs.max(1)).ok_or_else(|| format!("{s:?} is too far away"));
    }
    let full = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_owned() };
    let t = humantime::parse_rfc3339_weak(&full)
        .map_err(|e| format!("{s:?}: {e} (expected a duration such as 30d, a date YYYY-MM-DD, or RFC 3339)"))?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| "date before 1970".to_owned())?.as_secs();
    let secs = i64::try_from(secs).map_err(|_| "date too far away".to_owned())?;
    if secs <= now_unix() {
        return Err(format!("{s:?} is in the past: what expired then would never be used"));
    }
    Ok(secs)
}

/// Whether `cmd` may create the database: only commands that add keys do.
pub fn creates_database(cmd: &KeysCommand) -> bool {
    matches!(cmd, KeysCommand::Add { .. } | KeysCommand::Import { .. })
}

pub async fn run(cmd: &KeysCommand, store: &Store, config: &Config) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Add { keys, opts } => {
            opts.check_upstream(config)?;
            let mut pasted = Pasted::default();
            for k in keys {
                match check_key(k) {
                    Ok(()) => pasted.keys.push((0, k.clone())),
                    Err(why) => pasted.invalid.push((0, mask_key(k), why)),
                }
            }
            add_all(store, pasted, opts).await?;
        }
        KeysCommand::Import { file, opts } => {
            opts.check_upstream(config)?;
            let mut bytes = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut bytes)?;
            } else {
                bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            }
            add_all(store, paste::parse(&String::from_utf8_lossy(&bytes)), opts).await?;
        }
        // Live from the running server when it can be asked, else as last saved.
        KeysCommand::List { json } => match super::remote::keys(config).await {
            Some(keys) => super::remote::print_keys(&keys, *json)?,
            None => super::list::list(store, *json, &config.default_upstream()).await?,
        },
        KeysCommand::Edit { id, opts } => {
            opts.check_upstream(config)?;
            let change = opts.change();
            if change.is_empty() {
                anyhow::bail!("nothing to change: give at least one option (see `keypool keys edit --help`)");
            }
            store.edit_key(*id, &change).await?;
            println!("changed key {id}");
        }
        KeysCommand::Test(args) => super::keytest::run(args, store, config).await?,
        KeysCommand::Enable { id } => {
            store.set_key_enabled(*id, true).await?;
            println!("enabled key {id}");
        }
        KeysCommand::Disable { id } => {
            store.set_key_enabled(*id, false).await?;
            println!("disabled key {id}");
        }
        KeysCommand::Rm { id } => {
            store.remove_key(*id).await?;
            println!("removed key {id}");
        }
        KeysCommand::GenMasterKey => gen_master_key()?,
        KeysCommand::RotateMasterKey(args) => rotate_master_key(args, store).await?,
    }
    Ok(())
}

/// `keys gen-master-key`: the key on stdout (so `$(…)` takes it alone), the hint on stderr.
pub fn gen_master_key() -> anyhow::Result<()> {
    println!("{}", MasterKey::generate().expose_secret());
    eprintln!(
        "hint: set {MASTER_KEY_ENV} to this value for `keypool serve` and the keys commands, and keep a copy \
         apart from the database: without it the keys cannot be read"
    );
    Ok(())
}

/// `keys rotate-master-key`: every key re-encrypted under the new master
/// key in one transaction, then each one opened with the new key alone.
async fn rotate_master_key(args: &RotateArgs, store: &Store) -> anyhow::Result<()> {
    let new = args.new.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "no new master key: set {MASTER_KEY_ENV} (or pass --new); `keypool keys gen-master-key` prints one"
        )
    })?;
    let new = MasterKey::parse(new, &format!("{MASTER_KEY_ENV} (--new)"))?;
    let old = match &args.old {
        Some(old) => Some(MasterKey::parse(old, &format!("{MASTER_KEY_OLD_ENV} (--old)"))?),
        None => None,
    };
    let keyring = Keyring { current: new.clone(), old };
    let rotating = store.clone().with_keyring(Some(keyring.clone()));
    rotating.refuse_foreign_master_keys(&keyring).await?;
    let done = rotating.reseal(Reseal::All).await?;
    let opened = store.clone().with_keyring(Some(Keyring::new(new.clone()))).list_keys().await?.len();
    println!(
        "re-encrypted {} key(s) under master key version {} ({} were in clear); all {opened} open with it",
        done.from_clear + done.from_old,
        show_version(new.version()),
        done.from_clear
    );
    if done.from_clear + done.from_old > 0 && !done.wiped {
        let why = match store.backend() {
            crate::store::Backend::Sqlite => {
                "the database's WAL could not be truncated (a reader was open); the next checkpoint clears it"
            }
            crate::store::Backend::Postgres => {
                "a transaction open for over 30 s could still see the old rows, so the rewritten table may hold \
                 them; run VACUUM FULL keys once it has ended"
            }
        };
        eprintln!("warning: {why}");
    }
    eprintln!(
        "restart the servers with {MASTER_KEY_ENV} set to the new key (and {MASTER_KEY_OLD_ENV} unset), then \
         discard the old key"
    );
    Ok(())
}

impl KeyOpts {
    /// The options given, as a change to a stored key (empty text clears).
    fn change(&self) -> KeyChange {
        let text = |v: &Option<String>| v.as_ref().map(|s| Some(s.clone()).filter(|s| !s.is_empty()));
        KeyChange {
            label: self.label.as_ref().map(|s| Some(s.clone()).filter(|s| !s.trim().is_empty())),
            rpm: self.rpm.map(Some),
            tpm: self.tpm.map(Some),
            rpd: self.rpd.map(Some),
            max_inflight: self.max_inflight.map(Some),
            weight: self.weight.map(Some),
            budget_micros: self.budget.map(Some),
            expires_at: self.expires.map(Some),
            organization: text(&self.organization),
            project: text(&self.project),
            upstream: text(&self.upstream),
        }
    }
}

/// Adds each key, reporting duplicates and unusable pieces without stopping;
/// fails (after adding the rest) when a piece was no key.
async fn add_all(store: &Store, pasted: Pasted, opts: &KeyOpts) -> anyhow::Result<()> {
    let at = |line: usize| if line > 0 { format!("line {line}: ") } else { String::new() };
    let bad = pasted.invalid.len();
    for (line, masked, why) in &pasted.invalid {
        eprintln!("{}invalid {masked}: {why}", at(*line));
    }
    let (mut added, mut dups) = (0, 0);
    for (line, secret) in pasted.keys {
        let masked = mask_key(&secret);
        if !looks_like_provider_key(&secret) {
            eprintln!(
                "{}warning: {masked} does not look like a provider's API key; kept (local servers such as \
                 vLLM and Ollama accept any)",
                at(line)
            );
        }
        let new = NewKey {
            secret,
            label: opts.label.clone(),
            rpm: opts.rpm,
            tpm: opts.tpm,
            rpd: opts.rpd,
            max_inflight: opts.max_inflight,
            weight: opts.weight,
            budget_micros: opts.budget,
            expires_at: opts.expires,
            organization: opts.organization.clone().filter(|s| !s.is_empty()),
            project: opts.project.clone().filter(|s| !s.is_empty()),
            upstream: opts.upstream.clone().filter(|s| !s.is_empty()),
        };
        match store.add_key(&new).await? {
            AddOutcome::Added(id) => {
                println!("added key {id} ({masked})");
                added += 1;
            }
            AddOutcome::Duplicate(id) => {
                println!("{}skipped duplicate of key {id} ({masked})", at(line));
                dups += 1;
            }
        }
    }
    eprintln!("{added} added, {dups} duplicates skipped, {bad} invalid");
    if bad > 0 {
        anyhow::bail!("{bad} invalid (see above); the other keys were added");
    }
    if added + dups == 0 {
        anyhow::bail!("no key given");
    }
    Ok(())
}
