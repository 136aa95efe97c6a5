"""What a client's Parse and Close leave behind when the server fails or skips them, and a
Parse of a name already in use: the same through the door as directly.

Directly, a message the server skips (an earlier one up to the same Sync failed) never
happened: a named statement it would have prepared doesn't exist, a statement it would have
closed still does, and the unnamed statement before a skipped Parse of "" stays in force. A
failed Parse leaves no statement of its name (nor an unnamed one), and a Parse of a name in
use fails with 42P05, leaving the name's statement as it was. Each scenario ends with a Bind of
the name after another client has used the (one) server connection, so the Bind goes where
the client's own messages never went.

Run against PostgreSQL itself, every expectation below holds (tests/isolation.rs checks that
first, so they are PostgreSQL's answers, not the door's), then through the door.

usage: pg_skipped.py DSN
"""

import faulthandler
import sys

from psycopg import pq

DSN = sys.argv[1]
faulthandler.dump_traceback_later(60, exit=True)
BAD = b"SELECT * FROM skipped_no_such_table"


def connect():
    conn = pq.PGconn.connect(DSN.encode())
    assert conn.status == pq.ConnStatus.OK, conn.error_message
    return conn


def state(res):
    """What a client sees of one result: its SQLSTATE, or its first value."""
    if res.status == pq.ExecStatus.FATAL_ERROR:
        return res.error_field(pq.DiagnosticField.SQLSTATE).decode()
    if res.status == pq.ExecStatus.TUPLES_OK:
        return res.get_value(0, 0).decode()
    return pq.ExecStatus(res.status).name


def pipeline(conn, *sends):
    """Sends each of `sends` in one pipeline with one Sync; the states of the answers."""
    conn.enter_pipeline_mode()
    for send in sends:
        send(conn)
    conn.pipeline_sync()
    answers = []
    while True:
        res = conn.get_result()
        if res is None:
            continue
        if res.status == pq.ExecStatus.PIPELINE_SYNC:
            break
        answers.append(state(res))
    conn.exit_pipeline_mode()
    return answers


def failing(conn):
    """A statement that fails at its Execute, leaving the statements as they were."""
    conn.send_query_prepared(b"fails", [b"0"])


def check(label, got, want):
    if got != want:
        print(f"FAILED {label}: got {got!r}, want {want!r}")
        return False
    print(f"ok {label}: {got!r}")
    return True


def main():
    a, b = connect(), connect()

    def other():
        # Another client on the server connection in between.
        assert state(b.exec_params(b"SELECT 'b'", [])) == "b"

    def bind(name):
        other()
        return state(a.exec_prepared(name, []))

    assert state(a.prepare(b"fails", b"SELECT 1/$1::int")) == "COMMAND_OK"
    passed = True

    got = pipeline(
        a,
        lambda c: c.send_query_params(b"SELECT 1", []),
        lambda c: c.send_prepare(b"s1", BAD),
    )
    passed &= check("a named Parse that fails", got + [bind(b"s1")], ["1", "42P01", "26000"])

    got = pipeline(a, failing, lambda c: c.send_prepare(b"s2", b"SELECT 2"))
    passed &= check(
        "a named Parse skipped", got + [bind(b"s2")], ["22012", "PIPELINE_ABORTED", "26000"]
    )

    assert state(a.prepare(b"", b"SELECT 'old'")) == "COMMAND_OK"
    got = pipeline(a, failing, lambda c: c.send_prepare(b"", b"SELECT 'new'"))
    passed &= check(
        "an unnamed Parse skipped", got + [bind(b"")], ["22012", "PIPELINE_ABORTED", "old"]
    )

    assert state(a.prepare(b"s4", b"SELECT 4")) == "COMMAND_OK"
    got = pipeline(a, failing, lambda c: c.send_close_prepared(b"s4"))
    passed &= check(
        "a Close of a name skipped", got + [bind(b"s4")], ["22012", "PIPELINE_ABORTED", "4"]
    )

    assert state(a.prepare(b"", b"SELECT 'old'")) == "COMMAND_OK"
    got = pipeline(a, failing, lambda c: c.send_close_prepared(b""))
    passed &= check(
        "a Close of the unnamed statement skipped",
        got + [bind(b"")],
        ["22012", "PIPELINE_ABORTED", "old"],
    )

    assert state(a.prepare(b"", b"SELECT 'old'")) == "COMMAND_OK"
    got = pipeline(
        a,
        lambda c: c.send_query_params(b"SELECT 5", []),
        lambda c: c.send_prepare(b"", BAD),
        lambda c: c.send_prepare(b"", b"SELECT 'new'"),
    )
    passed &= check(
        "an unnamed Parse that fails, then one skipped",
        got + [bind(b"")],
        ["5", "42P01", "PIPELINE_ABORTED", "26000"],
    )

    got = pipeline(
        a,
        lambda c: c.send_prepare(b"s7", b"SELECT 7"),
        lambda c: c.send_prepare(b"s7", b"SELECT 77"),
        lambda c: c.send_prepare(b"s8", b"SELECT 8"),
    )
    passed &= check(
        "a Parse of a name in use, in a pipeline",
        got + [bind(b"s7"), bind(b"s8")],
        ["COMMAND_OK", "42P05", "PIPELINE_ABORTED", "7", "26000"],
    )

    res = a.prepare(b"s7", b"SELECT 777")
    message = res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)
    passed &= check(
        "a Parse of a name in use, on its own",
        [state(res), message.decode() if message else None, bind(b"s7")],
        ["42P05", 'prepared statement "s7" already exists', "7"],
    )

    a.finish()
    b.finish()
    if not passed:
        sys.exit(1)
    print("PASSED")


main()
