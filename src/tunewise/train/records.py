"""A training run's folder and its record in the run store (registry/runs.py): one self-describing folder
per run.

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

import json
import os
import platform
from pathlib import Path
from typing import Any

from tunewise.fileio import append_jsonl, atomic_write_jsonl, read_jsonl
from tunewise.fileio import sha256_file as sha256_file  # the training loop hashes its data with it
from tunewise.project import Project
from tunewise.registry.runs import RunStore, train_figures
from tunewise.registry.runs import new_run_id as _new_run_id

# Runs that hold a training run's folder: `tunewise train` makes 'train' runs, the jobs API 'job' runs.
TRAINING_KINDS = ("train", "job")


def new_run_id() -> str:
    """A new training run's id: `train-<UTC time>-<4 hex>`."""
    return _new_run_id("train")


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
        atomic_write_jsonl(self.path, [r for r in self.read() if r.get("step", 0) <= step])

    def append(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)


def record_start(
    project: Project, run_id: str, run_dir: Path, config: dict[str, Any], dataset_version: str | None
) -> None:
    """Register the run (or, on resume, set it back to running); config.json is already in `run_dir`."""
    RunStore(project).register(
        "train", config, run_id=run_id, path=run_dir, dataset_versions=[dataset_version]
    )


def record_finish(project: Project, run_id: str, result: dict[str, Any]) -> None:
    """Finish the run with `result` (TrainResult.to_dict() and more): result.json, status and key figures."""
    store = RunStore(project)
    metrics = MetricsLog(Path(result.get("run_dir") or store.folder(run_id)) / "metrics.jsonl").read()
    store.finish(run_id, result["status"], result, figures=train_figures(result, metrics))


def find_run_dir(project: Project, run: str) -> Path:
    """The folder of training run `run`: its id, a unique prefix of it, or its folder's path."""
    from tunewise.errors import TunewiseError

    path = Path(run)
    if (path / "config.json").is_file():
        return path.resolve()
    found = RunStore(project).get(run, kinds=TRAINING_KINDS)
    if not (found.path / "config.json").is_file():
        raise TunewiseError(
            f"run {found.id} is recorded but its folder {found.path} is missing or has no config.json",
            hint="train again, or restore the folder",
        )
    return found.path
