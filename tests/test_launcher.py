"""`tunewise train --launcher-config accelerate|torchrun`: the config written, the command printed, and that command
run for real: two CPU processes (gloo) follow one process's losses; two GPUs (NCCL) where a machine has them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import _env, write_chat

BIN = Path(sys.executable).parent  # torchrun and accelerate live beside this interpreter


def _launch_env() -> dict[str, str]:
    env = _env()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _losses(root: Path) -> list[float]:
    (run_dir,) = (root / ".tunewise" / "runs").iterdir()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def _spec(root: Path, n: int = 32) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_chat(root / "train.jsonl", n)
    (root / "tunewise.yaml").write_text(
        "task: {name: t, target: Label the review.}\n"
        "data: {train: train.jsonl}\n"
        "model: {base: 'tiny:random'}\n"
        "hyperparameters: {epochs: 2, batch_size: 8, learning_rate: 0.01}\n"
    )
    return root / "tunewise.yaml"


def test_accelerate_config_and_command(tmp_path, run_cli):
    spec = _spec(tmp_path)
    code, out, err = run_cli(
        "train", "--spec", spec, "--launcher-config", "accelerate", "--processes", "4", "--machines", "2",
        "--main-address", "10.0.0.1", "--epochs", "3", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    path = tmp_path / ".tunewise" / "launch" / "accelerate-ddp.yaml"
    import yaml

    written = yaml.safe_load(path.read_text())
    assert written["distributed_type"] == "MULTI_GPU"
    assert written["num_processes"] == 8 and written["num_machines"] == 2  # accelerate counts all machines
    assert written["main_process_ip"] == "10.0.0.1" and written["machine_rank"] == 0
    assert written["use_cpu"] is False
    # The launch's own flags are not passed on; the run's are.
    assert out.strip() == f"accelerate launch --config_file {path} -m tunewise train --spec {spec} --epochs 3"
    assert "8 process(es)" in err


def test_torchrun_script_runs_two_cpu_processes_that_follow_one(tmp_path, run_cli):
    spec = _spec(tmp_path / "two")
    code, out, err = run_cli(
        "train", "--spec", spec, "--launcher-config", "torchrun", "--processes", "2", "--cpu",
        "--precision", "float32", "--threads", "1", "--no-progress", "--main-port", _free_port(), cwd=tmp_path / "two",
    )  # fmt: skip
    assert code == 0, err
    script = tmp_path / "two" / ".tunewise" / "launch" / "torchrun-ddp.sh"
    assert out.strip().startswith("torchrun --nnodes 1 --nproc_per_node 2 --node_rank 0 ")
    assert out.strip().endswith(
        f"-m tunewise train --spec {spec} --precision float32 --threads 1 --no-progress"
    )
    assert os.access(script, os.X_OK)
    two = subprocess.run(
        ["sh", str(script)], cwd=tmp_path / "two", env=_launch_env(), capture_output=True, text=True
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one_spec = _spec(tmp_path / "one")
    one = subprocess.run(
        [sys.executable, "-m", "tunewise", "train", "--spec", str(one_spec), "--precision", "float32",
         "--threads", "1", "--no-progress"],
        cwd=tmp_path / "one", env=_launch_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    expected, got = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(got) == 8  # 32 examples / batch 8 x 2 epochs
    assert got == pytest.approx(expected, rel=1e-4)
    (run_dir,) = (tmp_path / "two" / ".tunewise" / "runs").iterdir()
    assert json.loads((run_dir / "environment.json").read_text())["world_size"] == 2


def test_fsdp_is_passed_on_to_every_process(tmp_path, run_cli):
    spec = _spec(tmp_path)
    code, out, err = run_cli(
        "train", "--spec", spec, "--launcher-config", "torchrun", "--strategy", "fsdp", "--processes", "4",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / ".tunewise" / "launch" / "torchrun-fsdp.sh").is_file()
    assert out.strip().endswith(f"-m tunewise train --spec {spec} --strategy fsdp")
    assert "(fsdp)" in err


def test_bad_launches_and_sharded_qlora_are_refused_in_one_line(tmp_path, run_cli):
    spec = _spec(tmp_path)
    code, _, err = run_cli("train", "--spec", spec, "--strategy", "zero3")
    assert code == 1 and "Traceback" not in err and "strategy" in err and "zero3" in err
    code, _, err = run_cli("train", "--spec", spec, "--strategy", "fsdp", "--method", "qlora")
    assert code == 1 and "Traceback" not in err
    assert "error: --strategy fsdp cannot shard a 4-bit (qlora) base" in err and "--strategy ddp" in err
    code, _, err = run_cli("train", "--spec", spec, "--launcher-config", "torchrun", "--main-port", "0")
    assert code == 1 and "--main-port 0 is not a port" in err
    code, _, err = run_cli("train", "--spec", spec, "--launcher-config", "mpirun")
    assert code == 1 and "unknown launcher 'mpirun'" in err and "accelerate, torchrun" in err
    code, _, err = run_cli(
        "train", "--spec", spec, "--launcher-config", "accelerate", "--cpu", "--processes", "2"
    )
    assert (
        code == 1
        and "accelerate runs several CPU processes only through MPI" in err
        and "torchrun --cpu" in err
    )
    assert not (tmp_path / ".tunewise" / "launch").exists()


def _gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


@pytest.mark.skipif(_gpus() < 2, reason="needs two CUDA GPUs: DDP over NCCL")
def test_two_gpus_over_nccl_follow_one(tmp_path, run_cli):
    spec = _spec(tmp_path / "two")
    code, _, err = run_cli(
        "train", "--spec", spec, "--launcher-config", "torchrun", "--processes", "2", "--precision", "float32",
        "--no-progress", "--main-port", _free_port(), cwd=tmp_path / "two",
    )  # fmt: skip
    assert code == 0, err
    script = tmp_path / "two" / ".tunewise" / "launch" / "torchrun-ddp.sh"
    two = subprocess.run(
        ["sh", str(script)], cwd=tmp_path / "two", env=_launch_env(), capture_output=True, text=True
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one_spec = _spec(tmp_path / "one")
    one = subprocess.run(
        [sys.executable, "-m", "tunewise", "train", "--spec", str(one_spec), "--precision", "float32", "--no-progress"],
        cwd=tmp_path / "one", env={**_launch_env(), "CUDA_VISIBLE_DEVICES": "0"}, capture_output=True, text=True,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-3)
