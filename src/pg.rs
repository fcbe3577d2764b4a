//! Queries in one round trip.
//!
//! tokio-postgres' `query(&str, ..)` prepares the statement first: it sends
//! Parse/Describe, waits, then Bind/Execute and waits again. When the
//! parameter types are known up front, `query_typed` sends Parse, Bind and
//! Execute together and waits once. A CLI command runs a few dozen small
//! control-schema queries, so this halves the time it spends waiting on them.
//!
//! The parameter's Postgres type comes from its Rust type ([`Param`]); text
//! parameters compared with `name` columns use Postgres' `name = text`
//! operators.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, GenericClient, Row};

/// A query parameter whose Postgres type follows from its Rust type.
pub trait Param: ToSql + Sync {
    fn pg_type(&self) -> Type;
}

macro_rules! params {
    ($($rust:ty => $pg:expr),* $(,)?) => {
        $(impl Param for $rust {
            fn pg_type(&self) -> Type {
                $pg
            }
        })*
    };
}

params!(
    &str => Type::TEXT,
    String => Type::TEXT,
    Option<&str> => Type::TEXT,
    Option<String> => Type::TEXT,
    bool => Type::BOOL,
    i32 => Type::INT4,
    i64 => Type::INT8,
    Vec<i32> => Type::INT4_ARRAY,
    Vec<String> => Type::TEXT_ARRAY,
    Option<Vec<String>> => Type::TEXT_ARRAY,
    serde_json::Value => Type::JSONB,
);

fn typed<'a>(params: &'a [&'a dyn Param]) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params
        .iter()
        .map(|p| (*p as &(dyn ToSql + Sync), p.pg_type()))
        .collect()
}

pub async fn query<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[&dyn Param],
) -> Result<Vec<Row>, Error> {
    c.query_typed(sql, &typed(params)).await
}

pub async fn query_one<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[&dyn Param],
) -> Result<Row, Error> {
    c.query_typed_one(sql, &typed(params)).await
}

pub async fn query_opt<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[&dyn Param],
) -> Result<Option<Row>, Error> {
    c.query_typed_opt(sql, &typed(params)).await
}

pub async fn execute<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: &[&dyn Param],
) -> Result<u64, Error> {
    c.execute_typed(sql, &typed(params)).await
}
