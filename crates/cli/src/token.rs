//! `tenantsync token create | list | revoke`: API tokens, kept in the master store (as hashes).
//! They open only the store, so they work while `serve` runs.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tenantsync_api::admin::{self, CreateTokenError};
use tenantsync_auth::Scope;
use tenantsync_core::TokenName;
use tenantsync_store::MasterStore;

use tenantsync::backends::open_store;
use tenantsync::config::{ServeArgs, Settings};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it, once, as the last line of the output.
    Create(CreateArgs),
    /// List tokens: names, scopes and creation times (never the tokens themselves).
    List(StoreArgs),
    /// Revoke a token by name; requests carrying it are refused from then on, and its open
    /// streams and long-polls on every running instance end within seconds.
    Revoke(RevokeArgs),
}

/// Where the tokens are: the same store `serve` uses, found the same way.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// TOML configuration file (only its store settings are used).
    #[arg(long, env = "TENANTSYNC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory whose SQLite store holds the tokens [default: ./tenantsync-data].
    #[arg(long, env = "TENANTSYNC_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The master store: sqlite://FILE or postgres://USER@HOST:PORT/DB [default: sqlite://DATA_DIR/store.sqlite3].
    // May hold a password, so --help must not show it.
    #[arg(
        long,
        env = "TENANTSYNC_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    store: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// What the token may do (repeatable): admin, read:DATASET:TENANT or write:DATASET:TENANT,
    /// with * for every dataset or every tenant.
    #[arg(long = "scope", value_name = "SCOPE", required = true, value_parser = parse_scope)]
    scopes: Vec<Scope>,
    /// A name to list and revoke it by [default: derived from the token].
    #[arg(long)]
    name: Option<TokenName>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The token's name, as `token list` shows it.
    name: TokenName,
}

/// The actor of the CLI's actions in the audit log.
const CLI: &str = "cli";

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
        .map_err(|e: tenantsync_auth::InvalidScope| e.to_string())
}

async fn store(args: StoreArgs) -> anyhow::Result<std::sync::Arc<dyn MasterStore>> {
    let settings = Settings::load(ServeArgs {
        config: args.config,
        data_dir: args.data_dir,
        store: args.store,
        ..ServeArgs::default()
    })?;
    open_store(&settings.store).await
}

pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create(args) => {
            let store = store(args.store).await?;
            let (token, minted) =
                match admin::create_token(store.as_ref(), CLI, args.name, &args.scopes).await {
                    Ok(created) => created,
                    Err(CreateTokenError::Exists(name)) => bail!(
                        "a token named {name} exists already; revoke it or pick another --name"
                    ),
                    Err(e) => return Err(e).context("cannot store the token"),
                };
            println!(
                "created token {} with scopes {}",
                token.name,
                token.scopes.join(", ")
            );
            println!(
                "it is shown only this once; send it as the header  Authorization: Bearer <token>"
            );
            println!("{}", minted.secret);
        }
        TokenCommand::List(args) => {
            let tokens = store(args).await?.tokens().await?;
            if tokens.is_empty() {
                println!(
                    "no tokens; create one with: tenantsync token create --scope admin --name admin"
                );
            }
            for t in tokens {
                println!(
                    "{}\tcreated {}\t{}",
                    t.name,
                    t.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    t.scopes.join(" ")
                );
            }
        }
        TokenCommand::Revoke(args) => {
            let name = args.name;
            if !admin::revoke_token(store(args.store).await?.as_ref(), CLI, &name).await? {
                bail!("no token is named {name}; `tenantsync token list` shows the names");
            }
            println!("revoked token {name}");
        }
    }
    Ok(())
}
