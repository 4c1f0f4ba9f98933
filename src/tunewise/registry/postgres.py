"""The registry on PostgreSQL: a connection that runs the registry's SQLite SQL (through `dialect.to_postgres`)
and reads rows back as `sqlite3.Row` does, by position and by name.

A team points every server and worker at one database (`registry: postgresql://...` in tunewise.yaml, or
TUNEWISE_REGISTRY); the schema is the same named migrations as the embedded SQLite file. Statements run in
autocommit mode unless inside `Registry.transaction()`, as they do on SQLite with `isolation_level=None`.

Opening the registry borrows a connection from a small pool that the process keeps per URL (psycopg_pool), and
closing it gives the connection back: a worker's poll or an API request costs no new connection.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.registry.dialect import to_postgres

SCHEMES = ("postgresql://", "postgres://")

# Statements of shipped migrations that use SQLite's own functions (its JSON1 extension), each with its
# PostgreSQL equivalent: (migration, how the statement starts) -> the statement PostgreSQL runs instead.
# On a registry created on PostgreSQL these copy from tables that are still empty, but they must parse.
EQUIVALENTS: dict[tuple[str, str], str] = {
    (
        "007_run_store",
        "INSERT INTO runs_new",
    ): """
        INSERT INTO runs_new (id, kind, name, status, created_at, finished_at, dataset_versions, config, result,
                              figures, path)
            SELECT id, kind, NULL, status, created_at, finished_at,
                   CASE WHEN dataset_version IS NULL THEN '[]' ELSE json_build_array(dataset_version)::text END,
                   config, result,
                   CASE
                       WHEN kind = 'train' AND result IS NOT NULL THEN json_build_object(
                           'steps', result::jsonb #> '{steps}',
                           'train_loss', result::jsonb #> '{train_loss_last}',
                           'validation_loss', result::jsonb #> '{eval_after,eval_loss}',
                           'seconds', result::jsonb #> '{wall_s}')::text
                       WHEN kind = 'eval' THEN coalesce(
                           (SELECT json_build_object('accuracy', json_object_agg(
                                       arm.value ->> 'name', arm.value #> '{accuracy,value}'))::text
                            FROM evaluations AS e, jsonb_array_elements(e.summary::jsonb -> 'arms') AS arm(value)
                            WHERE e.run_id = runs.id
                            HAVING count(*) > 0),
                           '{}')
                       ELSE '{}'
                   END,
                   path
            FROM runs
    """,
}


def is_url(location: str | None) -> bool:
    """Whether a registry location names a PostgreSQL server.

    >>> is_url("postgresql://tunewise@db.internal/tunewise"), is_url(None), is_url("registry.sqlite3")
    (True, False, False)
    """
    return bool(location) and location.startswith(SCHEMES)


def statement_for(migration: str, statement: str) -> str:
    """The statement of `migration` that PostgreSQL runs: its equivalent when SQLite's own functions need one."""
    head = " ".join(statement.split())
    for (name, start), equivalent in EQUIVALENTS.items():
        if name == migration and head.startswith(start):
            return equivalent
    return statement


class Row(tuple):
    """A row read by position or by column name, as `sqlite3.Row`; the hidden `rowid` column (see
    `dialect`) is left out of `keys()` and so of `dict(row)`, as SQLite leaves it out of `SELECT *`."""

    _names: tuple[str, ...]

    def __new__(cls, names: tuple[str, ...], values: Sequence[Any]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise IndexError(f"no column {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return [n for n in self._names if n != "rowid"]


def _row_factory(cursor: Any) -> Any:
    names = tuple(c.name for c in cursor.description or ())
    return lambda values: Row(names, values)


# Connections each process keeps open to a registry server, per URL: a worker polls, beats and records every few
# seconds, and an API server opens the registry for each request; a new connection costs the TCP and
# authentication round trips every time. Small, since every server and worker of a team holds its own.
POOL_MIN = 1
POOL_MAX = 8
# How long a registry open waits for a pooled connection when all POOL_MAX are in use.
POOL_WAIT_S = 30.0
_POOLS: dict[tuple[str, int], Any] = {}
_POOLS_LOCK = threading.Lock()
# Connections whose Connection was dropped without close(): handed back at the next borrow rather than from
# the garbage collector, which may run while this thread holds the pool's lock.
_DROPPED: deque[tuple[str, Any]] = deque()


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise TunewiseError(
            "a PostgreSQL registry needs psycopg, which is not installed",
            hint="pip install 'tunewise[postgres]'",
        ) from None
    return psycopg


def _configure(conn: Any) -> None:
    from psycopg.types.numeric import NumericLoader

    class NumberLoader(NumericLoader):
        # sum() and avg() over integers are numeric on PostgreSQL (Decimal in Python): read them as SQLite
        # returns them, an int when whole, else a float, so that they serialize as JSON.
        def load(self, data: Any) -> Any:
            value = super().load(data)
            return int(value) if value == value.to_integral_value() else float(value)

    conn.adapters.register_loader("numeric", NumberLoader)


_CONNECT_ARGS = {"autocommit": True, "row_factory": _row_factory, "connect_timeout": 30}


def connect(url: str) -> Any:
    """A new psycopg connection to `url`, set up as the registry reads it (autocommit, `Row`s, numbers);
    unreachable: one `error:` line naming the URL without its password."""
    psycopg = _psycopg()
    try:
        conn = psycopg.connect(url, **_CONNECT_ARGS)
    except psycopg.OperationalError as exc:
        raise TunewiseError(
            f"cannot reach the registry at {redact(url)}: {str(exc).strip().splitlines()[-1]}",
            hint="check the URL (registry: in tunewise.yaml, TUNEWISE_REGISTRY or --registry) and that the "
            "server accepts this machine",
        ) from None
    _configure(conn)
    return conn


def pool(url: str) -> Any:
    """This process's pool of connections to `url`, made on first use. A process started by fork makes its
    own: connections are not shared across processes."""
    key = (url, os.getpid())
    with _POOLS_LOCK:
        found = _POOLS.get(key)
        if found is None:
            _psycopg()
            from psycopg_pool import ConnectionPool

            # The pool connects in the background and retries, so a wrong URL or a server down would surface
            # only as a wait: one direct connection first reports it at once.
            connect(url).close()
            found = ConnectionPool(
                url,
                kwargs=_CONNECT_ARGS,
                configure=_configure,
                # A connection that the server closed while it sat in the pool (a restart, a failover, an
                # idle timeout) fails this check on the way out (one empty round trip) and is replaced.
                check=ConnectionPool.check_connection,
                min_size=POOL_MIN,
                max_size=POOL_MAX,
                timeout=POOL_WAIT_S,
                num_workers=1,
                name=f"registry {redact(url)}",
                open=True,
            )
            _POOLS[key] = found
    return found


def borrow(url: str) -> Any:
    """A connection from this process's pool for `url`, checked; give it back with `give_back`."""
    while _DROPPED:
        give_back(*_DROPPED.popleft())
    from psycopg_pool import PoolTimeout

    try:
        return pool(url).getconn()
    except PoolTimeout:
        connect(url).close()  # the server gone: say so, as a direct connection would
        raise TunewiseError(
            f"no registry connection to {redact(url)} came free in {POOL_WAIT_S:g} s: all {POOL_MAX} of this "
            "process's are in use",
            hint="requests are waiting on slow registry transactions; look for long-held locks on the server "
            "(pg_stat_activity)",
        ) from None


def give_back(url: str, conn: Any) -> None:
    """Return a borrowed connection: rolled back if a transaction was left open, dropped if broken."""
    found = _POOLS.get((url, os.getpid()))
    if found is None or getattr(conn, "_pool", None) is not found:
        conn.close()  # borrowed before a fork, or from a pool since closed
    else:
        found.putconn(conn)


def close_pools() -> None:
    """Close this process's pools (at exit): their connections end cleanly rather than cut."""
    with _POOLS_LOCK:
        mine = [k for k in _POOLS if k[1] == os.getpid()]
        pools = [_POOLS.pop(k) for k in mine]
    for p in pools:
        p.close(timeout=1.0)


atexit.register(close_pools)


class Connection:
    """A registry connection with sqlite3's calling convention: `execute(sql, params)` returns the cursor,
    `in_transaction`, `close()`. It is borrowed from this process's pool for the URL (`pool`) and `close()`
    gives it back, rolled back if a transaction was left open.

    A connection the server closed (a restart, a failover, an idle timeout) is replaced: before the next
    statement, and at once for a BEGIN or a SELECT outside a transaction, which are retried on the new one (they
    changed nothing). A statement inside a transaction is not retried: its error reaches the caller, the
    transaction is gone, and the next one starts on a new connection."""

    def __init__(self, url: str):
        self.url = url
        self._conn: Any = borrow(url)

    def __del__(self) -> None:
        # Dropped without close(): the pool would lose the connection for good.
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            _DROPPED.append((self.url, conn))

    def _live(self) -> Any:
        if self._conn is None:
            raise _psycopg().ProgrammingError("the registry connection is closed")
        return self._conn

    def _reconnect(self) -> None:
        conn, self._conn = self._conn, None
        give_back(self.url, conn)  # broken: the pool drops it and opens another
        self._conn = borrow(self.url)

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        import psycopg

        query = to_postgres(sql)
        # Parameters always given (an empty tuple when none) so that psycopg reads '%%' as '%' in every statement.
        args = params if params is not None else ()
        if self._live().broken:
            self._reconnect()
        idle = not self.in_transaction
        try:
            return self._conn.execute(query, args)
        except psycopg.OperationalError:
            if not (self._conn.broken and idle and query.split()[0].upper() in ("BEGIN", "SELECT")):
                raise
            self._reconnect()
            return self._conn.execute(query, args)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        if self._live().broken:
            self._reconnect()
        cursor = self._conn.cursor()
        cursor.executemany(to_postgres(sql), list(seq))
        return cursor

    def copy_rows(self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
        """Write `rows` (values in `columns`' order) into `table` with COPY, a single round trip per buffer
        rather than one per row; returns how many rows were written."""
        names = ", ".join(f'"{c}"' for c in columns)
        n = 0
        with self._live().cursor() as cursor, cursor.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(row)
                n += 1
        return n

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (one on a connection the server closed is gone, so no)."""
        from psycopg.pq import TransactionStatus

        if self._conn is None or self._conn.broken:
            return False
        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        """Give the connection back to the pool; a second close does nothing, as sqlite3's."""
        conn, self._conn = self._conn, None
        if conn is not None:
            give_back(self.url, conn)


def sync_identities(conn: Connection) -> None:
    """Move each identity column's sequence past the largest value in it: a migration that copies rows with
    their ids (rebuilding a table, as SQLite needs to drop a column) leaves the sequence behind them."""
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall()
    for table, column in rows:
        conn.execute(
            f'SELECT setval(pg_get_serial_sequence(?, ?), coalesce(max("{column}"), 0) + 1, false) FROM "{table}"',
            (f'"{table}"', column),
        )


def redact(url: str) -> str:
    """The URL without its password, to show in messages.

    >>> redact("postgresql://team:s3cret@db:5432/tunewise")
    'postgresql://team:***@db:5432/tunewise'
    """
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
