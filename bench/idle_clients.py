"""Open N client connections through a pooler, run one query on each, and hold them idle.

Prints `ready N` once every connection is logged in and has run its query, then holds them until
stdin is closed. Used by bench/pooler.sh to measure the pooler's memory per idle client and that
10,000 concurrent clients on one pool work. A line `query` on stdin has every held connection run
`SELECT 1` again, after all of them have idled (bench/idle_many.sh), and prints `queried N failed M`.
"""

import asyncio
import sys

import psycopg


async def main(dsn: str, n: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)
    conns = []
    failures = 0

    async def one() -> None:
        nonlocal failures
        async with gate:
            try:
                conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
                await conn.execute("SELECT 1")
                conns.append(conn)
            except Exception as e:  # report, don't hide: the count below is the result
                failures += 1
                if failures <= 3:
                    print(f"connect failed: {e}", file=sys.stderr, flush=True)

    await asyncio.gather(*(one() for _ in range(n)))
    print(f"ready {len(conns)} failed {failures}", flush=True)
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "query":
        ok = 0
        failed = 0

        async def again(conn: psycopg.AsyncConnection) -> None:
            nonlocal ok, failed
            async with gate:
                try:
                    cur = await conn.execute("SELECT 1")
                    if await cur.fetchone() == (1,):
                        ok += 1
                    else:
                        failed += 1
                except Exception as e:
                    failed += 1
                    if failed <= 3:
                        print(f"query failed: {e}", file=sys.stderr, flush=True)

        await asyncio.gather(*(again(c) for c in conns))
        print(f"queried {ok} failed {failed}", flush=True)
    for c in conns:
        await c.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 100))
