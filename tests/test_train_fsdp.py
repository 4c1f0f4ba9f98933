"""Sharded training (`strategy: fsdp`) on two CPU processes under torchrun (gloo): the same training losses,
held-out losses and adapter as one process, although the processes get different numbers of micro-batches;
and a run that died after a sharded checkpoint resumes from it to the same end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_train import _env, write_chat

pytest.importorskip("torch.distributed.fsdp")

RUNNER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import tunewise.train.loop as loop
    import tunewise.train.model as model
    from tunewise.project import Project
    from tunewise.train import TrainConfig, run

    root, train, held_out, strategy = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    resume = sys.argv[5] if len(sys.argv) > 5 else None
    fillers = []  # how many passes each call added to keep this process in step with the other

    def counting(groups, all_groups, real=loop.even_out):
        padded = real(groups, all_groups)
        fillers.append(len(padded) - len(groups))
        return padded

    loop.even_out = model.even_out = counting
    # 32 tokens per micro-batch: every example gets its own, so the processes' counts differ with the split.
    config = TrainConfig(data=[train], eval_data=[held_out], base="tiny:random", epochs=2, batch_size=8,
                         learning_rate=1e-2, precision="float32", threads=1, progress=False, kernels="off",
                         micro_batch_tokens=32, eval_every=2, checkpoint_every=2, strategy=strategy)
    run(None if resume else config, Project(root), resume=resume, narrate=lambda m: print(m, file=sys.stderr))
    (root / f"fillers-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(fillers))
    """
)


def _run_dir(root: Path) -> Path:
    (run_dir,) = (root / ".tunewise" / "runs").iterdir()
    return run_dir


def _metrics(root: Path) -> tuple[list[float], list[float]]:
    lines = [json.loads(x) for x in (_run_dir(root) / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x], [x["eval_loss"] for x in lines if "eval_loss" in x]


def _adapter(root: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(_run_dir(root) / "adapter" / "adapter_model.safetensors"))


def _torchrun(script: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
    ]
    return subprocess.run([*cmd, *args], env=_env(), capture_output=True, text=True)


def test_two_sharded_processes_match_one_and_resume_from_a_sharded_checkpoint(tmp_path):
    import torch

    train = str(write_chat(tmp_path / "train.jsonl", 30))
    held_out = str(write_chat(tmp_path / "eval.jsonl", 7, seed=1))
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    one = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), train, held_out, "ddp"],
        env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(script, str(tmp_path / "two"), train, held_out, "fsdp")
    assert two.returncode == 0, two.stderr[-3000:]

    # The padding ran: the two processes did not get equal numbers of micro-batches everywhere.
    added = [json.loads((tmp_path / "two" / f"fillers-{r}.json").read_text()) for r in (0, 1)]
    assert sum(map(sum, added)) > 0 and len(added[0]) == len(added[1])
    (train_one, eval_one), (train_two, eval_two) = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(train_one) == 8 and len(eval_one) == 5  # 4 steps an epoch x 2; before, at 2, 4, 6 and the end
    assert train_two == pytest.approx(train_one, rel=1e-4)
    assert eval_two == pytest.approx(eval_one, rel=1e-4)
    assert train_two[-1] < train_two[0]
    adapter_one, adapter_two = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert adapter_two.keys() == adapter_one.keys() and len(adapter_one) > 0
    for name, value in adapter_one.items():
        torch.testing.assert_close(adapter_two[name], value, rtol=1e-3, atol=1e-5)
    run_dir = _run_dir(tmp_path / "two")
    assert json.loads((run_dir / "config.json").read_text())["config"]["strategy"] == "fsdp"
    assert json.loads((run_dir / "environment.json").read_text())["world_size"] == 2

    # A run that died after its last checkpoint (step 6; nothing after it survives a crash but the files that
    # the resume replays): resumed by both processes from the gathered checkpoint, it ends where it did.
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000006"
    (run_dir / "result.json").unlink()
    resumed = _torchrun(script, str(tmp_path / "two"), train, held_out, "fsdp", run_dir.name)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step-000006" in resumed.stderr
    assert _metrics(tmp_path / "two") == (train_two, eval_two)
    for name, value in adapter_two.items():
        torch.testing.assert_close(_adapter(tmp_path / "two")[name], value, rtol=0, atol=0)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "succeeded"
