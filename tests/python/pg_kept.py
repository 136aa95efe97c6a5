"""The PostgreSQL door with PGWAY_PG_KEEP_UNNAMED=autocommit or always: clients' unnamed
statements are kept on the server connection as named ones. The door runs with one server connection, shared by
every client here.

- each client's extended queries give what they give directly, with a schema per tenant
  (tables of different shapes under the same name), and after DDL run through the door;
- the server connection keeps one statement per text and search_path, not one per query;
- after DDL run outside pgway changes a kept statement's result type, a query that is the
  first thing of an implicit transaction runs as directly (its failed Bind is run again
  unseen, and an INSERT applied once); inside a transaction block it fails once with 0A000
  with `always`, as the README says, and runs as directly with `autocommit`.

usage: pg_kept.py DOOR_DSN DIRECT_DSN MODE (the direct one is pointed at the door's database;
MODE is the door's PGWAY_PG_KEEP_UNNAMED)
"""

import faulthandler
import sys

import psycopg

DOOR, DIRECT, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
faulthandler.dump_traceback_later(60, exit=True)
QUERY = "SELECT * FROM t WHERE v <> %s"


def conn(dsn, **kwargs):
    # prepare_threshold=None: every query with parameters goes as the unnamed statement.
    return psycopg.connect(dsn, autocommit=True, prepare_threshold=None, **kwargs)


with conn(DOOR) as c:
    database = c.execute("SELECT current_database()").fetchone()[0]
direct = conn(psycopg.conninfo.make_conninfo(DIRECT, dbname=database))
direct.execute(
    "DROP SCHEMA IF EXISTS k_a, k_wide CASCADE; CREATE SCHEMA k_a; CREATE SCHEMA k_wide;"
    "CREATE TABLE k_a.t (v text); INSERT INTO k_a.t VALUES ('a');"
    "CREATE TABLE k_wide.t (v text, w int); INSERT INTO k_wide.t VALUES ('wide', 7)"
)

a = conn(DOOR, options="-c search_path=k_a")
b = conn(DOOR, options="-c search_path=k_wide")
other = conn(DOOR)
for _ in range(6):
    assert a.execute(QUERY, ("x",)).fetchall() == [("a",)]
    assert b.execute(QUERY, ("x",)).fetchall() == [("wide", 7)]

kept = other.execute(
    "SELECT count(*) FROM pg_prepared_statements WHERE statement = 'SELECT * FROM t WHERE v <> $1'"
).fetchone()[0]
assert kept == 2, f"{kept} statements kept for one text under two search_paths"

# DDL through the door: the next Parse of the text is analysed against the new catalog.
other.execute("ALTER TABLE k_a.t ADD COLUMN n int DEFAULT 5")
assert a.execute(QUERY, ("x",)).fetchall() == [("a", 5)]
assert b.execute(QUERY, ("x",)).fetchall() == [("wide", 7)]

# DDL outside pgway, which the door can't see, changes what a kept statement returns. As
# the first thing of an implicit transaction its Bind fails with 0A000 unseen and runs again,
# prepared afresh: the client gets what it gets directly, applied once.
direct.execute("ALTER TABLE k_wide.t DROP COLUMN w")
assert b.execute(QUERY, ("x",)).fetchall() == [("wide",)]
INSERT = "INSERT INTO log VALUES (%s) RETURNING *"
direct.execute("CREATE TABLE k_wide.log (v text)")
for i in range(3):
    assert b.execute(INSERT, (f"row {i}",)).fetchall() == [(f"row {i}",)]
direct.execute("ALTER TABLE k_wide.log ADD COLUMN n int DEFAULT 0")
assert b.execute(INSERT, ("after",)).fetchall() == [("after", 0)]
rows = direct.execute("SELECT v FROM k_wide.log ORDER BY v").fetchall()
assert rows == [("after",), ("row 0",), ("row 1",), ("row 2",)], rows

# Inside a transaction block the error can't be undone. With `always` it aborts the block,
# as the README says, and the next Parse of the text prepares it afresh; with `autocommit`
# the text is parsed as the unnamed statement there, as directly.
direct.execute("ALTER TABLE k_wide.t ADD COLUMN z int DEFAULT 1")
b.execute("BEGIN")
try:
    in_block = b.execute(QUERY, ("x",)).fetchall()
    failed = None
except psycopg.Error as e:
    failed = e.sqlstate
if MODE == "always":
    assert failed == "0A000", failed
    b.execute("ROLLBACK")
else:
    assert failed is None and in_block == [("wide", 1)], (failed, in_block)
    b.execute("COMMIT")
assert b.execute(QUERY, ("x",)).fetchall() == [("wide", 1)]
assert a.execute(QUERY, ("x",)).fetchall() == [("a", 5)]

for c in (a, b, other):
    c.close()
direct.execute("DROP SCHEMA k_a, k_wide CASCADE")
direct.close()
print("ok")
