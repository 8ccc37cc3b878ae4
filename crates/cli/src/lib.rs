//! The `tenantsync` library: what the `tenantsync` binary and the `tenantsync-bench` harness
//! share. `config` merges and validates the serve settings, `backends` turns URLs into a log
//! and a master store (the one place that does), `serve` wires the components and runs them.
//! It holds no business rules: those live in the component crates it wires.

pub mod backends;
pub mod config;
pub mod serve;
