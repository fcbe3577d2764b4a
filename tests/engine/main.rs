//! Engine tests against a real PostgreSQL 15 (one throwaway cluster per test
//! binary, one database per test).

#[path = "../support/mod.rs"]
mod support;

mod crash;
mod errors;
mod ops;
mod safety;
mod scenario;
