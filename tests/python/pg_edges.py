"""Protocol edges through the PostgreSQL door where a pooler easily differs from PostgreSQL.
The door runs with one server connection (--pool-max 1) and a short acquire timeout, so a
client that keeps the connection when it shouldn't makes the next client fail.

- statements sent right before a Terminate (libpq's PQsendQuery then PQfinish) all run;
- the unnamed statement, prepared in one transaction and executed in the next, is the
  client's own even when another client prepared its own unnamed statement in between;
- a client that binds the unnamed statement without one of its own (never prepared, or
  dropped by a simple Query) gets 26000, never another client's; the door's own Queries on
  the client's server connection don't drop the client's; a failed Parse of the unnamed
  statement leaves none (26000 at the next Bind, not the Parse's error again);
- asyncpg's copy_records_to_table (data and CopyDone sent before the server's answer) gives
  the server connection back;
- the client_encoding a client asks for at startup is the one reported to it, every time;
- a role given at startup (`options=-c role=app`) is the session's, on every server
  connection, never another client's, and RESET ROLE returns to it, without pinning;
- a pipeline that writes far more than it reads (20,000 queries of 64 KiB results each,
  1.3 GB of replies) completes: the relay never waits on one side while the other is full.

usage: pg_edges.py DSN
"""

import asyncio
import faulthandler
import sys
import time

import asyncpg
import psycopg
from psycopg import pq

DSN = sys.argv[1]
faulthandler.dump_traceback_later(90, exit=True)


def conn(**kwargs):
    return psycopg.connect(DSN, autocommit=True, **kwargs)


def terminate_right_after_queries():
    with conn() as c:
        c.execute("DROP TABLE IF EXISTS edge_terminate; CREATE TABLE edge_terminate (i int)")
    for i in range(10):
        pgconn = pq.PGconn.connect(DSN.encode())
        assert pgconn.status == pq.ConnStatus.OK, pgconn.error_message
        pgconn.send_query(f"INSERT INTO edge_terminate VALUES ({i})".encode())
        pgconn.finish()
    # The door finishes each one after its client has gone: poll, bounded.
    deadline = time.monotonic() + 20
    while True:
        with conn() as c:
            n = c.execute("SELECT count(*) FROM edge_terminate").fetchone()[0]
        if n == 10 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert n == 10, f"{n} of 10 rows sent before a Terminate were applied"


def unnamed_statement_across_transactions():
    a = pq.PGconn.connect(DSN.encode())
    b = pq.PGconn.connect(DSN.encode())
    try:
        for pgconn, text in ((a, b"SELECT 'a'"), (b, b"SELECT 'b'")):
            res = pgconn.prepare(b"", text)
            assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        for pgconn, want in ((a, b"a"), (b, b"b")):
            res = pgconn.exec_prepared(b"", [])
            assert res.status == pq.ExecStatus.TUPLES_OK, res.error_message
            assert res.get_value(0, 0) == want, (res.get_value(0, 0), want)
    finally:
        a.finish()
        b.finish()


def unnamed_statement_is_never_another_clients():
    a = pq.PGconn.connect(DSN.encode())
    b = pq.PGconn.connect(DSN.encode())
    try:
        res = b.prepare(b"", b"SELECT 'b only'")
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        # `a` never prepared an unnamed statement; directly there is none to run.
        res = a.exec_prepared(b"", [])
        assert res.status == pq.ExecStatus.FATAL_ERROR, (res.status, res.get_value(0, 0))
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000", res.error_message
        # A simple Query drops the unnamed statement.
        assert b.exec_(b"SELECT 1").status == pq.ExecStatus.TUPLES_OK
        res = b.exec_prepared(b"", [])
        assert res.status == pq.ExecStatus.FATAL_ERROR, (res.status, res.get_value(0, 0))
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000", res.error_message
    finally:
        a.finish()
        b.finish()


