//! DKV: a small replicated key-value store.
//!
//! A registry **server** that nodes join and clients ask for the coordinator;
//! **nodes** that each hold a full copy, one of them the **coordinator** that
//! serves clients and replicates to the **replicas**; UDP heartbeat beacons
//! between nodes; and the client library [`Client`].
//!
//! Layout: `core/` holds the sans-IO state machines, `node/` and `server` the
//! IO threads that drive them, `wire` every byte format, `log` and `store` the
//! data path. See `docs/ARCHITECTURE.md`.

// Responses travel as values; boxing them to shrink `Result` would cost an
// allocation on every request for no measurable gain.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod backup;
pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod core;
pub mod errors;
pub mod etcd;
pub mod history;
pub mod identity;
pub mod log;
pub mod metrics;
pub mod net;
pub mod node;
pub mod registry;
pub mod repl;
pub mod resp;
pub mod sentinel;
pub mod server;
pub mod servers;
pub mod signals;
#[cfg(test)]
pub mod sim;
pub mod storage;
pub mod store;
pub mod tls;
pub mod types;
pub mod wire;

pub use client::{Client, ClientOptions, Op, OpResult};
pub use errors::{Error, NotAServer, Result};
pub use servers::ServerList;

/// Sets up logging from `RUST_LOG` (default: info) with timestamps in ms.
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .try_init();
}

/// Logging for command-line clients: warnings only unless `RUST_LOG` says more.
pub fn init_logging_quiet() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .try_init();
}
