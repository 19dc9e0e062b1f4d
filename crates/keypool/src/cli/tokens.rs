//! `keypool tokens …`: create, list, revoke gateway tokens.

use clap::Subcommand;

use crate::config::Config;
use crate::server::{generate_token, hash_token};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token; prints only the token (shown once, stored as a hash).
    Create { name: String },
    /// List tokens (never their value).
    List,
    /// Revoke a token; a running server refuses it within seconds.
    Revoke { id: i64 },
}

pub async fn run(cmd: &TokensCommand, config: &Config) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url).await?;
    match cmd {
        TokensCommand::Create { name } => {
            let token = generate_token();
            let prefix: String = token.chars().take(7).collect();
            let id = store.create_token(name, &hash_token(&token), &prefix).await?;
            println!("{token}");
            eprintln!("created token {id} ({name}); it is shown only this once");
        }
        TokensCommand::List => {
            let tokens = store.list_tokens().await?;
            println!("{:>4}  {:<20} {:<10} {:<8}", "ID", "NAME", "PREFIX", "STATUS");
            for t in tokens {
                let status = if t.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{:>4}  {:<20} {:<10} {:<8}", t.id, t.name, format!("{}…", t.prefix), status);
            }
        }
        TokensCommand::Revoke { id } => {
            store.revoke_token(*id).await?;
            println!("revoked token {id}");
        }
    }
    store.close().await;
    Ok(())
}
