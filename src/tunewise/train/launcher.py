"""Launch a training run on several processes, GPUs or machines through an existing launcher: `accelerate launch`
or `torchrun`. `tunewise train --launcher-config accelerate|torchrun` writes the launcher's config and prints the
command; the launcher starts one `tunewise train` per process with RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR
set, and each process joins the process group (NCCL on GPUs, gloo on CPUs).

Strategy `ddp` (data parallel): every process holds the whole model and trains on its share of each step's
examples; gradients are summed across processes before each optimizer step (train/loop.py), so N processes
follow one process's loss trajectory (tests/test_train_ddp.py: two CPU processes under torchrun with gloo).

Strategy `fsdp` (`--strategy fsdp`, passed on to every process): each process keeps 1/N of the weights,
gradients and optimizer state (PyTorch's FSDP2, train/sharded.py), for a model whose full fine-tuning does not
fit one GPU; the same loss trajectory as one process (tests/test_launcher.py). The launcher is the same for
both: the sharding happens inside `tunewise train`, not in accelerate's wrappers.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from tunewise.errors import TunewiseError
from tunewise.fileio import atomic_write_text

LAUNCHERS = ("accelerate", "torchrun")
STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Launch:
    """Where the processes run: `processes` per machine on `machines` machines, the first at `main_address`."""

    launcher: str
    strategy: str = "ddp"
    processes: int = 1  # per machine: one per GPU
    machines: int = 1
    machine_rank: int = 0
    main_address: str = "127.0.0.1"
    main_port: int = 29500
    cpu: bool = False  # processes on CPUs (gloo) rather than one per GPU (NCCL)

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise TunewiseError(
                f"unknown launcher '{self.launcher}'", hint=f"use one of: {', '.join(LAUNCHERS)}"
            )
        if self.strategy not in STRATEGIES:
            raise TunewiseError(
                f"unknown strategy '{self.strategy}'", hint=f"use one of: {', '.join(STRATEGIES)}"
            )
        if self.processes < 1 or self.machines < 1 or not 0 <= self.machine_rank < self.machines:
            raise TunewiseError(
                f"{self.processes} process(es) on {self.machines} machine(s) (this one number "
                f"{self.machine_rank}) is not a layout",
                hint="processes and machines are at least 1; --machine-rank is 0 .. machines - 1",
            )

        if self.launcher == "accelerate" and self.cpu and self.world_size > 1:
            raise TunewiseError(
                "accelerate runs several CPU processes only through MPI",
                hint="use --launcher-config torchrun --cpu (gloo, no MPI needed)",
            )
        if not 0 < self.main_port < 65536:  # every process must know the port in advance: 0 cannot be shared
            raise TunewiseError(
                f"--main-port {self.main_port} is not a port", hint="use a free port, e.g. 29500"
            )

    @property
    def world_size(self) -> int:
        return self.processes * self.machines


def accelerate_yaml(launch: Launch) -> str:
    """accelerate's config file (the format `accelerate config` writes) for `launch`.

    >>> print(accelerate_yaml(Launch("accelerate", processes=4)))  # doctest: +ELLIPSIS
    compute_environment: LOCAL_MACHINE
    distributed_type: MULTI_GPU
    ...
    num_processes: 4
    ...
    """
    distributed = "MULTI_GPU" if launch.world_size > 1 else "NO"
    lines = [
        "compute_environment: LOCAL_MACHINE",
        f"distributed_type: {distributed}",
        "downcast_bf16: 'no'",
        f"machine_rank: {launch.machine_rank}",
        f"main_process_ip: {launch.main_address}",
        f"main_process_port: {launch.main_port}",
        "main_training_function: main",
        "mixed_precision: 'no'",  # tunewise decides the precision itself (bf16 on GPUs that have it)
        f"num_machines: {launch.machines}",
        f"num_processes: {launch.world_size}",  # accelerate counts processes across all machines
        "rdzv_backend: static",
        "same_network: true",
        f"use_cpu: {'true' if launch.cpu else 'false'}",
    ]
    return "\n".join(lines) + "\n"


def command(launch: Launch, config_file: Path | None, train_args: list[str]) -> list[str]:
    """The command that starts the run on this machine (the same on every machine but for its rank).

    >>> " ".join(command(Launch("torchrun", processes=2), None, ["--spec", "tunewise.yaml"]))
    'torchrun --nnodes 1 --nproc_per_node 2 --node_rank 0 --master_addr 127.0.0.1 --master_port 29500 -m tunewise train --spec tunewise.yaml'
    >>> " ".join(command(Launch("accelerate"), Path("a.yaml"), []))
    'accelerate launch --config_file a.yaml -m tunewise train'
    """
    if launch.launcher == "accelerate":
        assert config_file is not None
        head = ["accelerate", "launch", "--config_file", str(config_file)]
    else:
        head = [
            "torchrun", "--nnodes", str(launch.machines), "--nproc_per_node", str(launch.processes),
            "--node_rank", str(launch.machine_rank), "--master_addr", launch.main_address,
            "--master_port", str(launch.main_port),
        ]  # fmt: skip
    return [*head, "-m", "tunewise", "train", *train_args]


def write_launcher(launch: Launch, folder: Path, train_args: list[str]) -> tuple[Path, list[str]]:
    """Write the launcher's config into `folder` (accelerate: its YAML; torchrun: a shell script with the
    command) and return (that file, the command)."""
    folder.mkdir(parents=True, exist_ok=True)
    if launch.launcher == "accelerate":
        path = folder / f"accelerate-{launch.strategy}.yaml"
        atomic_write_text(path, accelerate_yaml(launch))
        return path, command(launch, path, train_args)
    path = folder / f"torchrun-{launch.strategy}.sh"
    argv = command(launch, None, train_args)
    script = (
        "#!/bin/sh\n"
        f"# {launch.world_size} process(es): {launch.processes} on each of {launch.machines} machine(s).\n"
        "# On machine N, run this script with NODE_RANK=N set (default 0).\n"
        "set -e\n"
        + shlex.join(argv).replace(
            f"--node_rank {launch.machine_rank}",
            '--node_rank "${NODE_RANK:-' + str(launch.machine_rank) + '}"',
        )
        + ' "$@"\n'
    )
    atomic_write_text(path, script)
    path.chmod(0o755)
    return path, argv
