//! The wire proxy against a real PostgreSQL 15 and real clients (psql,
//! pgbench, tokio-postgres, psycopg 3, node-postgres). Each test runs its own
//! in-process proxy on port 0 and its own database.

// Test helpers may panic on impossible values; a panic is a test failure.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod clients;
mod command;
mod failures;
mod gate;
mod harness;
mod protocol;
mod routing;
mod tls_auth;
