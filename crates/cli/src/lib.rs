//! The `tenantsync` library: what the `tenantsync` binary and the `tenantsync-bench` harness
//! share. `config` merges and validates the serve settings, `backends` turns URLs into a log
//! and a master store (the one place that does), `serve` wires the components and runs them.
//! It holds no business rules: those live in the component crates it wires.

pub mod backends;
pub mod config;
pub mod serve;

use std::process::ExitCode;

/// The body of every tenantsync binary's `main`: logs to stderr (`RUST_LOG`, or info with
/// librdkafka's chatter at warn), runs `work` on a new async runtime, and prints its error.
pub fn run_main(work: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
