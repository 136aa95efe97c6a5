//! Session isolation of the PostgreSQL door, tested differentially: tests/python/differential.py
//! runs the same scripted multi-client scenarios (session settings, search_path, temp tables,
//! advisory locks, DO blocks and functions, startup options and RESET ALL, asyncpg's pool,
//! bound parameters, pipelines, SQL PREPARE and PREPARE TRANSACTION, role switches, and seeded
//! random interleavings of them) once with every client connected straight to PostgreSQL and
//! once with every client connected to a door whose pool has two server connections, so three
//! clients really share them. Every client must see through the door exactly what it sees
//! directly; the script reports the first step of each scenario where it does not.
//!
//! The cluster is this binary's own (tests/support/door.rs): SCRAM for TCP logins as the door's
//! users expect, and `max_prepared_transactions` above 0 so the two-phase commit part of the
//! script runs.

mod support;

use std::process::Output;

use support::assert_passed;
use support::clients::python_output as python;
use support::door::{Door, cluster, direct_dsn, fresh_database};

/// Runs tests/python/differential.py with `direct` and `other` as its two DSNs.
async fn differential(direct: &str, other: &str, extra: &[&str]) -> Output {
    let mut args = vec![direct, other];
    args.extend_from_slice(extra);
    python("differential.py", &args).await
}

/// Every scenario, every client, every step: the same observations through the door as
/// directly.
#[tokio::test]
async fn every_client_sees_through_the_door_what_it_sees_directly() {
    let pg = cluster().await;
    let direct = direct_dsn(pg, &fresh_database(pg, "direct").await);
    let door = Door::start(&["--pool-max", "2"]).await;
    // The one difference no pooler can take away: a custom setting some client once set on a
    // server connection stays defined there, empty, after RESET ALL, so another client reads
    // '' where a fresh session reads NULL (PostgreSQL can't drop a placeholder). The script
    // compares custom settings as nullif(…, ''): a value, leaked or lost, still differs.
    let out = differential(&direct, &door.dsn(), &["--lenient-placeholders"]).await;
    assert_passed(
        &out,
        "clients saw through the door what they do not see directly",
    );
}

/// The same with clients' unnamed statements kept on the server connections as named ones
/// (`PGWAY_PG_KEEP_UNNAMED`), either way: the scenarios run no DDL outside the door, so every
/// client still sees what it sees directly.
#[tokio::test]
async fn every_client_sees_the_same_with_unnamed_statements_kept() {
    let pg = cluster().await;
    for mode in ["autocommit", "always"] {
        let direct = direct_dsn(pg, &fresh_database(pg, "direct").await);
        let door = Door::start(&["--pool-max", "2", "--pg-keep-unnamed", mode]).await;
        let out = differential(&direct, &door.dsn(), &["--lenient-placeholders"]).await;
        assert_passed(
            &out,
            &format!(
                "with PGWAY_PG_KEEP_UNNAMED={mode}, clients saw through the door what they do not see directly"
            ),
        );
    }
}

/// Kept unnamed statements: one per text and search_path on the server connection, DDL
/// through the door seen at the next Parse, DDL outside it run again unseen where it can be
/// and otherwise reported as the README says (tests/python/pg_kept.py).
#[tokio::test]
async fn kept_unnamed_statements_behave_as_documented() {
    let pg = cluster().await;
    for mode in ["autocommit", "always"] {
        let door = Door::start(&["--pool-max", "1", "--pg-keep-unnamed", mode]).await;
        let direct = direct_dsn(pg, "postgres");
        let out = python("pg_kept.py", &[&door.dsn(), &direct, mode]).await;
        assert_passed(&out, &format!("pg_kept.py, PGWAY_PG_KEEP_UNNAMED={mode}"));
    }
}

/// The script itself: two direct runs of every scenario (two databases, no door) must agree,
/// so a difference the test above reports is the door's doing and never the script's.
#[tokio::test]
async fn the_script_sees_no_difference_between_two_direct_runs() {
    let pg = cluster().await;
    let first = direct_dsn(pg, &fresh_database(pg, "direct").await);
    let second = direct_dsn(pg, &fresh_database(pg, "direct").await);
    let out = differential(&first, &second, &[]).await;
    assert_passed(&out, "differential.py differs from itself without a door");
}

/// A client's Parse and Close that the server failed or skipped (an earlier message up to the
/// same Sync failed), and a Parse of a name in use, leave its statements as directly: run
/// first against PostgreSQL itself, so the script's expectations are PostgreSQL's, then
/// through a door of one server connection with unnamed statements kept or not
/// (tests/python/pg_skipped.py).
#[tokio::test]
async fn skipped_and_failed_parses_leave_what_they_leave_directly() {
    let pg = cluster().await;
    let direct = direct_dsn(pg, "postgres");
    let out = python("pg_skipped.py", &[&direct]).await;
    assert_passed(&out, "pg_skipped.py straight to PostgreSQL");
    for mode in ["off", "autocommit", "always"] {
        let door = Door::start(&["--pool-max", "1", "--pg-keep-unnamed", mode]).await;
        let out = python("pg_skipped.py", &[&door.dsn()]).await;
        assert_passed(
            &out,
            &format!("pg_skipped.py, PGWAY_PG_KEEP_UNNAMED={mode}"),
        );
    }
}
