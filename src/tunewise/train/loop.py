"""The training stage: check the data, resolve `auto`, then a plain PyTorch loop you can read top to bottom.

Why not the HF Trainer or TRL: on a 2-core CPU their defaults (bf16 on hardware without fast bf16, gradient
checkpointing, full-vocabulary logits over padded batches) cost 2-3x. Here compute goes to real tokens:

- padding-free packing: one step's examples are concatenated into rows of at most `micro_batch_tokens`,
  with position ids restarting at 0 for each example, and attention runs per example inside the row
  (train/attention.py), so nothing leaks across examples and no FLOP is spent on padding or masked scores;
- the vocabulary projection (576 x 49,152 for SmolLM2: 28M multiply-adds per token, about a fifth of the
  model) runs only at the positions whose next token is trained, by slicing the hidden states first, and a
  chunk at a time, each chunk's logits turned into loss and gradient at once (train/loss.py);
- each LoRA layer is one autograd step that adds its update into the base projection in place
  (train/fused.py); in Llama-style layers, projections that read one input run as one product, RMSNorm and
  the rotary embedding as one step each (train/layers.py); the MLP's gated product keeps two tensors for
  backward instead of three (train/swiglu.py), and the gradient buffers live for the whole run: fewer
  operations, fewer temporaries, less heap fragmentation, lower peak memory;
- where bf16 is measured faster, a LoRA run stores the frozen base in bf16 and keeps the adapters in fp32
  (train/mixed.py): bf16 activations, no cast repeated per product; full fine-tuning uses autocast instead;
- the loss of a step is summed over its trained tokens and divided by their count for the whole step, so
  gradient accumulation over micro-batches (and over processes under torchrun) equals one big batch;
- on a CPU, fp32 LoRA computes two micro-batches at once, one thread each, and sums their gradients in
  micro-batch order: the small operations that dominate a short micro-batch do not share two cores well
  (train/workers.py).

The kernels above run where they are known to help (a CPU, the Llama family) with `kernels: auto`; with
`kernels: off`, or on a GPU, the run is plain transformers + PEFT (train/kernels.py).

Distributed: under `torchrun --nproc_per_node N`, each process takes its share of a step's examples (balanced
by tokens) and the gradients are summed with one all-reduce (gloo on CPU, NCCL on GPU); only rank 0 writes
files. With `strategy: fsdp` the weights, gradients and optimizer state are sharded instead (train/sharded.py).

The parts: the model and its loss (train/model.py), the plan and the precision measurement's timed step
(train/plan.py), checkpoints (train/checkpoints.py), the choice of the weights kept (train/best.py), and
here the inputs (`prepare`), the set-up (`run`) and the loop itself (`_train`); `RunContext`
(train/context.py) carries what they share.
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.fileio import atomic_write_json
from tunewise.project import Project
from tunewise.train import mixed, records
from tunewise.train.best import compare_with_best, keep_best_or_last, track_best
from tunewise.train.checkpoints import (
    checkpoint_contents,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tunewise.train.config import AUTO, Resolved, TrainConfig, auto_hyperparameters, micro_batch_tokens
from tunewise.train.context import Narrate, RunContext, Steps
from tunewise.train.data import (
    TokenizedData,
    check_trainable,
    read_jsonl,
    render_mask,
    tokenize_records,
    truncate,
)
from tunewise.train.heap import HeapTrim, release_free_heap
from tunewise.train.kernels import attention_for, flash_attention_available, model_kernels, set_attention
from tunewise.train.loss import release_workspace
from tunewise.train.model import (
    batch_loss,
    build_model,
    count_params,
    evaluate,
    evaluate_examples,
    loss_of,
    packed_hidden,
    param_count_hint,
    save_output,
    trainable_params,
)
from tunewise.train.plan import Plan, lr_at, measure_plan, step_groups, time_step, timing_examples
from tunewise.train.sharded import check_strategy, even_out, model_state, scalar, shard
from tunewise.train.workers import MicroBatchWorkers, draws_random_numbers, workers_for

# Names other modules and the benches import from here.
__all__ = [
    "Plan", "Prepared", "TrainResult", "batch_loss", "compare_with_best", "evaluate", "evaluate_examples",
    "latest_checkpoint", "load_checkpoint", "lr_at", "packed_hidden", "param_count_hint", "prepare", "run",
    "save_checkpoint",
]  # fmt: skip

log = logging.getLogger(__name__)


# --- inputs -------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Checked, tokenized inputs: everything known before any weight is loaded."""

    config: TrainConfig
    tokenizer: Any
    train: TokenizedData
    eval: TokenizedData | None
    data_hashes: dict[str, str]
    context_length: int

    @property
    def trained_share(self) -> float:
        return self.train.n_trained / max(1, self.train.n_tokens)

    def summary(self) -> str:
        t = self.train
        lines = [
            f"training data: {len(t.examples)} examples, {t.n_tokens:,} tokens, {t.n_trained:,} trained "
            f"({self.trained_share:.1%}: assistant replies and their end-of-turn token)",
        ]
        if t.n_dropped or t.n_truncated:
            lines.append(
                f"  {t.n_truncated} truncated to max_length, {t.n_dropped} dropped (nothing to train)"
            )
        if self.eval is not None:
            lines.append(
                f"held-out data: {len(self.eval.examples)} examples, {self.eval.n_trained:,} scored tokens"
            )
        else:
            lines.append(
                "held-out data: none (pass --eval FILE for held-out loss, accuracy and early stopping)"
            )
        example = t.examples[0]
        lines.append(f"example {example.source} with its trained tokens in [[...]]:")
        lines.append(render_mask(self.tokenizer, example))
        return "\n".join(lines)


