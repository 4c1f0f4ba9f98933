"""Checkpoints: the trainable weights, the optimizer's moments, the random generators and the loop's state of one
step, written so that a run killed at any moment resumes from the last complete one (`tunewise train --resume`).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.fileio import atomic_write_json, atomic_write_text, publish
from tunewise.train import records
from tunewise.train.model import trainable
from tunewise.train.sharded import copy_into, full_tensors, is_sharded, load_optimizer_state, optimizer_state


def checkpoint_contents(model: Any, optimizer: Any) -> dict[str, Any]:
    """The trainable weights and the optimizer's state to checkpoint. A sharded model's are gathered (every
    process must call) and its optimizer state is keyed by parameter name, not by position."""
    if is_sharded(model):
        return {
            "weights": full_tensors(trainable(model)),
            "optimizer_by_name": optimizer_state(model, optimizer),
        }
    weights = {n: p.detach().contiguous().clone() for n, p in trainable(model)}
    return {"weights": weights, "optimizer": optimizer.state_dict()}


def save_checkpoint(
    run_dir: Path, step: int, contents: dict[str, Any], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint `step` (`checkpoint_contents` and the loop's `state`) to a temporary folder, then rename
    it into place and point `latest` at it.

    A SIGKILL at any moment leaves either the previous checkpoint or the new one, never half of one.
    """
    import torch
    from safetensors.torch import save_file

    folder = run_dir / "checkpoints"
    final = folder / f"step-{step:06d}"
    tmp = folder / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(contents["weights"], str(tmp / "trainable.safetensors"))
    optimizer = {k: v for k, v in contents.items() if k != "weights"}
    torch.save({**optimizer, "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    py_state = random.getstate()
    atomic_write_json(
        tmp / "state.json",
        {**state, "step": step, "python_rng": [py_state[0], list(py_state[1]), py_state[2]]},
    )
    if final.exists():
        shutil.rmtree(final)
    publish(tmp, final)
    atomic_write_text(folder / "latest", final.name + "\n")
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = run_dir / "checkpoints" / pointer.read_text().strip()
    return folder if (folder / "state.json").is_file() else None


def load_checkpoint(folder: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore trainable weights, optimizer moments and RNG states; returns the loop state (step, ...)."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(trainable(model))
    missing = set(params) - set(weights)
    if missing:
        raise TunewiseError(
            f"checkpoint {folder} does not match the model ({len(missing)} parameters missing)"
        )
    with torch.no_grad():
        for name, value in weights.items():
            copy_into(params[name], value)
    blob = torch.load(folder / "optimizer.pt", weights_only=True)
    if "optimizer_by_name" in blob:
        load_optimizer_state(model, optimizer, blob["optimizer_by_name"])
    elif is_sharded(model):
        raise TunewiseError(
            f"checkpoint {folder} was written by an unsharded run: its optimizer state cannot be sharded",
            hint="resume it with --strategy ddp (or one process)",
        )
    else:
        optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    state = records.read_json(folder / "state.json")
    version, internal, gauss = state.pop("python_rng")
    random.setstate((version, tuple(internal), gauss))
    return state
