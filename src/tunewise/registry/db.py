"""A thin layer over sqlite3: migrations on open, JSON columns, small typed helpers."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunewise.registry.migrations import MIGRATIONS


def utc_now() -> str:
    """The time every registry row and run record is stamped with: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we open transactions explicitly, so a migration is all-or-nothing.
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
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

    def applied_migrations(self) -> list[str]:
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        return [r[0] for r in self.conn.execute("SELECT name FROM _migrations ORDER BY name")]

    def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the names applied now."""
        done = set(self.applied_migrations())
        applied = []
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            with self.transaction() as conn:
                for statement in split_statements(sql):
                    conn.execute(statement)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, utc_now()))
            applied.append(name)
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


def _decode(row: sqlite3.Row, json_cols: tuple[str, ...]) -> dict[str, Any]:
    out = dict(row)
    for col in json_cols:
        if out.get(col) is not None:
            out[col] = json.loads(out[col])
    return out


def open_registry(state_dir: Path) -> Registry:
    return Registry(state_dir / "registry.sqlite3")