def _context_length(base: str) -> int:
    from tunewise.models.loading import TINY_MODEL, resolve_base

    if base.startswith("embedded:") or base == TINY_MODEL:
        from tunewise.models.embedded import CONTEXT_LENGTH

        return CONTEXT_LENGTH
    folder = Path(resolve_base(base))
    if (folder / "config.json").is_file():
        return int(json.loads((folder / "config.json").read_text()).get("max_position_embeddings", 2048))
    return 2048


def prepare(config: TrainConfig) -> Prepared:
    """Read and tokenize the data; refuse it when nothing would be trained. Loads no weights."""
    from tunewise.models.loading import load_tokenizer

    if not config.data:
        raise TunewiseError(
            "no training data", hint="pass --data FILE.jsonl or set data.train in tunewise.yaml"
        )
    train_records = [r for path in config.data for r in read_jsonl(path)]
    eval_records = [r for path in config.eval_data for r in read_jsonl(path)]
    hashes = {str(Path(p).resolve()): records.sha256_file(p) for p in [*config.data, *config.eval_data]}
    tokenizer = load_tokenizer(config.base, config.trust_remote_code)
    context = _context_length(config.base)
    limit = context if config.max_length == AUTO else int(config.max_length)
    train = tokenize_records(tokenizer, train_records, max_length=limit)
    check_trainable(train)
    evaluation = tokenize_records(tokenizer, eval_records, max_length=limit) if eval_records else None
    if evaluation is not None:
        check_trainable(evaluation, "held-out data")
    return Prepared(config, tokenizer, train, evaluation, hashes, context)


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_id: str
    run_dir: Path
    status: str
    steps: int = 0
    train_loss_first: float | None = None
    train_loss_last: float | None = None
    eval_before: dict[str, float] | None = None
    eval_after: dict[str, float] | None = None
    stopped_early: bool = False
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    trained_tokens_per_s: float = 0.0
    output: str | None = None  # the adapter (lora) or model (full) folder
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        return out


def _dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _init_distributed(world: int, device: str) -> None:
    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")


