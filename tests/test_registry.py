import sqlite3

import pytest

from tunewise.registry import open_registry
from tunewise.registry.migrations import MIGRATIONS


def test_migrations_apply_once_in_order(tmp_path):
    reg = open_registry(tmp_path)
    assert reg.applied_migrations() == [name for name, _ in MIGRATIONS]
    assert reg.migrate() == []  # a second open applies nothing
    reg.close()
    reg = open_registry(tmp_path)
    assert reg.migrate() == []
    names = [name for name, _ in MIGRATIONS]
    assert names == sorted(names), "migration names must sort in the order they apply"


def test_dataset_versions_are_content_addressed(tmp_path):
    reg = open_registry(tmp_path)
    assert reg.add_dataset_version("abc123", "train", ["a.jsonl"], 3, {"examples": 3}, "p")
    assert not reg.add_dataset_version("abc123", "train", ["b.jsonl"], 3, {"examples": 3}, "p")
    rows = reg.dataset_versions()
    assert len(rows) == 1 and rows[0]["source_paths"] == ["a.jsonl"] and rows[0]["stats"] == {"examples": 3}
    assert reg.dataset_version("abc")["id"] == "abc123"
    raw = sqlite3.connect(tmp_path / "registry.sqlite3")
    assert raw.execute("SELECT count(*) FROM dataset_versions").fetchone() == (1,)


class InterruptedAfterBegin:
    """A connection that raises KeyboardInterrupt just after BEGIN returns, as a signal arriving during that
    call does: Python runs the handler at the next bytecode, before the transaction's body starts."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def execute(self, sql: str, *args):
        cursor = self._conn.execute(sql, *args)
        if sql.startswith("BEGIN"):
            raise KeyboardInterrupt
        return cursor

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def test_an_interrupt_just_after_begin_releases_the_write_lock(tmp_path):
    reg = open_registry(tmp_path)
    real = reg.conn
    reg.conn = InterruptedAfterBegin(real)
    with pytest.raises(KeyboardInterrupt):
        with reg.transaction():
            raise AssertionError("the body must not run")
    assert not real.in_transaction
    # Another writer (the run recording where it stopped) gets the lock at once instead of timing out.
    other = sqlite3.connect(tmp_path / "registry.sqlite3", timeout=0.1, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    reg.conn = real
    assert reg.add_dataset_version("abc123", "train", ["a.jsonl"], 3, {"examples": 3}, "p")
