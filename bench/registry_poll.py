"""What an idle `tunewise worker` poll costs: on SQLite, and on PostgreSQL with a new connection per poll or a
connection borrowed from the process's pool (registry/postgres.py).

    .venv/bin/python bench/registry_poll.py [--polls 200] [--url postgresql://...]

Each poll is `JobWorker._claim()` on an empty queue, as the worker's loop runs it: open the project's registry,
ask whether a job waits, close. The arms run in turns of 20 polls each, so that a neighbour's load on a shared
machine falls on all of them; each prints the mean and the median milliseconds per poll.

Without --url the script starts a PostgreSQL server of its own on a loopback port (tests/postgres_server.py,
Debian's `postgresql` package) and removes it after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROUND = 20


@contextmanager
def unpooled() -> Iterator[None]:
    """Every registry open makes a new connection and every close ends it, as before the pool."""
    from tunewise.registry import postgres

    kept = postgres.borrow, postgres.give_back
    postgres.borrow = postgres.connect
    postgres.give_back = lambda url, conn: conn.close()
    try:
        yield
    finally:
        postgres.borrow, postgres.give_back = kept


@contextmanager
def pooled() -> Iterator[None]:
    yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=200, help="polls per arm (default 200)")
    parser.add_argument("--url", help="an empty PostgreSQL database (default: start a server here)")
    args = parser.parse_args()

    from tunewise.project import Project
    from tunewise.serve.worker import JobWorker

    server = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from postgres_server import PostgresServer

        try:
            server = PostgresServer()
        except BaseException as exc:  # pytest.skip's exception: no server binaries, or it did not start
            sys.exit(f"could not start PostgreSQL: {exc}")
        url = server.new_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            on_sqlite = JobWorker(Project(Path(tmp) / "sqlite"))
            on_pg = JobWorker(Project(Path(tmp) / "pg", registry_url=url))
            arms: dict[str, tuple[JobWorker, Callable[[], object]]] = {
                "SQLite": (on_sqlite, pooled),
                "PostgreSQL, a new connection per poll": (on_pg, unpooled),
                "PostgreSQL, pooled connections": (on_pg, pooled),
            }
            times: dict[str, list[float]] = {name: [] for name in arms}
            for worker, mode in arms.values():  # migrate, fill the pool, warm the caches
                with mode():
                    for _ in range(5):
                        assert worker._claim() is None
            for _ in range(max(1, args.polls // ROUND)):
                for name, (worker, mode) in arms.items():
                    with mode():
                        for _ in range(ROUND):
                            start = time.perf_counter()
                            worker._claim()
                            times[name].append((time.perf_counter() - start) * 1000)
    finally:
        if server is not None:
            server.stop()
    for name, ms in times.items():
        print(
            f"{name:<40} {statistics.mean(ms):6.2f} ms mean  {statistics.median(ms):6.2f} ms median"
            f"  ({len(ms)} polls)"
        )


if __name__ == "__main__":
    main()
