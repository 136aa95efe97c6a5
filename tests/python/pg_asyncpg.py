"""asyncpg through the PostgreSQL door: its statement cache (named statements everywhere),
executemany, copy_records_to_table, transactions, a stale plan after ALTER TABLE (asyncpg
re-prepares by itself), and 12 concurrent connections from one event loop on a pool of 3.

usage: pg_asyncpg.py DSN
"""

import faulthandler
import asyncio
import sys

import asyncpg

DSN = sys.argv[1]
# A hang shows where it is stuck (the test stops waiting at 120 s).
faulthandler.dump_traceback_later(90, exit=True)


async def basics():
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)")
        await conn.executemany(
            "INSERT INTO items VALUES ($1, $2, $3)",
            [(i, f"item {i}", i * 1.5) for i in range(200)],
        )
        assert await conn.fetchval("SELECT count(*) FROM items") == 200
        rows = await conn.fetch("SELECT id, name FROM items WHERE id < $1 ORDER BY id", 3)
        assert [tuple(r) for r in rows] == [(0, "item 0"), (1, "item 1"), (2, "item 2")]
        stmt = await conn.prepare("SELECT name FROM items WHERE id = $1")
        for i in range(0, 200, 20):
            assert await stmt.fetchval(i) == f"item {i}"
        copied = await conn.copy_records_to_table(
            "items", records=[(1000 + i, f"copied {i}", 0) for i in range(500)]
        )
        assert copied == "COPY 500", copied
        assert await conn.fetchval("SELECT count(*) FROM items") == 700
        async with conn.transaction():
            await conn.execute("INSERT INTO items VALUES (5000, 'kept', 1)")
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO items VALUES (5001, 'gone', 1)")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        names = await conn.fetch("SELECT name FROM items WHERE id >= 5000 ORDER BY id")
        assert [r["name"] for r in names] == ["kept"], names
        # A failed statement inside a transaction, then a savepoint recovers.
        async with conn.transaction():
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO items VALUES (5000, 'dup', 1)")
                raise AssertionError("a duplicate key was accepted")
            except asyncpg.UniqueViolationError:
                pass
            assert await conn.fetchval("SELECT count(*) FROM items WHERE id = 5000") == 1
        # Types asyncpg must introspect (its own named statements).
        await conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')")
        assert await conn.fetchval("SELECT $1::mood", "happy") == "happy"
        # A stale plan: asyncpg sees 0A000 and prepares again by itself.
        await conn.execute("CREATE TABLE stale (a int)")
        await conn.execute("INSERT INTO stale VALUES (1)")
        assert [tuple(r) for r in await conn.fetch("SELECT * FROM stale")] == [(1,)]
        await conn.execute("ALTER TABLE stale ADD COLUMN b int")
        assert [tuple(r) for r in await conn.fetch("SELECT * FROM stale")] == [(1, None)]
        assert [tuple(r) for r in await conn.fetch("SELECT * FROM stale")] == [(1, None)]
    finally:
        await conn.close()


async def worker(n):
    conn = await asyncpg.connect(DSN)
    try:
        total = 0
        for i in range(40):
            if i % 4 == 0:
                async with conn.transaction():
                    await conn.execute("UPDATE counters SET n = n + 1 WHERE id = $1", n)
                    total += await conn.fetchval("SELECT n FROM counters WHERE id = $1", n)
            else:
                assert await conn.fetchval("SELECT $1::int * 2", i) == i * 2
                assert await conn.fetchval("SELECT $1::text || $2::text", "a", str(n)) == f"a{n}"
        return total
    finally:
        await conn.close()


async def concurrent():
    conn = await asyncpg.connect(DSN)
    await conn.execute("CREATE TABLE counters (id int PRIMARY KEY, n int)")
    await conn.executemany("INSERT INTO counters VALUES ($1, 0)", [(i,) for i in range(12)])
    totals = await asyncio.gather(*(worker(n) for n in range(12)))
    # Each worker's updates were its own: 10 increments each, seen as 1, 2, ..., 10.
    assert totals == [55] * 12, totals
    assert await conn.fetchval("SELECT sum(n) FROM counters") == 120
    await conn.close()


async def main():
    await basics()
    await concurrent()


asyncio.run(main())
print("ok")
