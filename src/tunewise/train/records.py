"""The run directory and its registry row: one self-describing folder per training run.

runs/<run-id>/
  config.json          the resolved config (what was asked, what `auto` became, data hashes)
  environment.json     versions, device, threads, the precision decision and why
  metrics.jsonl        one line per optimizer step and per held-out evaluation
  checkpoints/         step-NNNNNN/ (written to a temporary name, then renamed) and `latest`
  adapter/             LoRA: PEFT layout, loadable by `PeftModel.from_pretrained(base, adapter_dir)`
  model/               full fine-tuning: a safetensors model folder with its tokenizer
  result.json          status, error, final metrics; written even when the run fails
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunewise.project import Project, atomic_write_text


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"train-{stamp}-{secrets.token_hex(2)}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def environment(precision: dict[str, Any], device: str, world_size: int) -> dict[str, Any]:
    """Versions and machine facts that explain this run's speed and numerics."""
    import peft
    import torch
    import transformers

    from tunewise import __version__

    return {
        "tunewise": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": device,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "world_size": world_size,
        "precision": precision,
    }


class MetricsLog:
    """Append-only metrics.jsonl; on resume, lines past the checkpoint's step are dropped (they are replayed)."""

    def __init__(self, path: Path):
        self.path = path

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x.strip()]


def record_start(
    project: Project, run_id: str, run_dir: Path, config: dict[str, Any], dataset_version: str | None
) -> None:
    """Insert (or, on resume, reset to running) the run's registry row."""
    registry = project.registry()
    try:
        with registry.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, kind, status, created_at, finished_at, dataset_version, config, result, path)"
                " VALUES (?, 'train', 'running', ?, NULL, ?, ?, NULL, ?)"
                " ON CONFLICT(id) DO UPDATE SET status='running', finished_at=NULL, config=excluded.config",
                (run_id, utc_now(), dataset_version, json.dumps(config, default=str), str(run_dir)),
            )
    finally:
        registry.close()


def record_finish(project: Project, run_id: str, result: dict[str, Any]) -> None:
    registry = project.registry()
    try:
        with registry.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status=?, finished_at=?, result=? WHERE id=?",
                (result["status"], utc_now(), json.dumps(result, default=str), run_id),
            )
    finally:
        registry.close()


def find_run_dir(project: Project, run: str) -> Path:
    """The directory of run `run` (an id, a unique id prefix, or a path)."""
    from tunewise.errors import TunewiseError

    path = Path(run)
    if (path / "config.json").is_file():
        return path.resolve()
    matches = sorted(p for p in project.runs_dir.glob(f"{run}*") if (p / "config.json").is_file())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise TunewiseError(
            f"no run '{run}' in {project.runs_dir}", hint="list runs with `ls .tunewise/runs`"
        )
    raise TunewiseError(f"'{run}' matches {len(matches)} runs", hint="type more of the run id")
