"""The state one training run shares between its parts (the plan, the loop, the best-step choice), set up once
by `loop.run` and passed as one object instead of long parameter lists."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewise.train.config import AUTO, Resolved, TrainConfig
from tunewise.train.workers import MicroBatchWorkers

if TYPE_CHECKING:
    from tunewise.train.loop import Prepared

Narrate = Callable[[str], None]


@dataclass(frozen=True)
class Steps:
    """How many optimizer steps a run takes, and when it warms up, evaluates and checkpoints."""

    per_epoch: int
    total: int
    warmup: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def of(cls, config: TrainConfig, n_examples: int, resolved: Resolved) -> Steps:
        """Warmup is `warmup_ratio` of the steps; auto evaluates 4 times a run and checkpoints every tenth
        of it, at least 10 steps apart.

        >>> from tunewise.train.config import TrainConfig, auto_hyperparameters
        >>> config = TrainConfig(epochs=3, batch_size=8)
        >>> Steps.of(config, 100, auto_hyperparameters(config, 100, 10**8, 90, 2048))
        Steps(per_epoch=13, total=39, warmup=4, eval_every=10, checkpoint_every=10)
        """
        per_epoch = math.ceil(n_examples / resolved.batch_size)
        total = per_epoch * resolved.epochs
        eval_every = config.eval_every if config.eval_every != AUTO else max(1, math.ceil(total / 4))
        every = config.checkpoint_every if config.checkpoint_every != AUTO else max(10, total // 10)
        return cls(per_epoch, total, round(config.warmup_ratio * total), int(eval_every), int(every))


@dataclass
class RunContext:
    """One run's inputs, model and settings. `autocast_dtype` and `micro_tokens` are set once the precision is
    decided, `run_dir` once the run has a folder."""

    config: TrainConfig
    prepared: Prepared
    resolved: Resolved
    model: Any
    steps: Steps
    workers: MicroBatchWorkers
    say: Narrate
    device: str = "cpu"
    rank: int = 0
    world: int = 1
    autocast_dtype: Any = None
    micro_tokens: int = 0
    run_dir: Path | None = None
    sharded: bool = False  # the model is split across processes (train/sharded.py)
    shards: int = 1  # how many: the world size when sharded; a dry run's planned processes

    @property
    def writer(self) -> bool:
        """Only the first process writes files."""
        return self.rank == 0
