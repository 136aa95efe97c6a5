//! The core's pool against a real PostgreSQL: a connection its user left session state on
//! never reaches the next user as it is, whichever way it was given back.

mod support;

use std::num::NonZeroUsize;
use std::time::Duration;

use pgway::core::dbtls;
use pgway::core::pool::{Pool, PoolConfig};
use support::*;

fn one_connection_pool(url: &str) -> Pool {
    let (database, tls) = dbtls::parse(url).expect("a valid URL");
    Pool::new(
        database,
        tls,
        &PoolConfig {
            min: 0,
            max: 1,
            acquire_timeout: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(600),
            statement_cache_size: NonZeroUsize::new(16).unwrap(),
            max_waiting: 16,
            max_concurrent_connects: 1,
        },
    )
}

async fn application_name(pool: &Pool) -> String {
    let conn = pool.get().await.expect("a connection");
    let row = conn
        .client()
        .query_one("SHOW application_name", &[])
        .await
        .expect("SHOW");
    row.get(0)
}

/// A connection dropped with session state on it (no explicit give-back anywhere) is reset
/// by its guard before the next checkout gets it.
#[tokio::test]
async fn a_dirty_connection_dropped_is_reset_before_reuse() {
    let pg = postgres().await;
    let pool = one_connection_pool(&pg.url("postgres"));
    let clean = application_name(&pool).await;
    for round in 0..3 {
        let mut conn = pool.get().await.expect("a connection");
        conn.client()
            .batch_execute("SET application_name = 'left-behind'")
            .await
            .unwrap();
        conn.mark_dirty();
        drop(conn);
        assert_eq!(application_name(&pool).await, clean, "round {round}");
    }
    pool.close();
    tokio::time::timeout(Duration::from_secs(5), pool.resets_done())
        .await
        .expect("the resets finish");
}
