"""`data split` publishes its train and eval files together: a crash at any step leaves the old pair or the
new pair, never one file of each."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tunewise.data.versions as versions
from tunewise.data.versions import publish_split

OLD = {"train.jsonl": "old train\n", "eval.jsonl": "old eval\n"}
NEW = {"train.jsonl": "new train\n", "eval.jsonl": "new eval\n"}


def pair(folder: Path) -> dict[str, str]:
    return {name: (folder / name).read_text() for name in OLD}


def test_publishing_replaces_both_and_keeps_paths(tmp_path: Path):
    publish_split(tmp_path, OLD)
    assert pair(tmp_path) == OLD
    written = publish_split(tmp_path, NEW)
    assert pair(tmp_path) == NEW
    assert written == {name: tmp_path / name for name in NEW}
    publish_split(tmp_path, OLD)  # a third split: the oldest set folder is removed
    assert pair(tmp_path) == OLD
    sets = [p.name for p in (tmp_path / ".splits").iterdir() if p.name != "current"]
    assert len(sets) == 2


@pytest.mark.parametrize("start", ["regular files", "published"])
def test_a_failure_at_any_step_leaves_one_whole_pair(tmp_path: Path, monkeypatch, start: str):
    """Fail the k-th rename or link of a publish, for every k until one completes: each time, the two
    files read back as the old pair or the new pair."""
    real_replace, real_symlink = os.replace, os.symlink
    k = 0
    while True:
        k += 1
        folder = tmp_path / f"try{k}"
        folder.mkdir()
        if start == "regular files":
            for name, text in OLD.items():
                (folder / name).write_text(text)
        else:
            publish_split(folder, OLD)
        calls = 0

        def failing(real, fail_at=k):
            def call(*args, **kwargs):
                nonlocal calls
                calls += 1
                if calls == fail_at:
                    raise OSError("killed here")
                return real(*args, **kwargs)

            return call

        monkeypatch.setattr(versions.os, "replace", failing(real_replace))
        monkeypatch.setattr(versions.os, "symlink", failing(real_symlink))
        monkeypatch.setattr("tunewise.fileio.os.replace", failing(real_replace))
        try:
            publish_split(folder, NEW)
            done = True
        except OSError as exc:
            assert str(exc) == "killed here"
            done = False
        finally:
            monkeypatch.undo()
        seen = pair(folder)
        assert seen in (OLD, NEW), f"step {k}: {seen}"
        if done:
            assert seen == NEW
            break
        # The next run repairs nothing by hand: it just publishes.
        publish_split(folder, NEW)
        assert pair(folder) == NEW
    assert k > 3  # every step was failed once before a run completed


def test_split_command_publishes_the_pair(tmp_path: Path, run_cli):
    import json

    src = tmp_path / "all.jsonl"
    src.write_text(
        "".join(
            json.dumps({"prompt": f"question {i}", "completion": "yes" if i % 2 else "no"}) + "\n"
            for i in range(20)
        )
    )
    out = tmp_path / "data"
    code, _, err = run_cli("data", "split", src, "--out", out, "--eval-fraction", "0.25", cwd=tmp_path)
    assert code == 0, err
    assert (out / "train.jsonl").is_symlink() and (out / "eval.jsonl").is_symlink()
    # Stratified: 10 of each label, round(10 x 0.25) = 2 of each held out.
    train, held = ((out / n).read_text().splitlines() for n in ("train.jsonl", "eval.jsonl"))
    assert (len(train), len(held)) == (16, 4) and not set(train) & set(held)
