//! pgshift's Postgres wire proxy: one Postgres connection per client
//! session, opened with a StartupMessage rewritten so the session sees its
//! schema version; bytes then stream both ways with only the frame headers
//! inspected. See `docs/proxy.md`.

pub mod codec;
pub mod config;
pub mod gate;
pub mod latency;
mod lean;
pub mod registry;
pub mod routing;
mod server;
mod session;
mod stream;
pub mod tls;
mod upstream;

pub use config::{ProxyConfig, SslMode, Target, Upstream};
pub use routing::{Router, RoutingTable, Rule, Version};
pub use server::{run, Phase, Proxy};

/// The setting that names a session's version (startup parameter, or
/// `-c pgshift.version=` in `options`).
pub const VERSION_SETTING: &str = "pgshift.version";
