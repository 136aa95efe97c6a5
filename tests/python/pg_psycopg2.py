"""psycopg2 through the PostgreSQL door: implicit transactions (autocommit off), commit and
rollback, a named (server-side) cursor, COPY both ways with copy_expert, a bad COPY row.

usage: pg_psycopg2.py DSN
"""

import faulthandler
import io
import sys

import psycopg2
import psycopg2.errors

DSN = sys.argv[1]
# A hang shows where it is stuck (the test stops waiting at 120 s).
faulthandler.dump_traceback_later(90, exit=True)

conn = psycopg2.connect(DSN)
cur = conn.cursor()
cur.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
conn.commit()
cur.executemany("INSERT INTO notes (body) VALUES (%s)", [(f"note {i}",) for i in range(50)])
conn.commit()
cur.execute("INSERT INTO notes (body) VALUES ('rolled back')")
conn.rollback()
cur.execute("SELECT count(*), count(*) FILTER (WHERE body = 'rolled back') FROM notes")
assert cur.fetchone() == (50, 0)
conn.commit()

# A named cursor is a DECLARE in the transaction, fetched from in batches.
named = conn.cursor("batches")
named.itersize = 7
named.execute("SELECT id FROM notes ORDER BY id")
assert [r[0] for r in named] == list(range(1, 51))
named.close()
conn.commit()

out = io.StringIO()
cur.copy_expert("COPY (SELECT id, body FROM notes ORDER BY id) TO STDOUT", out)
lines = out.getvalue().splitlines()
assert len(lines) == 50 and lines[0] == "1\tnote 0", lines[:2]
conn.commit()
cur.copy_expert("COPY notes (body) FROM STDIN", io.StringIO("".join(f"copied {i}\n" for i in range(30))))
conn.commit()
try:
    cur.copy_expert("COPY notes (id, body) FROM STDIN", io.StringIO("999\tfine\nbad\tbad\n"))
    raise AssertionError("a bad row was accepted")
except psycopg2.errors.InvalidTextRepresentation:
    conn.rollback()
cur.execute("SELECT count(*) FROM notes")
assert cur.fetchone()[0] == 80
conn.commit()

# An error fails the transaction until rollback, as PostgreSQL does.
cur.execute("SELECT 1")
try:
    cur.execute("SELECT * FROM missing_table")
    raise AssertionError("a missing table was found")
except psycopg2.errors.UndefinedTable:
    pass
try:
    cur.execute("SELECT 1")
    raise AssertionError("the failed transaction went on")
except psycopg2.errors.InFailedSqlTransaction:
    conn.rollback()
cur.execute("SELECT 2")
assert cur.fetchone() == (2,)
conn.close()
print("ok")
