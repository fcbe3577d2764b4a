//! pgshift: zero-downtime PostgreSQL schema changes by expand/contract.
//!
//! # Layout
//! - [`migration`]: the file format (pgroll's operations) and strict parsing.
//! - [`sql`]: identifier and literal quoting; the only place SQL names are built.
//! - [`schema`]: catalog introspection.
//! - [`plan`] and [`ops`]: planning, one file per operation.
//! - [`engine`]: control schema, lock-safe step execution, the lifecycle.
//! - [`backfill`]: the copier; [`progress`]: bars and log lines.
//! - [`cli`]: the `pgshift` command line; [`serve`]: `pgshift proxy`.
//! - [`error`]: the error type.

pub mod admin;
pub mod backfill;
pub mod cli;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod http;
pub mod migration;
pub mod ops;
pub mod pg;
pub mod plan;
pub mod progress;
pub mod schema;
pub mod serve;
pub mod sql;

pub use error::{Error, Kind, Result};
