//! `keypool admin token`: sets a new main admin token (for the admin API
//! and the dashboard) when none is configured; `keypool admin tokens …`:
//! further admin tokens, full or read-only (for viewers). Each is printed
//! once; only its SHA-256 digest is stored.

use clap::Subcommand;

use crate::config::{generate_admin_token, AdminToken, Config};
use crate::store::{now_unix_ms, AuditEntry, Store};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Set a new main admin token; prints only the token (shown once, stored
    /// as a hash). Running servers accept it, and refuse the old one, within
    /// their sync interval.
    Token,
    /// Further admin tokens: one per person or tool, read-only for viewers.
    #[command(subcommand)]
    Tokens(AdminTokensCommand),
}

#[derive(Debug, Subcommand)]
pub enum AdminTokensCommand {
    /// Create an admin token; prints only the token (shown once, stored as a
    /// hash). Running servers accept it within their sync interval.
    Create {
        /// A unique name for the token (who or what uses it).
        name: String,
        /// A viewer's token: it sees the admin API and the dashboard (never
        /// a secret) and can change nothing.
        #[arg(long)]
        read_only: bool,
    },
    /// List the further admin tokens (never their value).
    List {
        /// One JSON object per token.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an admin token; running servers refuse it within their sync interval.
    Revoke {
        /// The token's id, as `admin tokens list` shows it.
        id: i64,
    },
}

pub async fn run(cmd: &AdminCommand, store: &Store, config: &Config) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Tokens(cmd) => tokens(cmd, store, config).await?,
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

async fn tokens(cmd: &AdminTokensCommand, store: &Store, config: &Config) -> anyhow::Result<()> {
    let audit = |action: &str, target_id: i64, details: serde_json::Value| AuditEntry {
        id: 0,
        at: now_unix_ms(),
        actor: "cli".into(),
        client_addr: None,
        action: action.to_owned(),
        target_id: Some(target_id),
        details: details.to_string(),
    };
    match cmd {
        AdminTokensCommand::Create { name, read_only } => {
            let name = name.trim();
            if name.is_empty() {
                anyhow::bail!("the admin token's name must not be empty");
            }
            let token = generate_admin_token();
            let admin = AdminToken::new(token.clone());
            let id = store.add_admin_token(name, &admin.sha256_hex(), *read_only).await?;
            let details =
                serde_json::json!({ "name": name, "read_only": read_only, "fingerprint": admin.fingerprint() });
            store.add_audit(&audit("admin_token.create", id, details)).await?;
            println!("{token}");
            eprintln!(
                "created {} admin token {id} {name:?} ({}); it is shown only this once. Running servers accept \
                 it within their sync interval ({:?})",
                if *read_only { "a read-only" } else { "an" },
                admin.fingerprint(),
                config.sync_interval
            );
        }
        AdminTokensCommand::List { json } => {
            let list = store.admin_tokens().await?;
            if !json {
                println!(
                    "{:>4}  {:<24} {:<10} {:<15} {:<8} {:<20}",
                    "ID", "NAME", "ROLE", "FINGERPRINT", "STATUS", "CREATED"
                );
            }
            for t in list {
                let role = if t.read_only { "viewer" } else { "admin" };
                let fingerprint =
                    AdminToken::from_sha256_hex(&t.sha256).map_or_else(|| "?".to_owned(), |a| a.fingerprint());
                let status = if t.revoked_at.is_some() { "revoked" } else { "active" };
                if *json {
                    let line = serde_json::json!({
                        "id": t.id, "name": t.name, "role": role, "fingerprint": fingerprint,
                        "status": status, "created_at": t.created_at, "revoked_at": t.revoked_at,
                    });
                    println!("{line}");
                    continue;
                }
                let created = jiff::Timestamp::from_millisecond(t.created_at)
                    .map_or_else(|_| t.created_at.to_string(), |at| at.strftime("%Y-%m-%d %H:%M UTC").to_string());
                println!("{:>4}  {:<24} {:<10} {:<15} {:<8} {:<20}", t.id, t.name, role, fingerprint, status, created);
            }
        }
        AdminTokensCommand::Revoke { id } => {
            store.revoke_admin_token(*id).await?;
            store.add_audit(&audit("admin_token.revoke", *id, serde_json::json!({}))).await?;
            println!("revoked admin token {id}");
            eprintln!("running servers refuse it within their sync interval ({:?})", config.sync_interval);
        }
    }
    Ok(())
}
