//! Engine tests against a real PostgreSQL 15 (one throwaway cluster per test
//! binary, one database per test).

// Test helpers may panic on impossible values; a panic is a test failure.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod backfill;
mod compat;
mod crash;
mod errors;
mod expect;
mod ops;
mod safety;
mod scenario;
