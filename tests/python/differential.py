"""Differential isolation test of the PostgreSQL door: every client must see through the door
exactly what it sees on a direct connection to PostgreSQL.

Each scenario is a script of steps, (client index, action), run by a deterministic scheduler:
one step at a time, synchronously, every client its own connection (psycopg 3 in autocommit
mode unless a step opens a transaction; asyncpg for the asyncpg pool case). The script runs
twice, once with every client connected directly to PostgreSQL and once with every client
connected to the door, each time on freshly set-up objects in the DSN's database. What each
client observes at each step is recorded: its result sets (rows and command tags), the error's
SQLSTATE and message, the notices it got, the reported server parameters (ParameterStatus) that
changed, and its transaction status. The two traces are compared step by step; the first
difference of each scenario is reported with both observations. The door is meant to run with
a pool of 2 (`--pool-max 2`) so three clients really share server connections.

Nothing that legitimately differs is observed (backend pids, ports, OIDs, temp schema names,
protocol-level statement names, timestamps).

The scenarios: the ones written out in `hand_written()` (custom settings, search_path behind a
comment, temp tables / settings / advisory locks inside DO blocks and functions, startup
options with DISCARD ALL / RESET ALL / RESET, asyncpg's pool with server_settings, set_config
with a bound parameter, ON COMMIT DROP, PREPARE TRANSACTION vs SQL PREPARE, rolled back SETs,
SET LOCAL, several statements in one query, role switches), then `--random-rounds` random
interleavings (seeded by `--seed`) over a corpus of session-changing statements written
plainly, behind comments, inside DO blocks and functions, through the extended protocol with
bound parameters and named statements, and in pipelines.

Scheduling rules that keep a correct door from ever blocking on a pool of 2: in each scenario
only client 0 (the "owner") runs statements that pin a client to its server connection in
the door (temp tables, session advisory locks, LISTEN, WITH HOLD cursors, SQL PREPARE, role
switches), and while another client has a transaction open only it and the owner take steps.

Setup goes straight to PostgreSQL, never through the door: the door's database is reached
with DIRECT_DSN's host, port, user and password and the database name the door reports
(`--door-admin-dsn` overrides that). Before each run of a scenario the setup also ends every
other backend of that database (waiting for each to exit), so the door starts each scenario
with fresh server connections and a difference is that scenario's own doing, not state an
earlier one left behind. Roles and two-phase transaction ids get names unique to this run;
everything created is dropped at the end.

A custom setting that another session once set exists as an empty placeholder in that backend
for ever (DISCARD ALL and RESET ALL keep it): `current_setting('app.x', true)` reads '' there
and NULL on a backend that never saw it. That is observed strictly; `--lenient-placeholders`
reads custom settings with nullif(…, '') instead, hiding that one difference.

The run is bounded: scenarios not started within --time-budget seconds (90) fail as not run,
and a hang ends the script with a traceback at 110 s.

usage: differential.py DIRECT_DSN DOOR_DSN [--seed N] [--random-rounds N] [--only TEXT] [-v]
Exit status 0 when every scenario matched, 1 listing the differences (or on a setup error,
with its traceback), 2 on a usage error.
"""

import argparse
import asyncio
import faulthandler
import random
import sys
import time
import uuid

import asyncpg
import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# A hang shows where it is stuck (tests/isolation.rs stops waiting at 120 s).
faulthandler.dump_traceback_later(110, exit=True)

# Server parameters PostgreSQL reports (ParameterStatus); search_path only from PostgreSQL 18.
REPORTED = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "is_superuser",
    "session_authorization",
    "standard_conforming_strings",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "server_encoding",
    "server_version",
    "search_path",
)

OWNER = 0
A, B, C = 0, 1, 2

# Names unique to this run, the same in both traces.
RUN = uuid.uuid4().hex[:8]
ROLE = f"iso_someone_{RUN}"
GID = f"iso_gid_{RUN}"


# --- Actions --------------------------------------------------------------------------------


class Sql:
    """One query. No params: the simple query protocol (several statements allowed). With
    params, or binary=True: the extended protocol, unnamed statement. prepare=True: a named
    prepared statement (Parse once, then Bind/Execute)."""

    def __init__(self, text, params=None, prepare=False, binary=False, label=None):
        self.text, self.params, self.prepare, self.binary = text, params, prepare, binary
        self.label = label

    def __str__(self):
        how = [self.label or repr(self.text)]
        if self.params is not None:
            how.append(f"params={self.params!r}")
        if self.prepare:
            how.append("named statement")
        if self.binary:
            how.append("extended")
        return " ".join(how)


class Pipeline:
    """Statements sent in one pipeline (extended protocol, unnamed statements, parameters as
    untyped text; one Sync at the end, and one after each statement whose index is in
    sync_after). All answers are read after the last Sync."""

    def __init__(self, *statements, sync_after=()):
        self.statements = [s if isinstance(s, Sql) else Sql(s) for s in statements]
        self.sync_after = set(sync_after)

    def __str__(self):
        parts = []
        for i, s in enumerate(self.statements):
            parts.append(str(s) + (" <sync>" if i in self.sync_after else ""))
        return "pipeline[" + "; ".join(parts) + "]"


class PoolSession:
    """asyncpg: acquire a connection from the client's pool, run the statements, release it
    (asyncpg resets it on release: advisory unlock all, CLOSE ALL, UNLISTEN *, RESET ALL)."""

    def __init__(self, *statements):
        self.statements = statements

    def __str__(self):
        return "asyncpg pool: acquire; " + "; ".join(map(repr, self.statements)) + "; release"


def sql(text, params=None, **how):
    return Sql(text, params, **how)


def pipe(*statements, sync_after=()):
    return Pipeline(*statements, sync_after=sync_after)


# --- Clients --------------------------------------------------------------------------------


