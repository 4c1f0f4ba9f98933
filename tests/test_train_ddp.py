"""Two processes under torchrun (gloo on CPU) follow the loss trajectory of one process with the same global
batch: each process takes half of every step's examples and the gradients are summed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_train import _env, write_chat

RUNNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tunewise.project import Project
    from tunewise.train import TrainConfig, run

    root, data = Path(sys.argv[1]), sys.argv[2]
    config = TrainConfig(data=[data], base="tiny:random", epochs=2, batch_size=8, learning_rate=1e-2,
                         precision="float32", threads=1, progress=False)
    run(config, Project(root))
    """
)


def losses(root: Path) -> list[float]:
    (run_dir,) = (root / ".tunewise" / "runs").iterdir()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def test_two_processes_match_one(tmp_path):
    data = write_chat(tmp_path / "train.jsonl", 32)
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), str(data)],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path / "two"), str(data)],
        env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    expected, got = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(expected) == len(got) == 8  # 32 examples / batch 8 x 2 epochs
    assert got == pytest.approx(expected, rel=1e-4)
    # Only rank 0 wrote: one run directory, one result.
    (run_dir,) = (tmp_path / "two" / ".tunewise" / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "succeeded"
    assert json.loads((run_dir / "environment.json").read_text())["world_size"] == 2
