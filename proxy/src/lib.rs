//! `pgshift-proxy`: the Postgres wire proxy (work in progress, see issue 3).
//!
//! The proxy knows nothing of migrations: it will receive a routing table
//! (which version schemas exist, the default, rules) from the daemon.
