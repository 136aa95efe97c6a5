"""psycopg 3 through the PostgreSQL door, every statement prepared (prepare_threshold=0).

Ports the scenarios of PgBouncer's test/test_prepared.py: statements prepared on one server
connection and run on another, pipelines with errors, a failed Parse, eviction (the door runs
with --pg-prepared-statements 2), DEALLOCATE ALL, DISCARD ALL, a stale plan after ALTER TABLE,
close_prepared; and COPY both ways, a bad row included.

usage: pg_psycopg.py DSN
"""

import faulthandler
import sys

import psycopg
from psycopg import pq

DSN = sys.argv[1]
# A hang shows where it is stuck (the test stops waiting at 120 s).
faulthandler.dump_traceback_later(90, exit=True)


def conn():
    return psycopg.connect(DSN, autocommit=True, prepare_threshold=0)


def one(cur, query, params=None, prepare=True):
    return cur.execute(query, params, prepare=prepare).fetchone()[0]


def across_server_connections():
    with conn() as c1, conn() as c2, conn() as c3:
        cur1, cur2, cur3 = c1.cursor(), c2.cursor(), c3.cursor()
        assert one(cur1, "SELECT 1") == 1
        assert one(cur1, "SELECT %s::int", (5,)) == 5
        with c2.transaction(), c3.transaction():
            # Two server connections are held by others: c1 runs on the third, which has
            # not seen its statements.
            assert one(cur2, "SELECT 2") == 2
            assert one(cur3, "SELECT 3") == 3
            assert one(cur1, "SELECT 1") == 1
            assert one(cur1, "SELECT %s::int", (6,)) == 6
            # Another client prepares the same text: the door reuses the statement.
            assert one(cur2, "SELECT 1") == 1
            assert one(cur3, "SELECT %s::int", (7,)) == 7
        for i in range(20):
            assert one(cur1, "SELECT %s::int + 1", (i,)) == i + 1


def failing_then_sync(pipeline, execute, error):
    """Runs a statement that fails in a pipeline, then syncs: psycopg raises the error when it
    sees it, at the execute or at the sync."""
    raised = False
    try:
        execute()
    except error:
        raised = True
    try:
        pipeline.sync()
    except error:
        raised = True
    assert raised, f"no {error.__name__}"


def pipelines():
    with conn() as c:
        assert one(c.cursor(), "SELECT 1") == 1
    with conn() as c:
        with c.pipeline():
            curs = [c.cursor() for _ in range(4)]
            curs[0].execute("SELECT 2", prepare=True)
            curs[1].execute("SELECT 1", prepare=True)
            curs[2].execute("SELECT 3")
            curs[3].execute("SELECT 1", prepare=True)
            assert [cur.fetchall() for cur in curs] == [[(2,)], [(1,)], [(3,)], [(1,)]]
    # The queue is cleared after an error.
    with conn() as c:
        with c.pipeline() as p, c.cursor() as cur:
            failing_then_sync(p, lambda: cur.execute("SELECT aaaa"), psycopg.errors.UndefinedColumn)
            cur.execute("SELECT 1", prepare=True)
            assert cur.fetchall() == [(1,)]
    # An error in the middle of a pipeline of prepared statements, then more.
    with conn() as c:
        with c.pipeline() as p:
            curs = [c.cursor() for _ in range(4)]
            curs[0].execute("SELECT 1", prepare=True)
            failing_then_sync(
                p, lambda: curs[1].execute("bad query", prepare=True), psycopg.errors.SyntaxError
            )
            assert curs[0].fetchall() == [(1,)]
            curs[0].execute("SELECT 1", prepare=True)
            p.sync()
            assert curs[0].fetchall() == [(1,)]
        # Out of the pipeline, the connection is fine.
        assert one(c.cursor(), "SELECT 4") == 4
    # Many prepared statements in long pipelines, statements evicted on the way.
    with conn() as c:
        with c.pipeline():
            curs = [c.cursor() for _ in range(6)]
            for n in range(10):
                for i, cur in enumerate(curs):
                    cur.execute(f"SELECT %s::int, %s::text AS s{(n * 7 + i) % 9}", (i, str(n)), prepare=True)
                for i, cur in enumerate(curs):
                    assert cur.fetchall() == [(i, str(n))], (n, i)


def failed_parse():
    with conn() as c:
        cur = c.cursor()
        for _ in range(2):
            try:
                cur.execute("SELEC 1", prepare=True)
                raise AssertionError("a syntax error was accepted")
            except psycopg.errors.SyntaxError:
                pass
            assert one(cur, "SELECT 8") == 8


def eviction():
    # The door keeps 2 statements per server connection (--pg-prepared-statements 2).
    with conn() as c:
        cur = c.cursor()
        with c.transaction():
            for i in range(5):
                assert one(cur, f"SELECT '{i}'") == str(i)
            n = one(cur, "SELECT count(*) FROM pg_prepared_statements")
            assert n == 2, f"{n} statements prepared on the server connection"
        for i in range(5):
            assert one(cur, f"SELECT '{i}'") == str(i)


