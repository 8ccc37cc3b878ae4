//! The `tenantsync` binary. Parses the command line, then hands over: configuration lives in
//! the library's `config`, wiring and running in its `serve`, API tokens in `token`. Load
//! generation is the separate `tenantsync-bench` binary, so that none of it ships here.

mod token;

use clap::{Parser, Subcommand};
use tenantsync::{config, serve};

/// Keeps many independent consumers in sync with multi-tenant data.
#[derive(Debug, Parser)]
#[command(name = "tenantsync", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API, the processor and the batcher (embedded log and SQLite store unless told
    /// otherwise).
    Serve(Box<config::ServeArgs>),
    /// Create, list and revoke API tokens (kept in the master store; works while serve runs).
    #[command(subcommand)]
    Token(token::TokenCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tenantsync::run_main(async {
        match cli.command {
            Command::Serve(args) => serve::run(config::Settings::load(*args)?).await,
            Command::Token(command) => token::run(command).await,
        }
    })
}
