//! `keypool admin token`: sets a new admin token (for the admin API and the
//! dashboard) when none is configured; prints it once, stores its SHA-256
//! digest only.

use clap::Subcommand;

use crate::config::{generate_admin_token, AdminToken, Config};
use crate::store::{now_unix_ms, AuditEntry, Store};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Set a new admin token; prints only the token (shown once, stored as
    /// a hash). Running servers accept it, and refuse the old one, within
    /// their sync interval.
    Token,
}

pub async fn run(cmd: &AdminCommand, store: &Store, config: &Config) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Token => {
            let token = generate_admin_token();
            let admin = AdminToken::new(token.clone());
            store.set_admin_token_hash(&admin.sha256_hex()).await?;
            store
                .add_audit(&AuditEntry {
                    id: 0,
                    at: now_unix_ms(),
                    actor: "cli".into(),
                    client_addr: None,
                    action: "admin.token".into(),
                    target_id: None,
                    details: serde_json::json!({ "fingerprint": admin.fingerprint() }).to_string(),
                })
                .await?;
            println!("{token}");
            eprintln!(
                "set a new admin token ({}); it is shown only this once. Running servers take it within \
                 their sync interval ({:?}); sign in to the dashboard at /admin with it",
                admin.fingerprint(),
                config.sync_interval
            );
            if config.admin_token.is_some() {
                eprintln!(
                    "note: the `admin_token` setting (KEYPOOL_ADMIN_TOKEN) is configured here and wins: servers \
                     started with it keep using it, not this one"
                );
            }
        }
    }
    Ok(())
}