def run(
    config: TrainConfig | None,
    project: Project,
    *,
    resume: str | None = None,
    dry_run: bool = False,
    narrate: Narrate | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    prepared: Prepared | None = None,
    run_id: str | None = None,
    planned_processes: int = 1,
) -> TrainResult | Plan:
    """Train (or, with `dry_run`, plan) one run; `resume` names a run to continue from its last checkpoint.
    `planned_processes`: with `dry_run` and strategy fsdp, the processes the run will be sharded over (the memory
    estimate is then per process).

    `run_id` names a new run's directory (default: a fresh `train-<time>-<hex>` id); the fine-tuning jobs API
    names it after the job."""
    import torch

    from tunewise.runtime import tune_process

    tune_process()  # before any weight is loaded: oneDNN reads its cache sizes once
    say = narrate or log.info
    rank, world = _dist_info()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dry_run:
        _init_distributed(world, device)

    # 1. Inputs: on resume, the recorded config and the same data (checked by hash).
    run_dir: Path | None = None
    recorded: dict[str, Any] | None = None
    if resume is not None:
        run_dir = records.find_run_dir(project, resume)
        recorded = records.read_json(run_dir / "config.json")
        done = run_dir / "result.json"
        if done.is_file() and records.read_json(done).get("status") == "succeeded":
            raise TunewiseError(
                f"run {run_dir.name} already finished", hint="start a new run instead of --resume"
            )
        config = TrainConfig.from_dict(recorded["config"])
        for path, digest in recorded["data_sha256"].items():
            if not Path(path).is_file() or records.sha256_file(path) != digest:
                raise TunewiseError(
                    f"cannot resume {run_dir.name}: {path} changed or is missing since the run started",
                    hint="resume needs the same data; start a new run for new data",
                )
    assert config is not None
    check_strategy(config.strategy, config.method)
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    workers = MicroBatchWorkers()
    try:
        prepared = prepared or prepare(config)
        if rank == 0:
            say(prepared.summary())
        if planned_processes < 1:
            raise TunewiseError(
                f"{planned_processes} processes is not a plan",
                hint="--processes and --machines are at least 1",
            )
        shards = world if world > 1 else planned_processes if dry_run else 1
        ctx = _set_up(config, prepared, recorded, run_dir, device, rank, world, workers, say, shards)
        plan = _plan(ctx, recorded, dry_run)
        result: TrainResult | Plan = (
            measure_plan(plan, ctx)
            if dry_run
            else _record_and_train(ctx, plan, project, recorded, run_id, on_step)
        )
    except BaseException:
        workers.close(wait=False)  # stopping: the caller records the outcome without waiting for the workers
        raise
    else:
        workers.close()
        return result
    finally:
        torch.set_num_threads(threads_before)  # a library call must not leave the process's threads changed


def _set_up(
    config: TrainConfig, prepared: Prepared, recorded: dict[str, Any] | None, run_dir: Path | None, device: str,
    rank: int, world: int, workers: MicroBatchWorkers, say: Narrate, shards: int = 1,
) -> RunContext:  # fmt: skip
    """The model, with every `auto` resolved against the data size and the model size."""
    import torch

    n_examples = len(prepared.train.examples)
    longest = max(len(e) for e in prepared.train.examples)
    if recorded is not None:
        resolved = Resolved(**recorded["resolved"])
    else:
        n_params = param_count_hint(config)
        resolved = auto_hyperparameters(config, n_examples, n_params, longest, prepared.context_length)
    if resolved.max_length < longest:  # apply an explicit or resolved max_length below the context length
        prepared.train = truncate(prepared.train, resolved.max_length)
        check_trainable(prepared.train)
        if prepared.eval is not None:
            prepared.eval = truncate(prepared.eval, resolved.max_length)
    sharded = config.strategy == "fsdp" and world > 1
    shards = shards if config.strategy == "fsdp" else 1
    # Sharded units are plain transformers + PEFT layers: tunewise's kernels patch the layers they run in.
    build_config = config.model_copy(update={"kernels": "off"}) if sharded else config
    model = build_model(build_config, resolved, prepared.tokenizer, device, shards).to(
        torch.device(device, torch.cuda.current_device()) if device == "cuda" else device
    )
    if sharded:
        shard(model, device, world)
    model.train()
    steps = Steps.of(config, n_examples, resolved)
    return RunContext(
        config, prepared, resolved, model, steps, workers, say, device, rank, world, run_dir=run_dir,
        sharded=sharded, shards=shards,
    )  # fmt: skip


