"""The plan of a run: its steps and their examples, what `--dry-run` prints (`Plan`), the precision measurement's
timed step, and the learning-rate schedule."""

from __future__ import annotations

import contextlib
import math
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tunewise.train import mixed
from tunewise.train.config import Resolved, TrainConfig, micro_batch_tokens
from tunewise.train.data import micro_batches, partition, step_batches
from tunewise.train.kernels import model_kernels
from tunewise.train.memory import MemoryEstimate, available_gb, check_fits
from tunewise.train.model import loss_of, run_memory, trainable_params
from tunewise.train.workers import MicroBatchWorkers

if TYPE_CHECKING:
    from tunewise.train.context import RunContext
    from tunewise.train.loop import Prepared


@dataclass
class Plan:
    """What a run will do; `--dry-run` prints it."""

    n_examples: int
    epochs: int
    batch_size: int
    steps: int
    steps_per_epoch: int
    tokens_per_epoch: int
    trained_tokens_per_epoch: int
    total_params: int
    trainable_params: int
    resolved: dict[str, Any]
    precision: dict[str, Any]
    micro_batch_tokens: int  # the chosen precision's (config.micro_batch_tokens), no default to go stale
    micro_batch_workers: int  # computed at once (train/workers.py)
    measured_step_s: float | None = None
    measured_tokens_per_s: float | None = None
    estimated_time_s: float | None = None
    peak_memory_gb: float | None = None
    # What computes the run: tunewise's CPU kernels or plain transformers + PEFT, the attention, and why
    # (train/kernels.py `KernelChoice.to_dict`); gradient checkpointing as [on, why].
    kernels: dict[str, Any] | None = None
    gradient_checkpointing: list[Any] | None = None
    # The memory estimate (train/memory.py `MemoryEstimate.to_dict`), set by a dry run before its timed step.
    memory: dict[str, Any] | None = None
    # One training run's price per chosen platform (economics.plan.training_estimates), set by `tunewise train
    # --dry-run`: {"platform", "dollars" (None when unknown), "basis"}.
    training_costs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        r = self.resolved
        lines = [
            f"plan: {self.n_examples} examples x {self.epochs} epochs, batch {self.batch_size} -> {self.steps} steps "
            f"({self.steps_per_epoch}/epoch)",
            f"  trained tokens: {self.trained_tokens_per_epoch * self.epochs:,} "
            f"(of {self.tokens_per_epoch * self.epochs:,} processed)",
            f"  parameters: {self.trainable_params:,} trainable of {self.total_params:,}",
            "  hyperparameters: "
            + ", ".join(
                f"{k}={r[k]} ({r['sources'].get(k, 'user')})"
                for k in r
                if k != "sources" and r[k] is not None
            ),
            f"  precision: {self.precision['dtype']} ({self.precision['reason']}); "
            f"micro-batches of up to {self.micro_batch_tokens} tokens"
            + (f", {self.micro_batch_workers} at a time" if self.micro_batch_workers > 1 else ""),
        ]
        if self.kernels is not None:
            k = self.kernels
            line = f"  compute: {'tunewise CPU kernels' if k['enabled'] else 'transformers + PEFT'}, {k['attention']} attention ({k['reason']})"
            if self.gradient_checkpointing and self.gradient_checkpointing[0]:
                line += f"; gradient checkpointing ({self.gradient_checkpointing[1]})"
            lines.append(line)
        if self.measured_step_s is not None:
            lines.append(
                f"  measured: one step {self.measured_step_s:.2f} s, {self.measured_tokens_per_s:.0f} tokens/s -> "
                f"about {_duration(self.estimated_time_s or 0)} for the run"
            )
        if self.memory is not None:
            lines.append(f"  {self.memory['describe']}")
        if self.peak_memory_gb is not None:
            lines.append(f"  peak memory estimate: {self.peak_memory_gb:.2f} GB (measured step, AdamW added)")
        if self.training_costs:
            lines.append(
                "  estimated training cost (this model's tokenizer counts the tokens; check current prices):"
            )
            width = max(len(c["platform"]) for c in self.training_costs)
            for c in self.training_costs:
                price = f"${c['dollars']:,.2f}" if c["dollars"] is not None else "unknown"
                lines.append(f"    {c['platform']:<{width}}  {price:>10}  {c['basis']}")
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    """
    >>> _duration(42), _duration(3725)
    ('42 s', '1 h 2 min')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine/linear decay to 0.

    A pure function of the step, so the scheduler's state in a checkpoint is just the step number.

    >>> lr_at(0, 100, 1.0, 10, "cosine"), lr_at(9, 100, 1.0, 10, "cosine"), lr_at(10, 100, 1.0, 10, "cosine")
    (0.1, 1.0, 1.0)
    >>> round(lr_at(55, 100, 1.0, 10, "linear"), 3), lr_at(55, 100, 1.0, 10, "constant")
    (0.5, 1.0)
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return peak * (1.0 - progress)
    return peak


def step_groups(
    prepared: Prepared,
    resolved: Resolved,
    step: int,
    steps_per_epoch: int,
    micro_tokens: int,
    rank: int = 0,
    world: int = 1,
) -> tuple[list[int], list[list[int]]]:
    """(all example indices of optimizer step `step`, this process's packed micro-batches of them)."""
    epoch, index = divmod(step, steps_per_epoch)
    batch = step_batches(len(prepared.train.examples), resolved.batch_size, prepared.config.seed, epoch)[
        index
    ]
    lengths = [len(e) for e in prepared.train.examples]
    mine = partition(lengths, batch, world)[rank]
    return batch, micro_batches(lengths, mine, micro_tokens)


def timing_examples(
    prepared: Prepared, resolved: Resolved, config: TrainConfig, steps_per_epoch: int
) -> list[int]:
    """The examples the precision measurement times: the first micro-batch of step 0 at the larger of the two
    precisions' micro-batch sizes, so that each precision packs the same examples at its own size."""
    largest = max(micro_batch_tokens(config, dtype) for dtype in ("float32", "bfloat16"))
    return step_groups(prepared, resolved, 0, steps_per_epoch, largest)[1][0]


def time_step(
    model: Any, config: TrainConfig, prepared: Prepared, indices: list[int], dtype: str, workers: MicroBatchWorkers
) -> float:  # fmt: skip
    """Seconds for forward+backward of the examples `indices` in `dtype`, packed and computed the way a run in
    `dtype` would (its micro-batch size, train/mixed.py); gradients are discarded.

    A slice of a step, not the whole step: the precision decision times eight of these, and the ratio between
    dtypes is what it needs. Both dtypes see the same examples, so the ratio is that of their step times, and it
    includes what bf16's larger micro-batches gain (on the AMX Xeon, most of bf16's lead), and `workers` are
    set to what a run in `dtype` would use (train/workers.py: fp32 two micro-batches at once, bf16 one)."""
    import torch

    lengths = [len(e) for e in prepared.train.examples]
    groups = micro_batches(lengths, indices, micro_batch_tokens(config, dtype))
    kernels = model_kernels(model)
    enabled = kernels is None or kernels.enabled
    frozen = (
        mixed.frozen_temporarily(model, torch.bfloat16)
        if mixed.frozen_base_in_bf16(config.method, dtype, enabled)
        else contextlib.nullcontext()
    )
    autocast_dtype = mixed.autocast_dtype(config.method, dtype, enabled)
    with frozen:
        started = time.perf_counter()
        workers.gradient(
            loss_of(model, prepared.train.examples, autocast_dtype), groups, trainable_params(model), 1.0
        )
        elapsed = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return elapsed


def measure_plan(plan: Plan, ctx: RunContext) -> Plan:
    """Estimate the run's memory and refuse it when it does not fit (train/memory.py); then time one real
    forward+backward step (after a warm-up one) and extrapolate; no weight is updated."""
    memory = plan_memory(plan, ctx)
    plan.memory = {**memory.to_dict(), "describe": memory.describe()}
    check_fits(memory)
    model, examples = ctx.model, ctx.prepared.train.examples
    _, groups = step_groups(ctx.prepared, ctx.resolved, 0, ctx.steps.per_epoch, ctx.micro_tokens)
    step_loss, params = loss_of(model, examples, ctx.autocast_dtype), trainable_params(model)
    tokens = sum(len(examples[i]) for group in groups for i in group)

    def one_step() -> tuple[float, int]:
        t0 = time.perf_counter()
        ctx.workers.gradient(step_loss, groups, params, 1.0)
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, tokens

    one_step()  # warm-up: first calls pay for allocation and kernel selection
    seconds, tokens = one_step()
    plan.measured_step_s = seconds
    plan.measured_tokens_per_s = tokens / seconds
    plan.estimated_time_s = plan.tokens_per_epoch * plan.epochs / plan.measured_tokens_per_s
    # Peak memory so far (weights, activations, gradients) plus what AdamW adds: two fp32 moments per parameter.
    if ctx.device == "cuda":  # the GPU's memory is what a CUDA run is bounded by, not the process's RSS
        import torch

        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    plan.peak_memory_gb = (peak + 2 * 4 * plan.trainable_params) / 1e9
    return plan


def plan_memory(plan: Plan, ctx: RunContext) -> MemoryEstimate:
    """The memory estimate of the planned run, against what its device has free now."""
    kernels = model_kernels(ctx.model)
    enabled = kernels is None or kernels.enabled
    checkpointing = getattr(ctx.model, "tunewise_checkpointing", (False, ""))[0]
    base = ctx.model.get_base_model() if hasattr(ctx.model, "get_base_model") else ctx.model
    return run_memory(
        ctx.config, ctx.resolved, base.config.to_dict(), ctx.device, plan.precision["dtype"], checkpointing,
        available_gb(ctx.device), micro_tokens=plan.micro_batch_tokens, at_once=plan.micro_batch_workers,
        kernels=enabled, shards=ctx.shards,
    )  # fmt: skip
