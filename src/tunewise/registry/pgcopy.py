"""Copy a project's SQLite registry into a PostgreSQL database (`tunewise registry copy --to URL`), so that a
team can move onto a shared registry without losing its runs, datasets, keys, jobs, aliases, reviews or traffic.

The target is migrated first (the same named migrations, as any open does) and must hold no rows. The copy is one
transaction on the target: every table in an order that respects its foreign keys, SQLite's row order kept
(its hidden `rowid`, a column on PostgreSQL that the code orders and pages by), the identity sequences moved past
the largest id, and each table's row count checked against the source's. Any failure rolls it all back, leaving
the target without rows. The source is read in one transaction too, so that a server writing to it meanwhile
cannot make the counts disagree.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.registry import postgres
from tunewise.registry.db import Registry

# Rows read from SQLite and sent at a time: a registry's traffic or model calls may not fit memory at once.
BATCH = 1000


@dataclass(frozen=True)
class TableCopy:
    table: str
    rows: int


def foreign_key_order(tables: list[str], references: list[tuple[str, str]]) -> list[str]:
    """`tables` ordered so that each comes after those it references ((table, referenced) pairs); otherwise in
    the given order. A table referencing itself is left to its rows' order.

    >>> foreign_key_order(["events", "jobs", "files"], [("events", "jobs"), ("jobs", "files")])
    ['files', 'jobs', 'events']
    """
    needs = {t: {r for child, r in references if child == t and r != t and r in tables} for t in tables}
    ordered: list[str] = []
    while len(ordered) < len(tables):
        ready = [t for t in tables if t not in ordered and needs[t] <= set(ordered)]
        if not ready:
            cycle = sorted(t for t in tables if t not in ordered)
            raise RuntimeError(f"the registry's foreign keys form a cycle among {', '.join(cycle)}")
        ordered.append(ready[0])
    return ordered


def _source_tables(src: sqlite3.Connection) -> list[str]:
    rows = src.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name != '_migrations' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows]


def _source_columns(src: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]


def _target_columns(conn: Any) -> dict[str, list[str]]:
    rows = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " ORDER BY table_name, ordinal_position"
    ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def _target_references(conn: Any) -> list[tuple[str, str]]:
    rows = conn.execute(
        "SELECT c.relname, p.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
        " JOIN pg_class p ON p.oid = k.confrelid WHERE k.contype = 'f' AND k.connamespace = current_schema()::regnamespace"
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def copy_registry(
    source: Path, url: str, progress: Callable[[str, int], None] | None = None
) -> list[TableCopy]:
    """Copy the SQLite registry at `source` into the empty PostgreSQL database `url`; returns the rows copied
    per table, in the order copied. `progress(table, rows)` is called after each table."""
    where = postgres.redact(url)
    if not postgres.is_url(url):
        raise TunewiseError(
            f"--to '{url}' is not a PostgreSQL URL", hint="write postgresql://USER@HOST:PORT/DATABASE"
        )
    if not source.is_file():
        raise TunewiseError(
            f"no SQLite registry at {source}",
            hint="run the command in the project's folder (or pass --project), or name the file with --from",
        )
    # Both sides brought to this version's schema: the same migrations, so the same tables and columns.
    Registry(source).close()
    with Registry(source, url) as target:
        src = sqlite3.connect(source, isolation_level=None, timeout=30)
        try:
            src.execute("BEGIN")  # one snapshot of the source for the rows and their counts
            return _copy(src, target, where, progress)
        finally:
            src.close()


def _copy(
    src: sqlite3.Connection, target: Registry, where: str, progress: Callable[[str, int], None] | None
) -> list[TableCopy]:
    import psycopg

    tables = _source_tables(src)
    on_target = _target_columns(target.conn)
    for table in tables:
        wanted = _source_columns(src, table)
        have = [c for c in on_target.get(table, []) if c != "rowid"]
        if sorted(have) != sorted(wanted):
            raise TunewiseError(
                f"table {table} differs between the source ({', '.join(wanted)}) and {where}"
                f" ({', '.join(have) or 'absent'})",
                hint="copy into a new, empty database that this version of tunewise created",
            )
    order = foreign_key_order(tables, _target_references(target.conn))
    counts = {t: src.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in order}
    done: list[TableCopy] = []
    with target.transaction() as conn:
        # No server writes to the target while it is checked and filled; readers are not held up.
        conn.execute("LOCK TABLE " + ", ".join(f'"{t}"' for t in order) + " IN EXCLUSIVE MODE")
        held = {t: n for t in order if (n := conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])}
        if held:
            shown = ", ".join(f"{t} {n:,}" for t, n in held.items())
            raise TunewiseError(
                f"the registry at {where} already holds rows ({shown}): copying would mix two registries",
                hint="copy into a new, empty database: create one (createdb NAME) and pass its URL to --to",
            )
        for table in order:
            columns = _source_columns(src, table)
            with_rowid = "rowid" in on_target[table]
            names = (["rowid"] if with_rowid else []) + columns
            selected = ", ".join(["rowid"] * with_rowid + [f'"{c}"' for c in columns])
            rows = src.execute(f'SELECT {selected} FROM "{table}" ORDER BY rowid')
            try:
                copied = conn.copy_rows(table, names, _batches(rows))
            except psycopg.Error as exc:
                first = str(exc).strip().splitlines()[0]
                raise TunewiseError(
                    f"copying table {table} into {where} failed: {first}; nothing was copied",
                    hint="fix that row in the SQLite registry (the source), then run the copy again",
                ) from None
            if progress is not None:
                progress(table, copied)
            done.append(TableCopy(table, copied))
        postgres.sync_identities(conn)
        for table in order:
            n = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            if n != counts[table]:
                raise TunewiseError(
                    f"table {table}: {n:,} rows on {where} after the copy, {counts[table]:,} in the source;"
                    " nothing was copied",
                    hint="run the copy again; if it recurs, report it with both counts",
                )
    return done


def _batches(cursor: sqlite3.Cursor) -> Any:
    while rows := cursor.fetchmany(BATCH):
        yield from rows
