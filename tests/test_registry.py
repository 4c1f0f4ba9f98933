import sqlite3

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
