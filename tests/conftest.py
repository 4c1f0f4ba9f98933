"""Shared fixtures. Tests are offline and isolate every user folder: the cache is shared (converted models are
expensive), but each test's project lives in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = SHARED / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(
            f"../shared/datasets is absent ({DATASETS}): the public datasets live beside the repository"
        )
    return DATASETS


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the real CLI entry point in-process; returns (exit_code, stdout, stderr)."""

    def run(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        import sys

        from tunewise.cli import main

        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["tunewise", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
