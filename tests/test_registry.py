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


def test_the_run_store_migration_upgrades_a_registry_made_before_it(tmp_path, monkeypatch):
    """A registry made with migrations 001-006 (one dataset version per run, the `evaluations` copy of each
    summary): its runs keep their rows and model calls, and gain dataset version lists and key figures."""
    import json

    from tunewise.project import Project
    from tunewise.registry import db
    from tunewise.registry.runs import RunStore

    old = [m for m in MIGRATIONS if m[0] < "007"]
    assert [name for name, _ in old][-1] == "006_fine_tuning"
    monkeypatch.setattr(db, "MIGRATIONS", old)
    state = tmp_path / ".tunewise"
    reg = open_registry(state)
    reg.add_dataset_version("dv1", "train", ["t.jsonl"], 3, {}, "p")
    train_result = {"status": "succeeded", "steps": 4, "train_loss_last": 0.5, "eval_after": {"eval_loss": 0.75},
                    "wall_s": 12.5}  # fmt: skip
    summary = {"n_examples": 2, "arms": [{"name": "few-shot", "accuracy": {"value": 0.5}},
                                         {"name": "fine-tuned", "accuracy": {"value": 1.0}}]}  # fmt: skip
    with reg.transaction() as conn:
        conn.execute(
            "INSERT INTO runs VALUES ('train-1', 'train', 'succeeded', '2026-11-01T10:00:00+00:00',"
            " '2026-11-01T10:00:13+00:00', 'dv1', '{}', ?, 'runs/train-1')",
            (json.dumps(train_result),),
        )
        conn.execute(
            "INSERT INTO runs VALUES ('eval-1', 'eval', 'succeeded', '2026-11-01T11:00:00+00:00',"
            " '2026-11-01T11:00:30+00:00', NULL, '{}', '{\"status\": \"succeeded\"}', 'runs/eval-1')"
        )
        conn.execute("INSERT INTO evaluations VALUES ('eval-1', 'dv1', '[]', ?)", (json.dumps(summary),))
        conn.execute(
            "INSERT INTO model_calls (run_id, arm, example_id, sample, prompt_tokens, completion_tokens,"
            " latency_ms, created_at) VALUES ('eval-1', 'few-shot', '0', 0, 100, 2, 40.0, 'x'),"
            " ('eval-1', 'few-shot', '1', 0, 120, 3, 60.0, 'x')"
        )
    reg.close()
    monkeypatch.undo()

    reg = open_registry(state)
    assert "007_run_store" in reg.applied_migrations()
    tables = {r[0] for r in reg.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "evaluations" not in tables and {"runs", "model_calls"} <= tables
    assert reg.conn.execute("PRAGMA foreign_key_check").fetchall() == []
    reg.close()
    store = RunStore(Project(tmp_path))
    train, evaluation = store.get("train-1"), store.get("eval-1")
    assert train.dataset_versions == ["dv1"] and train.result == train_result and train.seconds == 13
    assert train.figures == {"steps": 4, "train_loss": 0.5, "validation_loss": 0.75, "seconds": 12.5}
    assert evaluation.dataset_versions == [] and evaluation.figures == {
        "accuracy": {"few-shot": 0.5, "fine-tuned": 1.0}
    }
    assert store.call_totals(evaluation) == {
        "few-shot": {"calls": 2, "prompt_tokens": 220, "completion_tokens": 5, "latency_ms": 50.0}
    }
    # New runs are written and read with the new columns beside the upgraded ones.
    new = store.create("eval", {}, dataset_versions=["dv1"])
    store.finish(new, "succeeded", figures={"accuracy": {"few-shot": 0.25}})
    assert [r.id for r in store.list(kind="eval")] == [new.id, "eval-1"]
