"""A thin layer over the registry's database: migrations on open, JSON columns, small typed helpers.

The database is the embedded SQLite file `.tunewise/registry.sqlite3`, or a PostgreSQL server that a team shares
(`registry: postgresql://...`; `registry.postgres`). The code speaks SQLite's SQL to both.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunewise.registry import postgres
from tunewise.registry.migrations import MIGRATIONS

# Any fixed number: the key of the PostgreSQL advisory lock that makes servers starting together migrate in turn.
MIGRATION_LOCK = 7461_5821
# PostgreSQL registries this process has brought up to date (URL, migrations known): a server or worker opens the
# registry for each short transaction, and over the network the check costs round trips each time. Migrations only
# append, so a database once current stays current for this process's code.
_CURRENT: set[tuple[str, int]] = set()


def utc_now() -> str:
    """The time every registry row and run record is stamped with: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    """The registry at `path` (the SQLite file), or on the PostgreSQL server `url` when one is given."""

    def __init__(self, path: Path, url: str | None = None):
        self.path = path
        self.url = url
        self.dialect = "postgresql" if url else "sqlite"
        self.conn: Any
        if url:
            self.conn = postgres.Connection(url)
            if (url, len(MIGRATIONS)) in _CURRENT:
                return
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we open transactions explicitly, so a migration is all-or-nothing.
            self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        """`with project.registry() as registry:` closes the connection however the block ends."""
        self.close()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction. On SQLite it holds the write lock from the start (BEGIN IMMEDIATE); on PostgreSQL it
        is a plain BEGIN (read committed), and what must not be taken twice is locked by row (`FOR UPDATE`)."""
        try:
            # Inside the `try`: a KeyboardInterrupt (Ctrl-C, or a job runner's SIGTERM) raised just after BEGIN
            # returns would otherwise leave the write lock held by this connection, and the next writer (the
            # run recording where it stopped) would wait out the busy timeout.
            self.conn.execute("BEGIN IMMEDIATE")
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    @property
    def clock(self) -> str:
        """An SQL expression for the database's time in unix seconds: machines sharing a registry compare times
        by one clock, the server's."""
        if self.dialect == "postgresql":
            return "CAST(extract(epoch FROM now()) AS BIGINT)"
        return "CAST(strftime('%s', 'now') AS INTEGER)"

    @property
    def skip_locked(self) -> str:
        """The clause that locks the rows a claim reads and skips those another claim holds: row locks on
        PostgreSQL; nothing on SQLite, where the transaction already holds the only write lock."""
        return " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""

    def applied_migrations(self) -> list[str]:
        create = "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        if self.dialect == "postgresql":
            # IF NOT EXISTS does not stop two servers creating it at the same moment on PostgreSQL.
            with self.transaction() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                conn.execute(create)
        else:
            self.conn.execute(create)
        return [r[0] for r in self.conn.execute("SELECT name FROM _migrations ORDER BY name")]

    def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the names applied now."""
        pending = [(n, sql) for n, sql in MIGRATIONS if n not in set(self.applied_migrations())]
        applied = []
        for name, sql in pending:
            with self.transaction() as conn:
                if self.dialect == "postgresql":
                    # Another server may be migrating the same database: wait for it, then look again.
                    conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
                    if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                        continue
                for statement in split_statements(sql):
                    if self.dialect == "postgresql":
                        statement = postgres.statement_for(name, statement)
                    try:
                        conn.execute(statement)
                    except Exception as exc:
                        if self.dialect == "sqlite":
                            raise
                        raise RuntimeError(f"migration {name} on PostgreSQL: {exc}") from exc
                if self.dialect == "postgresql":
                    postgres.sync_identities(conn)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, utc_now()))
            applied.append(name)
        if self.url:
            _CURRENT.add((self.url, len(MIGRATIONS)))
        return applied

    # --- dataset versions ---------------------------------------------------------------------------

    def add_dataset_version(
        self, id: str, name: str, source_paths: list[str], n_examples: int, stats: dict[str, Any], path: str
    ) -> bool:
        """Record a dataset version; returns False when that content was already recorded."""
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO dataset_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (id, name, utc_now(), json.dumps(source_paths), n_examples, json.dumps(stats), path),
            )
            return cur.rowcount == 1

    def dataset_versions(self) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM dataset_versions ORDER BY created_at DESC, id").fetchall()
        return [_decode(r, ("source_paths", "stats")) for r in rows]

    def dataset_version(self, id_prefix: str) -> dict[str, Any] | None:
        rows = self.conn.execute(
            "SELECT * FROM dataset_versions WHERE id LIKE ? ORDER BY created_at DESC", (id_prefix + "%",)
        ).fetchall()
        return _decode(rows[0], ("source_paths", "stats")) if len(rows) == 1 else None


def lock_rows(conn: Any, mode: str = "UPDATE") -> str:
    """The clause that locks the rows a SELECT reads until the transaction ends (`FOR UPDATE`, `FOR SHARE`) on
    PostgreSQL; nothing on SQLite, where a transaction already holds the only write lock (BEGIN IMMEDIATE)."""
    return f" FOR {mode}" if isinstance(conn, postgres.Connection) else ""


def split_statements(sql: str) -> list[str]:
    r"""SQL statements of a script, split where sqlite says a statement is complete (so a ';' inside a
    comment or a string does not split it).

    >>> split_statements("CREATE TABLE a (x); -- one; two\nCREATE TABLE b (y);")
    ['CREATE TABLE a (x);', '-- one; two\nCREATE TABLE b (y);']
    """
    statements, current = [], ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s.strip(" ;\n")]


def _decode(row: Any, json_cols: tuple[str, ...]) -> dict[str, Any]:
    out = dict(row)
    for col in json_cols:
        if out.get(col) is not None:
            out[col] = json.loads(out[col])
    return out


def open_registry(state_dir: Path, url: str | None = None) -> Registry:
    """The registry of the project whose state folder is `state_dir`: its SQLite file, or the PostgreSQL
    server `url` (`Project.registry_url()` says which)."""
    return Registry(state_dir / "registry.sqlite3", url)
