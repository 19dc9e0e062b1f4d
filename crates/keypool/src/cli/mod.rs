//! The command line: what each subcommand takes, and (in its submodules) how
//! it prints. This is the only place besides the demo that writes to stdout.

mod admin;
mod check;
mod db;
pub(crate) mod keys;
pub(crate) mod keytest;
pub(crate) mod list;
pub(crate) mod paste;
mod remote;
mod requests;
mod stats;
pub(crate) mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{AuthMode, Config, Overrides};
use crate::store::{database_path, Create, Store};

#[derive(Debug, Parser)]
#[command(name = "keypool", version, about = "An OpenAI-compatible gateway over a pool of API keys")]
pub struct Cli {
    /// TOML config file (default: ./keypool.toml when present). Env: KEYPOOL_CONFIG.
    #[arg(long, global = true, env = "KEYPOOL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL (default sqlite://keypool.db). Env: KEYPOOL_DATABASE_URL.
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// Log format: `text` (human-readable) or `json` (one object per line).
    /// Wins over the `telemetry.log_format` setting.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<crate::config::LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Manage upstream API keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Manage gateway tokens (what callers use as their api_key).
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Read the request log: the newest requests, or one with its attempts.
    #[command(subcommand)]
    Requests(requests::RequestsCommand),
    /// Requests, errors, tokens, spend and latency per key, token or model,
    /// over the last hour, day, week or month (from the statistics).
    Stats(stats::StatsArgs),
    /// Move the database: copy a SQLite database into PostgreSQL.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the admin token (the admin API's and the dashboard's).
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// See keypool balance a burst of traffic over rate-limited keys, with no real key.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on: 127.0.0.1:8080 (the default), localhost:8080,
    /// :8080 or 8080 (every interface, as in Go and nginx). Env: KEYPOOL_LISTEN.
    #[arg(long, value_parser = crate::config::parse_listen)]
    pub listen: Option<SocketAddr>,
    /// Upstream base URL, e.g. https://api.openai.com/v1 or a relay's. Env: KEYPOOL_UPSTREAM.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Accept requests without a gateway token (trusted local networks only).
    #[arg(long)]
    pub no_auth: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective settings (secrets masked).
    Check,
}

impl Cli {
    /// The effective configuration for this invocation.
    pub fn load_config(&self) -> Result<Config, crate::config::ConfigError> {
        let mut overrides = Overrides { database_url: self.database_url.clone(), ..Overrides::default() };
        if let Command::Serve(serve) = &self.command {
            overrides.listen = serve.listen;
            overrides.upstream = serve.upstream.clone();
            overrides.auth = serve.no_auth.then_some(AuthMode::None);
        }
        Config::load(self.config.as_deref(), &overrides)
    }
}

/// Runs a subcommand that works on the store. Each says on stderr which
/// database it uses (stdout stays clean for `--json` and `tokens create`);
/// only commands that add something create one where none exists.
pub async fn run_admin(command: &Command, config: &Config) -> anyhow::Result<()> {
    let creates = match command {
        Command::Keys(keys::KeysCommand::GenMasterKey) => return keys::gen_master_key(),
        Command::Keys(cmd) => keys::creates_database(cmd),
        Command::Tokens(cmd) => tokens::creates_database(cmd),
        Command::Requests(_) | Command::Stats(_) => false,
        Command::Admin(_) => true,
        Command::Db(cmd) => return db::run(cmd, &config.database_url).await,
        Command::Config(ConfigCommand::Check) => {
            eprintln!("database: {}", database_path(&config.database_url));
            return check::run(config).await;
        }
        Command::Serve(_) | Command::Demo(_) => return Ok(()),
    };
    let path = database_path(&config.database_url);
    // A PostgreSQL database exists before keypool (Create::Never is checked by its tables).
    let existed = crate::store::Backend::of(&config.database_url) == Some(crate::store::Backend::Postgres)
        || std::path::Path::new(&path).exists();
    let store = Store::open(&config.database_url, if creates { Create::IfMissing } else { Create::Never })
        .await?
        .with_keyring(config.keyring.clone());
    if existed {
        eprintln!("database: {path}");
    } else {
        eprintln!(
            "database: {path} (new: none existed there; to use another, pass --database-url, \
             set KEYPOOL_DATABASE_URL or database_url in keypool.toml)"
        );
    }
    let done = match command {
        Command::Keys(cmd) => keys::run(cmd, &store, config).await,
        Command::Tokens(cmd) => tokens::run(cmd, &store, config).await,
        Command::Requests(cmd) => requests::run(cmd, &store).await,
        Command::Stats(args) => stats::run(args, &store).await,
        Command::Admin(cmd) => admin::run(cmd, &store, config).await,
        _ => Ok(()),
    };
    store.close().await;
    done
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every flag and argument of every subcommand says what it is for.
    #[test]
    fn every_flag_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !matches!(id, "help" | "version") {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {}", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let mut cli = Cli::command();
        cli.build();
        walk(&cli, "keypool", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