def _plan(ctx: RunContext, recorded: dict[str, Any] | None, dry_run: bool) -> Plan:
    """Decide the precision (by measurement), apply it, and describe the run."""
    import torch

    from tunewise.models.loading import choose_precision

    config, model, prepared, device = ctx.config, ctx.model, ctx.prepared, ctx.device
    kernels = model.tunewise_kernels
    total_params, trainable_count = count_params(model)
    threads = torch.get_num_threads()
    randomness = draws_random_numbers(model)
    # Without the kernels, one micro-batch at a time unless the config asks for more.
    requested_workers = config.micro_batch_workers if kernels.enabled else 1

    def workers_in(dtype: str) -> int:
        return workers_for(requested_workers, config.method, device, threads, randomness, dtype)

    requested = config.precision
    if ctx.run_dir is not None and (ctx.run_dir / "environment.json").is_file():  # resume: the recorded one
        requested = records.read_json(ctx.run_dir / "environment.json")["precision"]["dtype"]
    timed = timing_examples(prepared, ctx.resolved, config, ctx.steps.per_epoch)

    def timer(dtype: str) -> float:  # each precision timed with the workers it would train with
        ctx.workers.configure(workers_in(dtype), threads)
        return time_step(model, config, prepared, timed, dtype, ctx.workers)

    # Sharded, a timed step is a collective that every process would have to join: the matmul screen decides.
    precision = choose_precision(device, requested, step_timer=None if ctx.sharded else timer)
    if ctx.world > 1 and not dry_run:  # all processes compute in one precision: rank 0's measurement decides
        import torch.distributed as dist

        shared = [precision]
        dist.broadcast_object_list(shared, src=0)
        precision = shared[0]
    if device == "cuda":  # flash-attention takes 16-bit inputs only: chosen once the precision is known
        flash = attention_for(device, kernels.enabled, precision.dtype, flash_attention_available())
        kernels = replace(kernels, attention=set_attention(model, flash))
        model.tunewise_kernels = kernels
    if mixed.frozen_base_in_bf16(config.method, precision.dtype, kernels.enabled):
        mixed.store_frozen(model, torch.bfloat16)
    if kernels.enabled:
        release_free_heap()  # what the precision measurement's steps (and the fp32 weights, if let go) left free
    ctx.autocast_dtype = mixed.autocast_dtype(config.method, precision.dtype, kernels.enabled)
    ctx.workers.configure(workers_in(precision.dtype), threads)
    # Each precision has its own micro-batch size; not raised to max_length: it bounds activation memory.
    ctx.micro_tokens = micro_batch_tokens(config, precision.dtype)
    plan = Plan(
        n_examples=len(prepared.train.examples),
        epochs=ctx.resolved.epochs,
        batch_size=ctx.resolved.batch_size,
        steps=ctx.steps.total,
        steps_per_epoch=ctx.steps.per_epoch,
        tokens_per_epoch=prepared.train.n_tokens,
        trained_tokens_per_epoch=prepared.train.n_trained,
        total_params=total_params,
        trainable_params=trainable_count,
        resolved=ctx.resolved.to_dict(),
        precision=precision.to_dict(),
        micro_batch_tokens=ctx.micro_tokens,
        micro_batch_workers=ctx.workers.workers,
        kernels=kernels.to_dict(),
        gradient_checkpointing=list(getattr(model, "tunewise_checkpointing", (False, "off"))),
    )
    if ctx.rank == 0 and not dry_run:  # a dry run returns the plan: the CLI prints it on stdout
        ctx.say(plan.describe())
    return plan