def deallocate_and_discard():
    for reset in ["DEALLOCATE ALL", "DISCARD ALL"]:
        with conn() as c1, conn() as c2:
            cur1, cur2 = c1.cursor(), c2.cursor()
            assert one(cur1, "SELECT 1") == 1
            assert one(cur2, "SELECT 1") == 1
            cur1.execute(reset)
            # The other client's statement is unharmed; the first client's is gone for it,
            # as PostgreSQL would have it (psycopg keeps its cache: PgBouncer's test expects
            # the same error).
            assert one(cur2, "SELECT 1") == 1
            try:
                cur1.execute("SELECT 1", prepare=True)
                raise AssertionError(f"{reset} left the client's statement")
            except psycopg.errors.InvalidSqlStatementName:
                pass
            assert one(cur1, "SELECT %s::int", (3,)) == 3
            assert one(cur2, "SELECT 1") == 1
    with conn() as c:
        raw = c.pgconn
        assert raw.prepare(b"mine", b"SELECT 1").status == pq.ExecStatus.COMMAND_OK
        assert raw.exec_prepared(b"mine", []).status == pq.ExecStatus.TUPLES_OK
        c.execute("DEALLOCATE mine")
        result = raw.exec_prepared(b"mine", [])
        assert result.status == pq.ExecStatus.FATAL_ERROR, result.status
        assert b"does not exist" in result.error_message, result.error_message


def close_prepared():
    if pq.version() < 170000:
        return
    with conn() as c:
        raw = c.pgconn
        assert raw.prepare(b"test", b"SELECT 1").status == pq.ExecStatus.COMMAND_OK
        assert raw.close_prepared(b"test").status == pq.ExecStatus.COMMAND_OK
        assert raw.close_prepared(b"test").status == pq.ExecStatus.COMMAND_OK
        assert raw.describe_prepared(b"test").status == pq.ExecStatus.FATAL_ERROR
        assert raw.describe_prepared(b"doesnotexist").status == pq.ExecStatus.FATAL_ERROR
        assert one(c.cursor(), "SELECT 9") == 9


def stale_plan():
    with conn() as c, conn() as other:
        c.execute("CREATE TABLE stale (a int)")
        c.execute("INSERT INTO stale VALUES (1)")
        cur, cur2 = c.cursor(), other.cursor()
        assert cur.execute("SELECT * FROM stale", prepare=True).fetchall() == [(1,)]
        assert cur2.execute("SELECT * FROM stale", prepare=True).fetchall() == [(1,)]
        c.execute("ALTER TABLE stale ADD COLUMN b int")
        for cur in [cur, cur2]:
            try:
                rows = cur.execute("SELECT * FROM stale", prepare=True).fetchall()
            except psycopg.errors.FeatureNotSupported as e:
                assert "cached plan must not change result type" in str(e), e
                rows = cur.execute("SELECT * FROM stale", prepare=True).fetchall()
            assert rows == [(1, None)], rows
            # And it stays fixed.
            assert cur.execute("SELECT * FROM stale", prepare=True).fetchall() == [(1, None)]


def copy():
    with conn() as c:
        c.execute("CREATE TABLE copied (a int, b text)")
        cur = c.cursor()
        with cur.copy("COPY copied (a, b) FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        with cur.copy("COPY (SELECT a, b FROM copied ORDER BY a) TO STDOUT") as copy:
            rows = list(copy.rows())
        assert len(rows) == 1000 and rows[5] == ("5", "row 5"), rows[:6]
        try:
            with cur.copy("COPY copied (a, b) FROM STDIN") as copy:
                copy.write(b"1\tok\nnot-a-number\tbad\n")
            raise AssertionError("a bad row was accepted")
        except psycopg.errors.InvalidTextRepresentation:
            pass
        assert one(cur, "SELECT count(*) FROM copied") == 1000
        # In a transaction, then rolled back.
        with c.transaction(force_rollback=True):
            with cur.copy("COPY copied (a) FROM STDIN") as copy:
                copy.write_row((5000,))
        assert one(cur, "SELECT count(*) FROM copied") == 1000


def cancel():
    import threading

    def when_running(c, watcher):
        for _ in range(500):
            n = one(
                watcher.cursor(),
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'",
            )
            if n:
                c.cancel()
                return
        print("pg_psycopg.py: the statement never started", file=sys.stderr)

    with conn() as c, conn() as watcher:
        thread = threading.Thread(target=when_running, args=(c, watcher))
        thread.start()
        try:
            c.execute("SELECT pg_sleep(30)")
            raise AssertionError("not cancelled")
        except psycopg.errors.QueryCanceled:
            pass
        thread.join()
        assert one(c.cursor(), "SELECT 10") == 10


for test in [
    across_server_connections,
    pipelines,
    failed_parse,
    eviction,
    deallocate_and_discard,
    close_prepared,
    stale_plan,
    copy,
    cancel,
]:
    try:
        test()
    except Exception as e:
        print(f"pg_psycopg.py: {test.__name__} failed: {e!r}", file=sys.stderr)
        raise
print("ok")