def render(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return repr(value) if value is None or isinstance(value, str) else str(value)


def error_of(e):
    diag = getattr(e, "diag", None)
    message = diag.message_primary if diag is not None and diag.message_primary else str(e)
    return ("error", getattr(e, "sqlstate", None), message.strip())


class PsycopgClient:
    def __init__(self, dsn, connect_kwargs):
        self.notices = []
        self.params = {}
        self.conn = None
        self.dsn, self.kwargs = dsn, connect_kwargs

    def connect(self):
        try:
            # Only the steps that ask for a named statement prepare one: psycopg never
            # prepares with a threshold of None (prepare=True included), so the threshold is
            # one no step reaches instead.
            self.conn = psycopg.connect(
                self.dsn, autocommit=True, prepare_threshold=1 << 30, **self.kwargs
            )
        except psycopg.Error as e:
            return {"connect": error_of(e)}
        self.conn.add_notice_handler(
            lambda d: self.notices.append((d.severity_nonlocalized, d.sqlstate, d.message_primary))
        )
        return {"connect": "ok", "params": self.changed_params()}

    def changed_params(self):
        now = {}
        for name in REPORTED:
            now[name] = self.conn.info.parameter_status(name)
        changed = {k: v for k, v in now.items() if self.params.get(k) != v}
        self.params = now
        return changed

    @staticmethod
    def result_sets(cur):
        sets = []
        while True:
            if cur.description is None:
                sets.append((cur.statusmessage,))
            else:
                columns = tuple(col.name for col in cur.description)
                rows = [tuple(render(v) for v in row) for row in cur.fetchall()]
                sets.append((cur.statusmessage, columns, rows))
            if not cur.nextset():
                return sets

    def run(self, action):
        if self.conn is None or self.conn.closed:
            return {"result": ("error", None, "not connected")}
        self.notices.clear()
        if isinstance(action, Sql):
            result = self.run_sql(action)
        elif isinstance(action, Pipeline):
            result = self.run_pipeline(action)
        else:
            raise TypeError(f"a psycopg client cannot run {action}")
        return self.observation(result)

    def observation(self, result):
        obs = {"result": result}
        if self.notices:
            obs["notices"] = list(self.notices)
        if not self.conn.closed:
            changed = self.changed_params()
            if changed:
                obs["params"] = changed
            obs["tx"] = self.conn.info.transaction_status.name
        else:
            obs["tx"] = "CLOSED"
        return obs

    def run_sql(self, s):
        cur = self.conn.cursor()
        try:
            cur.execute(s.text, s.params, prepare=s.prepare or None, binary=s.binary)
            return self.result_sets(cur)
        except psycopg.Error as e:
            return error_of(e)

    def run_pipeline(self, p):
        """The pipeline at libpq's level, so what is observed is exactly the server's ordered
        answers (psycopg's own pipeline reports errors wherever it happens to read them)."""
        pg = self.conn.pgconn
        was_nonblocking = pg.nonblocking
        pg.nonblocking = 0  # each send and Sync flushed before the next, blocking
        answers = []
        syncs = 0
        try:
            pg.enter_pipeline_mode()
            for i, s in enumerate(p.statements):
                text = s.text
                params = None
                if s.params is not None:
                    for n in range(1, len(s.params) + 1):
                        text = text.replace("%s", f"${n}", 1)
                    params = [str(v).encode() for v in s.params]
                pg.send_query_params(text.encode(), params)
                if i in p.sync_after:
                    pg.pipeline_sync()
                    syncs += 1
            pg.pipeline_sync()
            syncs += 1
            while syncs:
                res = pg.get_result()
                if res is None:
                    if pg.status == pq.ConnStatus.BAD:
                        answers.append(("error", None, "connection lost"))
                        break
                    continue
                if res.status == pq.ExecStatus.PIPELINE_SYNC:
                    syncs -= 1
                    answers.append("sync")
                else:
                    answers.append(self.libpq_result(res))
            pg.exit_pipeline_mode()
        except psycopg.Error as e:
            answers.append(error_of(e))
            self.conn.close()  # left mid-pipeline: later steps see "not connected"
        finally:
            pg.nonblocking = was_nonblocking
        return {"pipeline": answers}

    @staticmethod
    def libpq_result(res):
        status = pq.ExecStatus(res.status)
        if status == pq.ExecStatus.FATAL_ERROR:
            field = res.error_field
            return (
                "error",
                (field(pq.DiagnosticField.SQLSTATE) or b"").decode(),
                (field(pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode(),
            )
        command = res.command_status.decode() if res.command_status else None
        if status != pq.ExecStatus.TUPLES_OK:
            return (status.name, command)
        columns = tuple(res.fname(c).decode() for c in range(res.nfields))
        rows = [
            tuple(render(None if v is None else v.decode())
                  for v in (res.get_value(r, c) for c in range(res.nfields)))
            for r in range(res.ntuples)
        ]
        return (status.name, command, columns, rows)

    def close(self):
        if self.conn is not None:
            self.conn.close()


class AsyncpgPoolClient:
    """An asyncpg pool of one connection (so every acquire gets the connection the last
    release reset), with server_settings sent at login."""

    def __init__(self, dsn, server_settings, loop):
        self.dsn, self.server_settings, self.loop = dsn, server_settings, loop
        self.pool = None

    def connect(self):
        async def create():
            return await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=1, server_settings=self.server_settings
            )

        try:
            self.pool = self.loop.run_until_complete(create())
        except Exception as e:  # whatever the door answers is an observation
            return {"connect": ("error", getattr(e, "sqlstate", None), str(e))}
        return {"connect": "ok"}

    def run(self, action):
        if not isinstance(action, PoolSession):
            raise TypeError(f"an asyncpg pool client cannot run {action}")
        return {"result": self.loop.run_until_complete(self.session(action.statements))}

    async def session(self, statements):
        out = []
        try:
            async with self.pool.acquire() as conn:
                for text in statements:
                    try:
                        rows = await conn.fetch(text)
                        out.append([tuple(render(v) for v in r.values()) for r in rows])
                    except asyncpg.PostgresError as e:
                        out.append(("error", e.sqlstate, str(e)))
        except Exception as e:  # acquiring or releasing (the reset) failed
            out.append(("pool", getattr(e, "sqlstate", None), str(e)))
        return out

    def close(self):
        if self.pool is not None:
            self.loop.run_until_complete(self.pool.close())


# When set (--lenient-placeholders), custom settings are read with nullif(…, ''), so an empty
# placeholder left in a backend by another session reads as unset.
LENIENT = False


def setting(name):
    """SQL that reads the custom setting `name`, NULL when it is not set."""
    read = f"current_setting('{name}', true)"
    return f"nullif({read}, '')" if LENIENT else read


# --- Scenarios ------------------------------------------------------------------------------


class Scenario:
    def __init__(self, name, steps, clients=3, connect=None, asyncpg_pools=None):
        """`connect` maps a client index to extra psycopg.connect arguments; `asyncpg_pools`
        maps a client index to the server_settings of an asyncpg pool client."""
        self.name, self.steps = name, steps
        self.clients = clients
        self.connect = connect or {}
        self.asyncpg_pools = asyncpg_pools or {}


def check_script(scenario):
    """The scheduling rule, checked: no step of a third client while the owner and another
    client could both hold server connections."""
    in_tx = set()
    for i, (c, action) in enumerate(scenario.steps):
        others = in_tx - {OWNER, c}
        assert not others or c == OWNER, f"{scenario.name} step {i}: {c} would wait for {others}"
        if isinstance(action, Sql) and action.params is None:
            head = action.text.strip().upper()
            if head.startswith(("BEGIN", "START TRANSACTION")):
                in_tx.add(c)
            elif head.startswith(("COMMIT", "ROLLBACK", "END", "PREPARE TRANSACTION")) and not (
                head.startswith(("ROLLBACK TO", "COMMIT PREPARED", "ROLLBACK PREPARED"))
            ):
                in_tx.discard(c)


SETUP = """
SET lock_timeout = '5s';
SET statement_timeout = '20s';
SET search_path = pg_catalog;
DROP SCHEMA IF EXISTS iso, app, shop, evil, s_a, s_b, s_wide CASCADE;
DROP TABLE IF EXISTS public.items;
CREATE SCHEMA iso; CREATE SCHEMA app; CREATE SCHEMA shop; CREATE SCHEMA evil;
CREATE SCHEMA s_a; CREATE SCHEMA s_b; CREATE SCHEMA s_wide;
CREATE TABLE public.items (v text); INSERT INTO public.items VALUES ('public');
CREATE TABLE app.items (v text); INSERT INTO app.items VALUES ('app');
CREATE TABLE shop.items (v text); INSERT INTO shop.items VALUES ('shop');
CREATE TABLE evil.items (v text); INSERT INTO evil.items VALUES ('evil');
CREATE TABLE s_a.items (v text); INSERT INTO s_a.items VALUES ('s_a');
CREATE TABLE s_b.items (v text); INSERT INTO s_b.items VALUES ('s_b');
CREATE TABLE s_wide.items (v text, w int); INSERT INTO s_wide.items VALUES ('s_wide', 7);
CREATE TABLE iso.log (n int);
CREATE FUNCTION iso.set_guc(name text, value text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN RETURN pg_catalog.set_config(name, value, false); END$$;
CREATE FUNCTION iso.exec(statement text) RETURNS text LANGUAGE plpgsql AS
  $$BEGIN EXECUTE statement; RETURN 'done'; END$$;
CREATE PROCEDURE iso.proc_set(name text, value text) LANGUAGE plpgsql AS
  $$BEGIN PERFORM pg_catalog.set_config(name, value, false); END$$;
CREATE FUNCTION iso.session_things(key bigint) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_catalog.set_config('app.fn', 'from-function', false);
  PERFORM pg_catalog.pg_advisory_lock(key);
  CREATE TEMP TABLE fn_t AS SELECT 'fn-secret'::text AS s;
  RETURN 'done';
END$$;
GRANT USAGE ON SCHEMA iso, app, shop, evil, s_a, s_b, s_wide TO PUBLIC;
GRANT SELECT ON ALL TABLES IN SCHEMA app, shop, evil, s_a, s_b, s_wide TO PUBLIC;
GRANT SELECT ON public.items TO PUBLIC;
GRANT SELECT, INSERT ON iso.log TO PUBLIC;
"""

TEARDOWN = """
SET lock_timeout = '5s';
SET statement_timeout = '20s';
SET search_path = pg_catalog;
DROP SCHEMA IF EXISTS iso, app, shop, evil, s_a, s_b, s_wide CASCADE;
DROP TABLE IF EXISTS public.items;
"""


def admin_run(admin_dsn, script, fresh_backends=False):
    """Runs a set-up script straight on the server. With fresh_backends, first ends every
    other backend in the database, and waits for each to exit: the door's idle server
    connections then start the scenario afresh, so a difference is the scenario's own doing
    and not state an earlier scenario left in a server connection."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if fresh_backends:
            conn.execute(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            )
        # Two-phase transactions a scenario left behind hold locks: roll them back first.
        gids = conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s AND database = current_database()",
            (GID + "%",),
        ).fetchall()
        for (gid,) in gids:
            conn.execute(f"ROLLBACK PREPARED '{gid}'")
        conn.execute(script)


def hand_written(twopc):
    """The scenarios of the issue, written out."""
    read_tenant = f"SELECT {setting('app.tenant_id')}"
    traffic = [
        (B, sql("BEGIN")),
        (B, sql("INSERT INTO iso.log VALUES (1)")),
        (B, sql("SELECT count(*) FROM iso.log")),
        (B, sql("COMMIT")),
        (C, sql("BEGIN")),
        (C, sql("INSERT INTO iso.log VALUES (2)")),
    ]
    yield Scenario(
        "1 custom setting app.tenant_id",
        [
            (A, sql("SET app.tenant_id = '42'")),
            (A, sql(read_tenant)),
            (B, sql(read_tenant)),
            (C, sql(read_tenant)),
            *traffic,
            (A, sql(read_tenant)),  # C holds a server connection: A may be on the other one
            (C, sql("COMMIT")),
            (B, sql(read_tenant)),
            (A, sql(read_tenant)),
            (C, sql(read_tenant)),
            (B, sql("SET app.tenant_id = '7'")),
            (A, sql(read_tenant)),
            (B, sql(read_tenant)),
            (A, sql("RESET app.tenant_id")),
            (A, sql(read_tenant)),
            (C, sql(read_tenant)),
        ],
    )

    show = sql("SHOW search_path")
    items = sql("SELECT v FROM items")
    yield Scenario(
        "2 search_path behind a comment",
        [
            (A, sql("/* tag */ SET search_path = evil")),
            (B, show),
            (B, items),
            (A, show),
            (A, items),
            *traffic,
            (A, show),
            (A, items),
            (C, sql("COMMIT")),
            (B, show),
            (C, show),
            (C, items),
            (B, items),
            (A, sql("-- a line comment\nSET search_path = s_a")),
            (B, show),
            (A, items),
            (A, sql("/* x */ /* y */ SET /* z */ search_path = s_b")),
            (C, items),
            (A, items),
        ],
    )

    # A schema per tenant, tables of different shapes: each client's named statement is
    # analysed under its own search_path, as directly (a statement shared by text alone
    # would be bound under another client's path: 0A000, "cached plan must not change
    # result type").
    star = sql("SELECT * FROM items", prepare=True)
    star2 = sql("SELECT *, 2 AS two FROM items", prepare=True)
    star3 = sql("SELECT *, 3 AS three FROM items", prepare=True)
    star4 = sql("SELECT *, 4 AS four FROM items", prepare=True)
    unnamed = sql("SELECT * FROM items WHERE v <> %s", ("x",))
    yield Scenario(
        "2b a schema per tenant, named statements",
        [
            (A, sql("SET search_path = s_a")),
            (B, sql("SET search_path = s_wide")),
            # A holds one of the door's two server connections: B and C share the other.
            (A, sql("BEGIN")),
            (A, sql("SELECT 1")),
            (B, star),
            (C, star),
            (B, star),
            (C, star),
            (A, sql("COMMIT")),
            (A, star),
            (B, star),
            (C, star),
            # B's session path is s_a now, A's too; A prepares the same text inside a block
            # under SET LOCAL: its statement is its own.
            (B, star4),
            (A, sql("BEGIN")),
            (A, sql("SET LOCAL search_path = s_wide")),
            (A, star4),
            (A, sql("COMMIT")),
            (B, star4),
            (C, sql("SELECT 1")),
            (B, star4),
            (A, unnamed),
            (B, unnamed),
            (C, unnamed),
            (B, unnamed),
            (A, unnamed),
            (A, star),
            (B, star),
            (C, star),
            (B, star),
            (A, star),
            # Changed inside a transaction: the statement is parsed under the new path.
            (B, sql("BEGIN")),
            (B, sql("SET search_path = s_a")),
            (B, star2),
            (B, sql("COMMIT")),
            (A, star2),
            (B, star2),
            (A, sql("BEGIN")),
            (A, sql("SET LOCAL search_path = s_wide")),
            (A, star3),
            (A, sql("COMMIT")),
            (A, star),
            (C, sql("SELECT set_config('search_path', 's_wide', false)")),
            (C, star2),
            (C, unnamed),
            (C, star3),
            (A, star2),
            (B, star2),
            (C, star2),
        ],
    )

    temp = "SELECT to_regclass('pg_temp.secret_t') IS NOT NULL"
    yield Scenario(
        "3a temp table created in a DO block",
        [
            (A, sql("DO $$BEGIN CREATE TEMP TABLE secret_t AS SELECT 'a-secret' s; END$$")),
            (B, sql(temp)),
            (B, sql("SELECT * FROM secret_t")),
            (C, sql(temp)),
            (A, sql(temp)),
            (A, sql("SELECT * FROM secret_t")),
            *traffic,
            (A, sql("SELECT * FROM secret_t")),
            (C, sql("COMMIT")),
            (B, sql(temp)),
            (C, sql(temp)),
            (C, sql("SELECT * FROM secret_t")),
            (A, sql("SELECT * FROM secret_t")),
        ],
    )

    key = 4242
    holds = (
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 0"
        f" AND objid = {key} AND objsubid = 1 AND pid = pg_backend_pid())"
    )
    state = (
        f"SELECT {setting('app.fn')},"
        " to_regclass('pg_temp.fn_t') IS NOT NULL, pg_try_advisory_xact_lock(%d)" % key
    )
    yield Scenario(
        "3b function with set_config, pg_advisory_lock, CREATE TEMP TABLE",
        [
            (A, sql(f"SELECT iso.session_things({key})")),
            (A, sql(state)),
            (A, sql(holds)),
            (B, sql(state)),
            (B, sql(holds)),
            (C, sql("SELECT * FROM fn_t")),
            *traffic,
            (A, sql(state)),
            (A, sql(holds)),
            (A, sql("SELECT * FROM fn_t")),
            (C, sql("COMMIT")),
            (B, sql(state)),
            (C, sql(state)),
            (A, sql(f"SELECT pg_advisory_unlock({key})")),
            (A, sql(holds)),
            (B, sql(f"SELECT pg_try_advisory_xact_lock({key})")),
        ],
    )

    yield Scenario(
        "4a startup options, then DISCARD ALL / RESET ALL / RESET",
        [
            (A, show),
            (A, items),
            (A, sql(read_tenant)),
            (B, show),
            (B, items),
            (A, sql("SET search_path = evil")),
            (A, items),
            (A, sql("DISCARD ALL")),
            (A, show),
            (A, items),
            (A, sql(read_tenant)),
            (B, sql("BEGIN")),
            (B, show),
            (A, sql("SET search_path = evil")),
            (A, sql("RESET ALL")),
            (A, show),
            (A, items),
            (B, sql("COMMIT")),
            (A, sql("SET search_path = shop")),
            (C, show),
            (A, sql("RESET search_path")),
            (A, show),
            (A, items),
            (A, sql("SET SESSION search_path TO DEFAULT")),
            (C, items),
            (A, show),
            (A, sql("SET application_name = 'changed'")),
            (A, sql("RESET application_name")),
            (A, sql("SHOW application_name")),
            (B, sql("SHOW application_name")),
            (C, sql("SHOW application_name")),
        ],
        connect={
            A: {
                "options": "-c search_path=app -c app.tenant_id=startup",
                "application_name": "client-a",
            },
            C: {"options": "-c search_path=shop"},
        },
    )

    yield Scenario(
        "4b asyncpg pool with server_settings search_path, RESET ALL on release",
        [
            (A, PoolSession("SHOW search_path", "SELECT v FROM items")),
            (A, PoolSession("SET search_path = evil", "SELECT v FROM items")),
            (B, sql("SELECT v FROM items")),
            (A, PoolSession("SELECT v FROM items", "SHOW search_path")),
            (B, sql("BEGIN")),
            (B, sql("INSERT INTO iso.log VALUES (1)")),
            (A, PoolSession("SELECT set_config('search_path', 'evil', false)",
                            "SELECT v FROM items")),
            (A, PoolSession("SELECT v FROM items")),
            (B, sql("COMMIT")),
            (C, sql("SELECT v FROM items")),
            (A, PoolSession("SELECT v FROM items", "SHOW search_path")),
            (C, sql("SHOW search_path")),
        ],
        asyncpg_pools={A: {"search_path": "shop,public"}},
    )

    read_x = f"SELECT {setting('app.x')}"
    yield Scenario(
        "5 set_config with a bound parameter",
        [
            (A, sql("SELECT set_config('app.x', %s, false)", ("bound-5",))),
            (A, sql(read_x)),
            (B, sql(read_x)),
            *traffic,
            (A, sql(read_x)),
            (C, sql("COMMIT")),
            (B, sql(read_x)),
            (A, sql("SELECT set_config(%s, %s, false)", ("app.x", "named-5"), prepare=True)),
            (C, sql(read_x)),
            (B, sql("BEGIN")),
            (A, sql(read_x, binary=True)),
            (B, sql("COMMIT")),
            (C, sql(read_x, prepare=True)),
            (A, sql(read_x, prepare=True)),
        ],
    )

    regt = "SELECT to_regclass('pg_temp.t') IS NOT NULL"
    yield Scenario(
        "6 temp table ON COMMIT DROP",
        [
            (A, sql("BEGIN")),
            (A, sql("CREATE TEMP TABLE t(a int) ON COMMIT DROP")),
            (A, sql("INSERT INTO t VALUES (1), (2)")),
            (A, sql("SELECT sum(a) FROM t")),
            (A, sql("COMMIT")),
            (A, sql(regt)),
            (B, sql(regt)),
            (C, sql(regt)),
            *traffic,
            (A, sql(regt)),
            (A, sql("SELECT count(*) FROM iso.log")),
            (C, sql("COMMIT")),
            (A, sql("SET app.after = 'still-fine'")),
            (B, sql("BEGIN")),
            (A, sql(f"SELECT {setting('app.after')}")),
            (B, sql("COMMIT")),
            (A, sql("BEGIN")),
            (A, sql("CREATE TEMP TABLE t(a int) ON COMMIT DROP")),
            (A, sql("COMMIT")),
            (A, sql("SELECT * FROM t")),
            (B, sql(regt)),
            (C, sql(regt)),
        ],
    )

    prepared = (
        "SELECT array_agg(name::text ORDER BY name) FROM pg_prepared_statements WHERE from_sql"
    )
    steps = [
        (A, sql("PREPARE q7(int) AS SELECT $1 + 1")),
        (A, sql("EXECUTE q7(41)")),
        (B, sql("EXECUTE q7(1)")),
        (B, sql(prepared)),
        *traffic,
        (A, sql("EXECUTE q7(1)")),
        (A, sql(prepared)),
        (C, sql("COMMIT")),
        (C, sql("EXECUTE q7(2)")),
        (A, sql("DEALLOCATE q7")),
        (A, sql("EXECUTE q7(3)")),
    ]
    if twopc:
        steps += [
            (A, sql("BEGIN")),
            (A, sql("INSERT INTO iso.log VALUES (7)")),
            (A, sql("SET app.two = 'in-2pc'")),
            (A, sql(f"PREPARE TRANSACTION '{GID}_1'")),
            (A, sql(f"SELECT {setting('app.two')}")),
            (B, sql("SELECT count(*) FROM iso.log WHERE n = 7")),
            (B, sql(f"SELECT {setting('app.two')}")),
            (B, sql(f"SELECT gid FROM pg_prepared_xacts WHERE gid LIKE '{GID}%'")),
            (B, sql(f"COMMIT PREPARED '{GID}_1'")),
            (A, sql("SELECT count(*) FROM iso.log WHERE n = 7")),
            (A, sql("BEGIN")),
            (A, sql("INSERT INTO iso.log VALUES (8)")),
            (A, sql(f"PREPARE TRANSACTION '{GID}_2'")),
            (C, sql(f"PREPARE TRANSACTION '{GID}_3'")),
            (A, sql(f"ROLLBACK PREPARED '{GID}_2'")),
            (C, sql("SELECT count(*) FROM iso.log WHERE n = 8")),
            (A, sql("CREATE TEMP TABLE tt (a int)")),
            (A, sql("BEGIN")),
            (A, sql("INSERT INTO tt VALUES (1)")),
            (A, sql(f"PREPARE TRANSACTION '{GID}_4'")),
            (B, sql(f"SELECT gid FROM pg_prepared_xacts WHERE gid LIKE '{GID}%'")),
            (A, sql("SELECT count(*) FROM tt")),
        ]
    yield Scenario("7 SQL PREPARE and PREPARE TRANSACTION", steps)

    yield Scenario(
        "8a SET in a transaction that rolls back",
        [
            (A, sql("BEGIN")),
            (A, sql("SET search_path = evil")),
            (A, sql("SET app.rb = 'rolled-back'")),
            (A, items),
            (A, sql("ROLLBACK")),
            (A, show),
            (A, items),
            (A, sql(f"SELECT {setting('app.rb')}")),
            *traffic,
            (A, show),
            (C, sql("COMMIT")),
            (B, show),
            (A, sql("BEGIN")),
            (A, sql("SET search_path = s_a")),
            (A, sql("SAVEPOINT sp")),
            (A, sql("SET search_path = evil")),
            (A, sql("ROLLBACK TO SAVEPOINT sp")),
            (A, items),
            (A, sql("COMMIT")),
            (B, items),
            (A, items),
            (A, sql("BEGIN")),
            (A, sql("SET search_path = s_b")),
            (A, sql("SELECT 1/0")),
            (A, sql("COMMIT")),
            (A, items),
            (C, items),
        ],
    )

    read_l = f"SELECT {setting('app.l')}"
    yield Scenario(
        "8b SET LOCAL",
        [
            (A, sql("SET LOCAL app.l = 'outside'")),
            (A, sql(read_l)),
            (A, sql("BEGIN")),
            (A, sql("SET LOCAL app.l = 'local'")),
            (A, sql("SET LOCAL search_path = evil")),
            (A, sql(read_l)),
            (A, items),
            (B, sql(read_l)),
            (B, items),
            (A, sql("COMMIT")),
            (A, sql(read_l)),
            (A, items),
            (B, sql(read_l)),
            (C, items),
            (A, sql("SELECT set_config('app.l', 'local-fn', true)")),
            (A, sql(read_l)),
            (B, sql(read_l)),
        ],
    )

    yield Scenario(
        "8c SET SESSION",
        [
            (A, sql("SET SESSION search_path = s_a")),
            (A, sql("SET SESSION TIME ZONE 'Asia/Tokyo'")),
            (B, show),
            (B, sql("SHOW TimeZone")),
            *traffic,
            (A, show),
            (A, sql("SHOW TimeZone")),
            (A, items),
            (C, sql("COMMIT")),
            (C, sql("SHOW TimeZone")),
            (C, items),
        ],
    )

    yield Scenario(
        "8d several statements in one simple query",
        [
            (A, sql("SELECT 1; SET search_path = evil")),
            (B, show),
            (A, show),
            (A, sql("SET search_path = s_a; SELECT v FROM items")),
            (B, items),
            *traffic,
            (A, items),
            (C, sql("COMMIT")),
            (C, items),
            (A, sql("SET app.multi = 'm'; SELECT 1/0; SET search_path = evil")),
            (A, sql(f"SELECT {setting('app.multi')}")),
            (A, items),
            (B, sql(f"SELECT {setting('app.multi')}")),
            (A, sql("BEGIN; SET search_path = s_b; COMMIT; SELECT v FROM items")),
            (C, items),
            (A, items),
        ],
    )

    who = "SELECT current_user, session_user"
    yield Scenario(
        "8e role via set_config, SET ROLE, SET SESSION AUTHORIZATION",
        [
            (A, sql(f"SELECT set_config('role', '{ROLE}', false)")),
            (A, sql(who)),
            (B, sql(who)),
            (C, sql(who)),
            *traffic,
            (A, sql(who)),
            (C, sql("COMMIT")),
            (B, sql(who)),
            (A, sql("RESET ROLE")),
            (A, sql(who)),
            (A, sql(f"SET ROLE {ROLE}")),
            (B, sql(who)),
            (A, sql(who)),
            (C, sql(who)),
            (A, sql("RESET ROLE")),
            (A, sql(f"SET SESSION AUTHORIZATION {ROLE}")),
            (A, sql(who)),
            (B, sql(who)),
            (C, sql("BEGIN")),
            (A, sql(who)),
            (C, sql(who)),
            (C, sql("COMMIT")),
            (A, sql("RESET SESSION AUTHORIZATION")),
            (A, sql(who)),
            (A, sql(f"DO $$BEGIN PERFORM set_config('role', '{ROLE}', false); END$$")),
            (B, sql(who)),
            (A, sql(who)),
        ],
    )


# --- Random interleavings -------------------------------------------------------------------

GUC_VALUES = {
    "search_path": ["evil", "s_a", "s_b", "shop, public", "DEFAULT"],
    "TimeZone": ["UTC", "Asia/Tokyo", "America/New_York"],
    "application_name": ["app-one", "app-two"],
    "DateStyle": ["ISO, DMY", "SQL, MDY"],
    "IntervalStyle": ["postgres_verbose", "iso_8601"],
    "statement_timeout": ["123s", "0"],
    "work_mem": ["7MB", "9MB"],
}


def literal(value):
    return "'" + value.replace("'", "''") + "'"


def set_forms(name, value):
    """Ways of setting `name` to `value` for the session: (weight, action)."""
    rhs = value if name == "search_path" else literal(value)
    if value == "DEFAULT":
        plain, text_value = f"SET {name} TO DEFAULT", None
    else:
        plain, text_value = f"SET {name} = {rhs}", value
    forms = [
        sql(plain),
        sql(f"/* tenant */ {plain}"),
        sql(f"-- hidden\n{plain}"),
        sql(plain.replace("SET ", "SET SESSION ", 1)),
        sql(f"SELECT 1; {plain}"),
        sql(f"{plain}; SELECT 2"),
        sql(f"SELECT iso.exec({literal(plain)})"),
        sql(f"DO $$BEGIN EXECUTE {literal(plain)}; END$$"),
    ]
    if text_value is not None:
        forms += [
            sql(f"SELECT set_config({literal(name)}, {literal(text_value)}, false)"),
            sql(f"select PG_CATALOG.SET_CONFIG({literal(name)}, {literal(text_value)}, FALSE)"),
            sql("SELECT set_config(%s, %s, false)", (name, text_value)),
            sql("SELECT set_config(%s, %s, false)", (name, text_value), prepare=True),
            sql(f"SELECT set_config({literal(name)}, {literal(text_value)}, false)", binary=True),
            sql("SELECT iso.set_guc(%s, %s)", (name, text_value)),
            sql(f"CALL iso.proc_set({literal(name)}, {literal(text_value)})"),
            sql(
                f"DO $$BEGIN PERFORM set_config({literal(name)}, {literal(text_value)}, false);"
                " END$$"
            ),
            sql(f"WITH s AS (SELECT set_config({literal(name)}, {literal(text_value)}, false))"
                " SELECT count(*) FROM s"),
            sql(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)"
                f" SELECT set_config({literal(name)}, {literal(text_value)}, false)"),
            pipe(sql("SELECT set_config(%s, %s, false)", (name, text_value)), "SELECT 1"),
            pipe("SELECT 1", sql(plain), "SELECT 1/0"),
            pipe(sql(plain), "SELECT 1/0", "SELECT 3", sync_after=(0,)),
            sql(f"SELECT set_config({literal(name)}, {literal(text_value)}, true)"),
            sql(f"SET LOCAL {name} = {rhs}"),
        ]
    return forms


def reset_forms(name):
    return [
        sql(f"RESET {name}"),
        sql(f"/* r */ RESET {name}"),
        sql("RESET ALL"),
        sql("DISCARD ALL"),
        sql(f"SELECT iso.exec('RESET {name}')"),
    ]


def owner_forms(r, key, rng):
    """Statements that keep state only a backend can hold (only the owner runs them)."""
    table, prep, channel, cursor = f"tmp_r{r}", f"p_r{r}", f"ch_r{r}", f"cur_r{r}"
    secret = f"secret-{r}"
    return [
        sql(f"CREATE TEMP TABLE {table} AS SELECT '{secret}'::text s"),
        sql(f"/* t */ CREATE TEMPORARY TABLE {table} AS SELECT '{secret}'::text s"),
        sql(f"DO $$BEGIN CREATE TEMP TABLE {table} AS SELECT '{secret}'::text s; END$$"),
        sql(f"SELECT iso.exec('CREATE TEMP TABLE {table} AS SELECT ''{secret}''::text s')"),
        sql(f"SELECT '{secret}'::text s INTO TEMP {table}"),
        sql(f"SELECT s FROM {table}"),
        sql(f"DROP TABLE IF EXISTS pg_temp.{table}"),
        sql(f"SELECT pg_try_advisory_lock({key})"),
        sql("SELECT pg_try_advisory_lock(%s)", (key,)),
        sql(f"DO $$BEGIN PERFORM pg_try_advisory_lock({key}); END$$"),
        sql(f"SELECT pg_advisory_unlock({key})"),
        sql(f"PREPARE {prep}(int) AS SELECT $1 * 2"),
        sql(f"SELECT iso.exec('PREPARE {prep}(int) AS SELECT $1 * 3')"),
        sql(f"EXECUTE {prep}({rng.randrange(100)})"),
        sql(f"DEALLOCATE {prep}"),
        sql(f"LISTEN {channel}"),
        sql(f"DO $$BEGIN EXECUTE 'LISTEN {channel}'; END$$"),
        sql(f"UNLISTEN {channel}"),
        sql(f"DECLARE {cursor} CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 5) g"),
        sql(f"SELECT iso.exec('DECLARE {cursor} CURSOR WITH HOLD FOR SELECT 1')"),
        sql(f"FETCH 1 FROM {cursor}"),
        sql(f"CLOSE {cursor}"),
        sql(f"SET ROLE {ROLE}"),
        sql(f"SELECT set_config('role', '{ROLE}', false)"),
        sql(f"DO $$BEGIN PERFORM set_config('role', '{ROLE}', false); END$$"),
        sql("RESET ROLE"),
        sql(f"SET SESSION AUTHORIZATION {ROLE}"),
        sql("RESET SESSION AUTHORIZATION"),
    ]


def probe(r, key):
    """One query reading every kind of session state a random round can change."""
    return (
        f"SELECT {setting(f'app.r{r}_0')} AS custom_0, {setting(f'app.r{r}_1')} AS custom_1,"
        " current_setting('search_path') AS search_path,"
        " current_setting('TimeZone') AS timezone,"
        " current_setting('application_name') AS application_name,"
        " current_setting('DateStyle') AS datestyle,"
        " current_setting('IntervalStyle') AS intervalstyle,"
        " current_setting('statement_timeout') AS statement_timeout,"
        " current_setting('work_mem') AS work_mem,"
        " current_user::text AS current_user, session_user::text AS session_user,"
        " (SELECT string_agg(v, ',') FROM items) AS unqualified_items,"
        f" to_regclass('pg_temp.tmp_r{r}') IS NOT NULL AS temp_table,"
        " EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = 0"
        f"   AND objid = {key} AND objsubid = 1 AND pid = pg_backend_pid()) AS advisory_lock,"
        " ARRAY(SELECT name::text FROM pg_prepared_statements WHERE from_sql ORDER BY 1)"
        "   AS sql_prepared,"
        " ARRAY(SELECT c::text FROM pg_listening_channels() c ORDER BY 1) AS listening,"
        " ARRAY(SELECT name::text FROM pg_cursors WHERE is_holdable ORDER BY 1) AS hold_cursors"
    )


def random_scenario(r, rng, steps):
    key = 900000 + r
    custom = [f"app.r{r}_{i}" for i in range(2)]
    query = probe(r, key)
    probes = [
        sql(query, label="<probe>"),
        sql(query, binary=True, label="<probe>"),
        sql(query, prepare=True, label="<probe>"),
        sql(query + " WHERE %s = %s", (1, 1), label="<probe>"),
        pipe("SELECT 1", sql(query, label="<probe>")),
    ]
    script = []
    in_tx = set()
    token = 0
    for _ in range(steps):
        holders = in_tx - {OWNER}
        client = rng.choice([OWNER, *holders] if holders else [0, 1, 2])
        roll = rng.random()
        if roll < 0.30:
            action = rng.choice(probes)
        elif roll < 0.65:
            name = rng.choice(custom + list(GUC_VALUES))
            if name in GUC_VALUES:
                value = rng.choice(GUC_VALUES[name])
            else:
                token += 1
                value = f"c{client}-v{token}"
            action = rng.choice(set_forms(name, value))
        elif roll < 0.72:
            action = rng.choice(reset_forms(rng.choice(custom + list(GUC_VALUES))))
        elif roll < 0.82 and client == OWNER:
            action = rng.choice(owner_forms(r, key, rng))
        elif roll < 0.92:
            if client in in_tx:
                action = sql(rng.choice(["COMMIT", "ROLLBACK", "END", "SAVEPOINT sp",
                                         "ROLLBACK TO SAVEPOINT sp", "SELECT 1/0"]))
                if action.text in ("COMMIT", "ROLLBACK", "END"):
                    in_tx.discard(client)
            else:
                action = sql(rng.choice(["BEGIN", "START TRANSACTION",
                                         "BEGIN ISOLATION LEVEL REPEATABLE READ"]))
                in_tx.add(client)
        else:
            action = sql(rng.choice(["INSERT INTO iso.log VALUES (1)",
                                     "SELECT count(*) FROM iso.log"]))
        script.append((client, action))
    # Every client ends its transaction and reads everything once more.
    for client in sorted(in_tx):
        script.append((client, sql("COMMIT")))
    for client in (0, 1, 2):
        script.append((client, sql(query, label="<probe>")))
    return Scenario(f"random round {r}", script)


# --- Running and comparing ------------------------------------------------------------------


def run_scenario(scenario, dsn, admin_dsn, reference=None):
    """Runs the scenario with every client on `dsn`; its trace. With `reference` (the direct
    trace), stops at the first step that differs from it."""
    admin_run(admin_dsn, SETUP, fresh_backends=True)
    loop = asyncio.new_event_loop()
    clients = []
    trace = []
    try:
        for i in range(scenario.clients):
            if i in scenario.asyncpg_pools:
                clients.append(AsyncpgPoolClient(dsn, scenario.asyncpg_pools[i], loop))
            else:
                clients.append(PsycopgClient(dsn, scenario.connect.get(i, {})))
        for i, client in enumerate(clients):
            trace.append((i, "connect", client.connect()))
            if reference is not None and trace[-1] != reference[len(trace) - 1]:
                return trace
        for c, action in scenario.steps:
            trace.append((c, str(action), clients[c].run(action)))
            if reference is not None and trace[-1] != reference[len(trace) - 1]:
                return trace
        return trace
    finally:
        for client in clients:
            try:
                client.close()
            except Exception:  # a broken connection is not this function's concern
                pass
        loop.close()


def differing_columns(want, got):
    """Where two results of the same shape differ: [(column, direct value, door value)]."""

    def result_sets(obs):
        result = obs.get("result")
        if isinstance(result, dict):
            result = [a for a in result["pipeline"] if isinstance(a, tuple)]
        return result if isinstance(result, list) else None

    found = []
    a, b = result_sets(want), result_sets(got)
    if a is None or b is None or len(a) != len(b):
        return found
    for x, y in zip(a, b):
        # (tag, columns, rows) from psycopg, (status, tag, columns, rows) from a pipeline
        if len(x) != len(y) or len(x) < 3 or not isinstance(x[-1], list):
            continue
        if x[-2] != y[-2] or not isinstance(y[-1], list) or len(x[-1]) != len(y[-1]):
            continue
        for row_x, row_y in zip(x[-1], y[-1]):
            found += [(c, vx, vy) for c, vx, vy in zip(x[-2], row_x, row_y) if vx != vy]
    return found


def describe(obs):
    return "\n        ".join(f"{k}: {v!r}" for k, v in obs.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("direct_dsn")
    parser.add_argument("door_dsn")
    parser.add_argument("--seed", type=int, default=20260101)
    parser.add_argument("--random-rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=40, help="steps per random round")
    parser.add_argument("--door-admin-dsn", help="a direct superuser DSN to the door's database")
    parser.add_argument("--lenient-placeholders", action="store_true")
    parser.add_argument(
        "--time-budget", type=float, default=90,
        help="seconds; scenarios not started by then fail as not run",
    )
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every trace")
    args = parser.parse_args()

    global LENIENT
    LENIENT = args.lenient_placeholders
    started = time.monotonic()
    with psycopg.connect(args.door_dsn, autocommit=True) as conn:
        door_database = conn.execute("SELECT current_database()").fetchone()[0]
    if args.door_admin_dsn:
        door_admin = args.door_admin_dsn
    else:
        door_admin = make_conninfo(
            **{**conninfo_to_dict(args.direct_dsn), "dbname": door_database}
        )
    with psycopg.connect(args.direct_dsn, autocommit=True) as conn:
        twopc = int(conn.execute("SHOW max_prepared_transactions").fetchone()[0]) > 0
        conn.execute(f"CREATE ROLE {ROLE} NOLOGIN")
    if not twopc:
        print("max_prepared_transactions = 0: scenario 7's PREPARE TRANSACTION part is skipped")

    rng = random.Random(args.seed)
    scenarios = list(hand_written(twopc)) + [
        random_scenario(r, rng, args.steps)
        for r in range(args.random_rounds)
    ]
    if args.only:
        scenarios = [s for s in scenarios if args.only in s.name]
    differences = []
    try:
        for scenario in scenarios:
            if time.monotonic() - started > args.time_budget:
                differences.append(scenario.name)
                print(f"DIFF  {scenario.name}: not run, past the time budget")
                continue
            check_script(scenario)
            direct = run_scenario(scenario, args.direct_dsn, args.direct_dsn)
            door = run_scenario(scenario, args.door_dsn, door_admin, reference=direct)
            if args.verbose:
                print(f"--- {scenario.name}")
                for step, (c, what, obs) in enumerate(direct):
                    print(f"  {step:3} client {c}: {what}\n        {describe(obs)}")
            mismatch = next(
                (i for i, pair in enumerate(zip(direct, door)) if pair[0] != pair[1]), None
            )
            if mismatch is None and len(door) != len(direct):
                mismatch = len(door)
            if mismatch is None:
                print(f"ok    {scenario.name} ({len(direct)} steps)")
                continue
            c, what, want = direct[mismatch]
            got = door[mismatch][2] if mismatch < len(door) else {"missing": True}
            differences.append(scenario.name)
            print(f"DIFF  {scenario.name}: first difference at step {mismatch}, client {c}: {what}")
            context = direct[max(0, mismatch - 4):mismatch]
            for i, (cc, ww, _) in enumerate(context, start=mismatch - len(context)):
                print(f"        (step {i}, client {cc}: {ww})")
            for column, in_direct, in_door in differing_columns(want, got):
                print(f"      {column}: {in_direct} directly, {in_door} through the door")
            print(f"      direct: {describe(want)}")
            print(f"      door:   {describe(got)}")
    finally:
        for admin in (args.direct_dsn, door_admin):
            admin_run(admin, TEARDOWN, fresh_backends=True)
        with psycopg.connect(args.direct_dsn, autocommit=True) as conn:
            try:
                conn.execute(f"DROP ROLE IF EXISTS {ROLE}")
            except psycopg.Error as e:
                print(f"note: role {ROLE} not dropped: {e}")
    elapsed = time.monotonic() - started
    print(
        f"\n{len(scenarios) - len(differences)} passed, {len(differences)} failed"
        f" ({len(scenarios)} scenarios, seed {args.seed}, {elapsed:.1f} s)"
    )
    if differences:
        print("clients saw something through the door that they do not see directly in:")
        for name in differences:
            print(f"  - {name}")
        sys.exit(1)


if __name__ == "__main__":
    main()