def _record_and_train(
    ctx: RunContext, plan: Plan, project: Project, recorded: dict[str, Any] | None, new_run_id: str | None,
    on_step: Callable[[int, dict[str, Any]], None] | None,
) -> TrainResult:  # fmt: skip
    """The run directory and registry row (rank 0 only writes), the training, and its result, written whatever
    the outcome."""
    import torch

    config, prepared, say = ctx.config, ctx.prepared, ctx.say
    optimizer = torch.optim.AdamW(
        trainable_params(ctx.model), lr=ctx.resolved.learning_rate, weight_decay=config.weight_decay
    )
    resume = ctx.run_dir is not None
    run_id = ctx.run_dir.name if ctx.run_dir is not None else new_run_id or records.new_run_id()
    if ctx.world > 1:  # every process must agree on the run directory (rank 0 writes, all read checkpoints)
        import torch.distributed as dist

        shared = [run_id]
        dist.broadcast_object_list(shared, src=0)
        run_id = shared[0]
    run_dir = ctx.run_dir = ctx.run_dir or project.runs_dir / run_id
    kernels = ctx.model.tunewise_kernels
    config_record = {
        "run_id": run_id,
        "config": config.to_dict(),
        "resolved": ctx.resolved.to_dict(),
        "data_sha256": prepared.data_hashes,
        "steps": ctx.steps.total,
        "steps_per_epoch": ctx.steps.per_epoch,
        "warmup_steps": ctx.steps.warmup,
        "eval_every": ctx.steps.eval_every,
        "checkpoint_every": ctx.steps.checkpoint_every,
        "micro_batch_tokens": ctx.micro_tokens,
        "micro_batch_workers": ctx.workers.workers,
        "kernels": kernels.to_dict(),
    }
    metrics = records.MetricsLog(run_dir / "metrics.jsonl")
    if ctx.writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", config_record)
        # On resume the first environment stays (it holds the precision measurement); the new one is added.
        env_name = (
            "environment.json"
            if recorded is None
            else time.strftime("environment-resume-%Y%m%d-%H%M%S.json", time.gmtime())
        )
        environment = records.environment(plan.precision, ctx.device, ctx.world)
        atomic_write_json(run_dir / env_name, {**environment, "kernels": kernels.to_dict()})
        records.record_start(project, run_id, run_dir, config_record, config.dataset_version)
        say(f"run {run_id}: {run_dir}")
    result = TrainResult(run_id, run_dir, "running")
    started = time.perf_counter()
    try:
        _train(ctx, result, optimizer, plan, metrics, resume, on_step)
        result.status = "succeeded"
    except KeyboardInterrupt:
        result.status, result.error = "cancelled", "interrupted (Ctrl-C); resume with --resume " + run_id
        raise
    except TunewiseError as exc:
        result.status, result.error = "failed", str(exc)
        raise
    except Exception as exc:
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        release_workspace()
        result.wall_s = time.perf_counter() - started
        if ctx.writer:
            # record_finish writes result.json (through the run store) and the registry row together.
            payload = {**result.to_dict(), "plan": plan.to_dict()}
            records.record_finish(project, run_id, payload)
        if ctx.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                if result.status == "succeeded":
                    # Tear down together, so that no rank destroys the group while another is still finishing
                    # the run: one 2-process test run aborted in teardown ("terminate called without an active
                    # exception" in rank 1) without this.
                    dist.barrier()
                dist.destroy_process_group()
    return result