def a_failed_unnamed_parse_leaves_none():
    a = pq.PGconn.connect(DSN.encode())
    b = pq.PGconn.connect(DSN.encode())
    try:
        res = a.prepare(b"", b"SELECT 'a'")
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        res = a.prepare(b"", b"SELECT * FROM edge_no_such_table")
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"42P01", res.error_message
        # Another client on the one server connection in between: `a`'s next Bind goes to a
        # server that never saw its Parse.
        res = b.prepare(b"", b"SELECT 'b'")
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        res = a.exec_prepared(b"", [])
        assert res.status == pq.ExecStatus.FATAL_ERROR, (res.status, res.get_value(0, 0))
        assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000", res.error_message
    finally:
        a.finish()
        b.finish()


def unnamed_statement_outlives_the_doors_own_queries():
    """A RESET of a startup value makes the door put the value back with a Query of its own
    after the Sync, inside the client's transaction; the client's unnamed statement, which
    that Query drops on the server, still runs as directly."""
    info = psycopg.conninfo.make_conninfo(DSN, options="-c statement_timeout=5s")
    c = pq.PGconn.connect(info.encode())
    try:
        assert c.exec_(b"BEGIN").status == pq.ExecStatus.COMMAND_OK
        res = c.prepare(b"", b"RESET statement_timeout")
        assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        for _ in range(2):
            res = c.exec_prepared(b"", [])
            assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message
        res = c.exec_(b"SHOW statement_timeout")
        assert res.get_value(0, 0) == b"5s", res.get_value(0, 0)
        assert c.exec_(b"COMMIT").status == pq.ExecStatus.COMMAND_OK
    finally:
        c.finish()


async def asyncpg_copy_records_gives_the_connection_back():
    first = await asyncpg.connect(DSN)
    second = await asyncpg.connect(DSN)
    try:
        await first.execute("DROP TABLE IF EXISTS edge_copy; CREATE TABLE edge_copy (a int, b text)")
        copied = await first.copy_records_to_table(
            "edge_copy", records=[(1, "x"), (2, "y")], columns=["a", "b"]
        )
        assert copied == "COPY 2", copied
        # One server connection: this waits for it, and fails if `first` still holds it.
        assert await second.fetchval("SELECT count(*) FROM edge_copy") == 2
        assert await first.fetchval("SELECT sum(a) FROM edge_copy") == 3
    finally:
        await first.close()
        await second.close()


def startup_encoding_is_reported_every_time():
    for _ in range(3):
        with conn(client_encoding="LATIN1") as c:
            reported = c.pgconn.parameter_status(b"client_encoding")
            assert reported == b"LATIN1", reported
            assert c.execute("SHOW client_encoding").fetchone()[0] == "LATIN1"
        with conn() as c:
            assert c.pgconn.parameter_status(b"client_encoding") == b"UTF8"


def startup_role_is_the_sessions_own():
    with conn(options="-c role=app") as a, conn() as b:
        assert a.execute("SELECT current_user").fetchone()[0] == "app"
        # One server connection: b runs on it between a's transactions.
        assert b.execute("SELECT current_user").fetchone()[0] == "postgres"
        assert a.execute("SELECT current_user").fetchone()[0] == "app"
        a.execute("RESET ROLE")
        assert a.execute("SELECT current_user").fetchone()[0] == "app"
        assert b.execute("SELECT current_user").fetchone()[0] == "postgres"


def a_long_pipeline_of_large_results_completes():
    n = 20_000
    with conn() as c:
        started = time.monotonic()
        with c.pipeline():
            cursors = [c.execute("SELECT repeat('x', 65536)") for _ in range(n)]
        sizes = {len(cur.fetchone()[0]) for cur in cursors}
        took = time.monotonic() - started
    assert sizes == {65536}, sizes
    print(f"pipeline of {n} x 64 KiB results: {took:.1f} s")


terminate_right_after_queries()
a_long_pipeline_of_large_results_completes()
unnamed_statement_across_transactions()
unnamed_statement_is_never_another_clients()
a_failed_unnamed_parse_leaves_none()
unnamed_statement_outlives_the_doors_own_queries()
asyncio.run(asyncpg_copy_records_gives_the_connection_back())
startup_encoding_is_reported_every_time()
startup_role_is_the_sessions_own()
print("ok")
