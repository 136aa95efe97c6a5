use super::*;

fn effect(sql: &str) -> SessionEffect {
    session_effect(sql.as_bytes(), true)
}

fn pin(sql: &str) -> Option<PinReason> {
    effect(sql).pins
}

#[test]
fn plain_statements_are_plain() {
    for sql in [
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "INSERT INTO t (a, b) VALUES ($1, now()) RETURNING id",
        "insert into s.t(a) values (lower($1)) on conflict (a) do update set (a) = (excluded.a)",
        "SELECT count(*), coalesce(max(x), 0)::numeric(10,2) FROM t WHERE x IN (1, 2)",
        "WITH c (a) AS (SELECT 1) SELECT * FROM c",
        "SELECT CAST(x AS varchar(20)), current_timestamp(3) FROM generate_series(1, 3) AS g(x)",
        "BEGIN; SELECT 1; COMMIT",
        "CREATE TABLE IF NOT EXISTS t (a int CHECK (a > 0))",
        "SELECT 'SET search_path = x', $$ DO $$",
        "CREATE TABLE temp (a int)",
        "SELECT 1 AS listen",
        "SELECT pg_advisory_xact_lock(1)",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "SET LOCAL statement_timeout = 5",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SELECT set_config('a.b', '1', true)",
        "DECLARE c CURSOR FOR SELECT 1",
        "EXPLAIN (ANALYZE, BUFFERS) SELECT 1",
        "SELECT pg_catalog.now()",
        "",
        ";;",
    ] {
        assert!(effect(sql).is_plain(), "{sql}: {:?}", effect(sql));
    }
}

#[test]
fn settings_are_read_wherever_they_hide() {
    for (sql, name) in [
        ("SET search_path TO app", "search_path"),
        ("/* tag */ SET search_path = evil", "search_path"),
        ("-- why\nset SESSION work_mem = '1MB'", "work_mem"),
        ("SELECT 1; SET app.tenant_id = '42'", "app.tenant_id"),
        ("SET \"App\".Tenant = 1", "App.tenant"),
        ("select set_config('app.user', 'x', false)", "app.user"),
        (
            "SELECT pg_catalog.set_config(E'app.it\\'s', 'x', false)",
            "app.it's",
        ),
        (
            "EXPLAIN ANALYZE SELECT set_config('a.b', 'c', false)",
            "a.b",
        ),
        (
            "DO $$BEGIN PERFORM set_config('app.x', '1', false); END$$",
            "app.x",
        ),
        ("DO $d$BEGIN SET app.y = 1; END$d$", "app.y"),
        ("SELECT my.exec('SET app.z = ''1''')", "app.z"),
        ("CALL iso.proc_set('app.r9_1', 'c0-v1')", "app.r9_1"),
        ("DO $$BEGIN EXECUTE 'SET app.n = ''v'''; END$$", "app.n"),
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql \
             AS $$SELECT set_config('app.f', '1', false)$$",
            "app.f",
        ),
    ] {
        let e = effect(sql);
        assert!(
            e.settings || e.unverified || sql.starts_with("CREATE"),
            "{sql}"
        );
        assert!(e.names.iter().any(|n| n == name), "{sql}: {:?}", e.names);
    }
    assert_eq!(
        effect("SELECT set_config($1, $2, false)").name_params,
        vec![1]
    );
    assert!(effect("SET TIME ZONE 'UTC'").settings);
    assert!(effect("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").settings);
}

#[test]
fn resets_are_read_in_order() {
    let e = effect("RESET ALL");
    assert!(e.resets.all && e.resets.covers("search_path"));
    let e = effect("DISCARD ALL");
    assert!(e.resets.all && e.releases);
    let e = effect("RESET search_path");
    assert!(e.resets.covers("search_path") && !e.resets.covers("work_mem"));
    let e = effect("SET search_path TO DEFAULT");
    assert!(e.resets.covers("search_path"));
    let e = effect("RESET ALL; SET search_path = x");
    assert!(!e.resets.covers("search_path") && e.resets.covers("work_mem"));
    let e = effect("RESET search_path; SET search_path = x");
    assert!(!e.resets.any());
    let e = effect("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;");
    assert!(e.resets.all && e.releases && e.pins.is_none() && !e.unverified);
}

#[test]
fn what_only_a_backend_can_hold_pins() {
    use PinReason::*;
    for (sql, reason) in [
        ("CREATE TEMP TABLE t (a int)", TempTable),
        ("create global temporary table t (a int)", TempTable),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", TempTable),
        ("CREATE TABLE pg_temp.x (a int)", TempTable),
        (
            "/* c */ CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS",
            TempTable,
        ),
        ("SELECT 1 INTO TEMP t", TempTable),
        ("SELECT pg_advisory_lock(1)", AdvisoryLock),
        ("select 1; select PG_TRY_ADVISORY_LOCK(2)", AdvisoryLock),
        ("LISTEN chan", Listen),
        ("PREPARE q AS SELECT 1", SqlPrepare),
        ("SET ROLE app", SetRole),
        ("SET SESSION ROLE app", SetRole),
        ("SET role = 'app'", SetRole),
        ("SET SESSION AUTHORIZATION app", SetRole),
        ("SELECT set_config('role', 'app', false)", SetRole),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", HoldCursor),
        ("LOAD 'auto_explain'", Load),
    ] {
        assert_eq!(pin(sql), Some(reason), "{sql}");
    }
    assert_eq!(pin("CREATE TEMP TABLE t (a int) ON COMMIT DROP"), None);
    assert_eq!(pin("SET ROLE NONE"), None);
    assert!(effect("SET ROLE NONE").releases);
    assert_eq!(pin("SELECT set_config('role', 'app', true)"), None);
}

#[test]
fn what_cannot_be_vouched_for_is_checked() {
    for sql in [
        "DO $$BEGIN CREATE TEMP TABLE secret_t AS SELECT 1; END$$",
        "CALL p()",
        "SELECT my_function(1)",
        "SELECT auth.uid()",
        "SELECT public.lower('x')",
        "SELECT query_to_xml('select 1', true, true, '')",
        "SELECT U&\"set\\005fconfig\"('a.b', 'c', false)",
        "SELECT set_config(name, 'x', false) FROM t",
        "DEALLOCATE pgway_1",
        "FROBNICATE",
        "EXECUTE q",
    ] {
        assert!(effect(sql).unverified, "{sql}");
    }
}

#[test]
fn a_path_for_the_transaction_only_is_seen() {
    for sql in [
        "SET LOCAL search_path = tenant_b",
        "set local SCHEMA 'tenant_b'",
        "SELECT set_config('search_path', 'tenant_b', true)",
        "SELECT set_config($1, $2, true)",
    ] {
        let read = effect(sql);
        assert!(read.local_path && !read.settings, "{sql}: {read:?}");
    }
    for sql in [
        "SET LOCAL statement_timeout = 5",
        "SELECT set_config('app.tenant_id', '42', true)",
        "SET search_path = tenant_b",
    ] {
        assert!(!effect(sql).local_path, "{sql}");
    }
}