def _train(
    ctx: RunContext, result: TrainResult, optimizer: Any, plan: Plan, metrics: records.MetricsLog, resume: bool,
    on_step: Callable[[int, dict[str, Any]], None] | None,
) -> None:  # fmt: skip
    import torch
    from tqdm import tqdm

    config, model, prepared, resolved, steps, say = (
        ctx.config,
        ctx.model,
        ctx.prepared,
        ctx.resolved,
        ctx.steps,
        ctx.say,
    )
    run_dir, writer, workers = ctx.run_dir, ctx.writer, ctx.workers
    assert run_dir is not None
    params = trainable_params(model)
    examples = prepared.train.examples
    step_loss = loss_of(model, examples, ctx.autocast_dtype)
    # Hands free heap pages back to the OS when resident memory grows (train/heap.py), with the kernels.
    kernels = model_kernels(model)
    heap = HeapTrim(enabled=kernels is None or kernels.enabled)
    total_steps = steps.total
    state: dict[str, Any] = {
        "best_eval_loss": None, "best_step": None, "bad_evals": 0, "eval_before": None, "first_loss": None,
    }  # fmt: skip
    start = 0
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer)
        state.setdefault("best_step", None)  # checkpoints written before it was tracked
        start = state["step"]
        say(f"resuming from {checkpoint.name} (step {start} of {total_steps})")
    else:
        # Reseed: the data order has its own generator, but dropout draws from torch's, which the precision
        # measurement may have used; a run must not depend on whether that measurement ran.
        random.seed(config.seed)
        torch.manual_seed(config.seed)
    if writer:
        # Lines written after the checkpoint are replayed, not duplicated (-1: no checkpoint, replay all).
        metrics.truncate_after(start if start else -1)

    example_losses: list[float] = []  # the latest evaluation's summed loss per held-out example

    def run_eval(step: int, record: bool = True) -> dict[str, float] | None:
        if prepared.eval is None:
            return None
        scores, example_losses[:] = evaluate_examples(
            model, prepared.eval, ctx.micro_tokens, ctx.autocast_dtype, ctx.rank, ctx.world, workers,
            even=ctx.sharded,
        )  # fmt: skip
        heap.now()
        if writer and record:
            metrics.append({"step": step, **scores})
        return scores

    # Gradient buffers allocated once, before the first activation, and zeroed in place after each step:
    # reallocated in the middle of every backward pass, they would split the heap and raise resident memory.
    for p in params:
        p.grad = torch.zeros_like(p)
    if start == 0:
        state["eval_before"] = run_eval(0)
    result.eval_before = state["eval_before"]
    bar = tqdm(
        total=total_steps, initial=start, desc="train", unit="step", file=sys.stderr,
        disable=not (config.progress and writer), dynamic_ncols=True,
    )  # fmt: skip
    t_start = time.perf_counter()
    tokens_seen = trained_seen = 0
    last_loss: float | None = None
    step = start
    for step in range(start, total_steps):
        t0 = time.perf_counter()
        batch, groups = step_groups(
            prepared, resolved, step, steps.per_epoch, ctx.micro_tokens, ctx.rank, ctx.world
        )
        if ctx.sharded:  # every process runs as many passes as the busiest one
            groups = even_out(groups, _all_step_groups(ctx, step))
        step_examples = [examples[i] for i in batch]
        # Normalize by the trained tokens of the whole step (all micro-batches, all processes): accumulation
        # then gives exactly the gradient of one big batch.
        n_trained = sum(sum(e.mask[1:]) for e in step_examples)
        n_tokens = sum(len(e) for e in step_examples)
        lr = lr_at(step, total_steps, resolved.learning_rate, steps.warmup, config.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # FSDP averages the processes' gradients where the step needs their sum (train/sharded.py).
        divisor = n_trained / ctx.world if ctx.sharded else n_trained
        loss_total = workers.gradient(step_loss, groups, params, divisor)
        if ctx.sharded:  # FSDP reduce-scattered the gradients in the backward passes
            torch.distributed.all_reduce(loss_total)
        elif ctx.world > 1:
            _all_reduce_grads(params, loss_total)
        grad_norm = scalar(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        resident = heap.after_step()
        loss = loss_total.item() / n_trained
        if state["first_loss"] is None:
            state["first_loss"] = loss
        last_loss = loss
        seconds = time.perf_counter() - t0
        tokens_seen += n_tokens
        trained_seen += n_trained
        done = step + 1
        record = {
            "step": done,
            "epoch": round(done / steps.per_epoch, 4),
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": n_tokens,
            "trained_tokens": n_trained,
            "step_s": round(seconds, 4),
            "tokens_per_s": round(n_tokens / seconds, 1),
        }
        if resident is not None:
            record["rss_gb"] = round(resident / 1e9, 3)
        if writer:
            metrics.append(record)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_seen / (time.perf_counter() - t_start):.0f}")
        bar.update(1)

        stop = False
        if done % steps.eval_every == 0 and done < total_steps and prepared.eval is not None:
            scores = run_eval(done)
            assert scores is not None
            stop = track_best(ctx, state, done, scores, example_losses)
        if done % steps.checkpoint_every == 0 and done < total_steps and not stop and (writer or ctx.sharded):
            contents = checkpoint_contents(model, optimizer)  # sharded: gathered by every process
            if writer:
                save_checkpoint(run_dir, done, contents, {k: v for k, v in state.items() if k != "step"})
        if on_step is not None:
            on_step(done, {**record, "total_steps": total_steps})
        if stop:
            say(
                f"early stopping at step {done}: no held-out improvement in {config.early_stopping_patience} evaluations"
            )
            result.stopped_early = True
            break
    bar.close()
    elapsed = time.perf_counter() - t_start
    result.steps = step + 1 if total_steps else 0
    result.train_loss_first = state["first_loss"]
    result.train_loss_last = last_loss
    result.tokens_per_s = tokens_seen / elapsed if elapsed > 0 else 0.0
    result.trained_tokens_per_s = trained_seen / elapsed if elapsed > 0 else 0.0
    result.extra["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    result.extra["heap_trims"] = heap.trims

    final = run_eval(result.steps) if prepared.eval is not None else None
    if final is not None:
        final = keep_best_or_last(
            ctx, state, final, example_losses, result.extra, lambda: run_eval(result.steps, record=False)
        )
    result.eval_after = final
    full_state = model_state(model) if ctx.sharded else None  # gathered by every process
    if writer:
        result.output = str(save_output(model, prepared.tokenizer, config, run_dir, full_state))
        if final is not None:
            say(f"held-out loss {result.eval_before['eval_loss']:.4f} -> {final['eval_loss']:.4f}, token accuracy "
                f"{result.eval_before['eval_accuracy']:.3f} -> {final['eval_accuracy']:.3f}")  # fmt: skip
        say(f"train loss {result.train_loss_first:.4f} -> {result.train_loss_last:.4f}; "
            f"{result.tokens_per_s:.0f} tokens/s ({result.trained_tokens_per_s:.0f} trained tokens/s)")  # fmt: skip


def _all_step_groups(ctx: RunContext, step: int) -> list[list[list[int]]]:
    """Every process's micro-batches of step `step` (each process can work them out: the split is
    deterministic)."""
    return [
        step_groups(ctx.prepared, ctx.resolved, step, ctx.steps.per_epoch, ctx.micro_tokens, r, ctx.world)[1]
        for r in range(ctx.world)
    ]


def _all_reduce_grads(params: list[Any], loss_total: Any) -> None:
    """Sum gradients and the loss over processes with one all-reduce of a flat buffer."""
    import torch
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss_total.reshape(1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = g.copy_(flat[offset : offset + n].view_as(g))  # back into the run-long buffer
        offset += n
    loss_total.fill_(flat[offset].item())
