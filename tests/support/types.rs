//! What the value-mapping suites (values.rs, parameters.rs) share: a database with user-defined
//! and extension types, and kinds compared as a client would.

use pgway::proto::value::Kind;

use super::Gateway;

/// Types a test database gets before the gateway sees it: an enum, a composite, domains over a
/// natural and a text type, a range over a user-defined subtype, and types from extensions.
pub const USER_TYPES: &str = r#"
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'with "quotes", commas');
    CREATE TYPE pair AS (n int4, s text, d date);
    CREATE TYPE nested AS (p pair, moods mood[], at timestamptz);
    CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
    CREATE DOMAIN short_text AS text CHECK (length(VALUE) < 10);
    CREATE DOMAIN pair_domain AS pair;
    CREATE DOMAIN intlist AS int4[] CHECK (cardinality(VALUE) < 5);
    CREATE TYPE mood_range AS RANGE (subtype = mood);
    CREATE SCHEMA "Other Schema";
    CREATE TYPE "Other Schema"."Weird Type" AS ENUM ('a b', 'ü');
    CREATE EXTENSION citext;
    CREATE EXTENSION hstore;
"#;

/// A gateway on a fresh database with [`USER_TYPES`], its client and a direct connection whose
/// text output doesn't depend on the server's configuration.
pub async fn setup() -> (Gateway, DbClient, tokio_postgres::Client) {
    let gw = Gateway::start().await;
    let direct = gw.direct().await;
    direct
        .batch_execute(USER_TYPES)
        .await
        .expect("creating the test types");
    direct
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'",
        )
        .await
        .expect("session settings");
    let client = gw.client().await;
    (gw, client, direct)
}

pub type DbClient = pgway::proto::database_client::DatabaseClient<tonic::transport::Channel>;

/// Equality of result kinds, with doubles compared bit for bit (so -0 and NaN count).
pub fn same(a: &Option<Kind>, b: &Option<Kind>) -> bool {
    match (a, b) {
        (Some(Kind::DoubleValue(x)), Some(Kind::DoubleValue(y))) => {
            (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
        }
        (Some(Kind::ArrayValue(x)), Some(Kind::ArrayValue(y))) => {
            x.values.len() == y.values.len()
                && x.values
                    .iter()
                    .zip(&y.values)
                    .all(|(x, y)| same(&x.kind, &y.kind))
        }
        _ => a == b,
    }
}
