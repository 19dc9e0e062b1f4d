//! `keypool tokens …`: create, list, revoke gateway tokens.

use clap::Subcommand;

use crate::server::{generate_token, hash_token};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; prints only the token (shown once, stored as a hash).
    Create {
        /// A unique name for the token (who or what uses it).
        name: String,
    },
    /// List tokens (never their value).
    List,
    /// Revoke a token; a running server refuses it within seconds.
    Revoke {
        /// The token's id, as `tokens list` shows it.
        id: i64,
    },
}

/// Whether `cmd` may create the database: only creating a token does.
pub fn creates_database(cmd: &TokensCommand) -> bool {
    matches!(cmd, TokensCommand::Create { .. })
}

/// A new gateway token and the prefix kept in clear to recognise it.
pub(crate) fn new_token() -> (String, String) {
    let token = generate_token();
    let prefix: String = token.chars().take(7).collect();
    (token, prefix)
}

pub async fn run(cmd: &TokensCommand, store: &Store) -> anyhow::Result<()> {
    match cmd {
        TokensCommand::Create { name } => {
            if name.trim().is_empty() {
                anyhow::bail!("a token needs a name (who or what uses it)");
            }
            let (token, prefix) = new_token();
            let id = store.create_token(name, &hash_token(&token), &prefix).await?;
            println!("{token}");
            eprintln!("created token {id} ({name}); it is shown only this once");
        }
        TokensCommand::List => {
            let tokens = store.list_tokens().await?;
            println!(
                "{:>4}  {:<20} {:<10} {:<8} {:>9} {:>8} {:>12} {:>12}",
                "ID", "NAME", "PREFIX", "STATUS", "REQUESTS", "FAILED", "TOKENS", "SPENT"
            );
            for t in tokens {
                let status = if t.revoked_at.is_some() { "revoked" } else { "active" };
                let u = t.usage;
                println!(
                    "{:>4}  {:<20} {:<10} {:<8} {:>9} {:>8} {:>12} {:>12}",
                    t.id,
                    t.name,
                    format!("{}…", t.prefix),
                    status,
                    u.requests,
                    u.failures,
                    u.prompt_tokens.saturating_add(u.completion_tokens),
                    format!("${:.4}", u.spent_micros as f64 / 1e6)
                );
            }
        }
        TokensCommand::Revoke { id } => {
            store.revoke_token(*id).await?;
            println!("revoked token {id}");
        }
    }
    Ok(())
}
