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

Distributed: under `torchrun --nproc_per_node N`, each process takes every N-th micro-batch of a step and
the gradients are summed with one all-reduce (gloo on CPU, NCCL on GPU); only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.project import Project
from tunewise.train import mixed, records
from tunewise.train.attention import use_packed_attention
from tunewise.train.config import AUTO, Resolved, TrainConfig, auto_hyperparameters, micro_batch_tokens
from tunewise.train.data import (
    Example,
    TokenizedData,
    check_trainable,
    micro_batches,
    pack,
    partition,
    read_jsonl,
    render_mask,
    step_batches,
    tokenize_records,
    truncate,
)
from tunewise.train.fused import use_fused_lora
from tunewise.train.heap import HeapTrim, release_free_heap
from tunewise.train.kernels import (
    attention_for,
    choose_kernels,
    flash_attention_available,
    model_kernels,
    set_attention,
)
from tunewise.train.layers import use_fused_layers
from tunewise.train.loss import linear_cross_entropy, release_workspace
from tunewise.train.swiglu import use_fused_swiglu
from tunewise.train.workers import MicroBatchWorkers, draws_random_numbers, workers_for

log = logging.getLogger(__name__)

Narrate = Callable[[str], None]


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


# --- model --------------------------------------------------------------------------------------------


def _build_model(config: TrainConfig, resolved: Resolved | None, tokenizer: Any, device: str = "cpu") -> Any:
    """The base model, wrapped with LoRA adapters for method lora; every parameter trainable for full.

    With tunewise's kernels (`config.kernels`, train/kernels.py) its modules get the fused forwards; without,
    it is the model transformers and PEFT build, on transformers' attention. The choice is kept on the model
    (`kernels.model_kernels`)."""
    import torch

    from tunewise.models.loading import load_model

    # The same seed before loading and wrapping, so LoRA's random A matrices are identical run to run.
    torch.manual_seed(config.seed)
    model = load_model(
        config.base, "float32", config.trust_remote_code, tokenizer=tokenizer, seed=config.seed
    )
    model.config.use_cache = False  # no KV cache in training: it only costs memory
    choice = choose_kernels(config.kernels, device, getattr(model.config, "model_type", None))
    set_attention(model, choice.attention)
    if choice.enabled:
        _private_weights(model)
        use_fused_swiglu(model)  # the MLP keeps two tensors for backward, not three (see train/swiglu.py)
    if config.method == "full":
        model.requires_grad_(True)
        model.tunewise_kernels = choice
        return model
    from peft import LoraConfig, get_peft_model

    assert resolved is not None and resolved.lora_rank is not None and resolved.lora_alpha is not None
    lora = LoraConfig(
        r=resolved.lora_rank,
        lora_alpha=resolved.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5; harmless, noisy
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, lora)
    if choice.enabled:
        use_fused_lora(model)
        use_fused_layers(model)  # after the LoRA wrap: the fused layers take over LoRA projections
    model.tunewise_kernels = choice
    return model


def _private_weights(model: Any) -> None:
    """Copy every weight into the process's own memory, so that no tensor maps the safetensors file any more.

    transformers maps the file, and a mapped page once read stays resident (counted in RSS) as long as any
    tensor maps the file: a weight replaced later (the stacked projections of train/layers.py, a bf16 base)
    would otherwise be held twice, 0.27 GB for SmolLM2-135M. Copying costs about what reading the weights
    once costs; the mapping goes when the last tensor that used it is replaced.
    """
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()


def _parts(model: Any) -> tuple[Any, Any]:
    """(backbone returning hidden states, output head): called separately to slice before the head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def _trainable(model: Any) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def count_params(model: Any) -> tuple[int, int]:
    """(all parameters, trainable parameters), tied weights counted once."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def packed_hidden(model: Any, batch: dict[str, Any]) -> Any:
    """Final hidden states (1, L, H) of a packed row.

    With `attention_mask=None`, the restarting `position_ids` separate the examples: tunewise's packed
    attention splits on them; plain sdpa gets a block-diagonal mask from transformers. `use_cache=False`
    matters for the latter: with a KV cache present transformers skips that detection and attends across
    examples (tests/test_train_data.py checks both against each example run alone).
    """
    backbone, _ = _parts(model)
    out = backbone(
        input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=None, use_cache=False
    )
    return out.last_hidden_state


def batch_loss(
    model: Any, examples: list[Example], autocast_dtype: Any, per_example: bool = False
) -> tuple[Any, Any, int]:
    """Summed cross-entropy and correct-argmax count over the trained tokens of one packed micro-batch.

    With `per_example`, the loss comes back as one sum per example (a 1-D tensor), for held-out comparisons
    that need to know how much of a difference is noise."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    batch = pack(examples, device)
    targets = batch["targets"]
    # Examples are packed in order, so the trained positions of each one are one contiguous slice.
    counts = [sum(ex.mask[1:]) for ex in examples] if per_example else [int(targets.numel())]
    sums, correct = [], torch.zeros((), dtype=torch.long, device=device)
    choice = model_kernels(model)
    with torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        if choice is None or choice.enabled:
            _, head = _parts(model)
            hidden = packed_hidden(model, batch)
            # (1, L, H) -> (T, H): only positions whose next token is trained reach the vocabulary projection.
            selected = hidden[0, batch["select"]]
            for h, t in zip(selected.split(counts), targets.split(counts), strict=True):
                loss_sum, right = _head_loss(head, h, t)
                sums.append(loss_sum)
                correct = correct + right
        else:
            # The model's own forward; transformers projects only the trained positions (`logits_to_keep`).
            logits = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=None,
                use_cache=False, logits_to_keep=batch["select"],
            ).logits[0].float()  # fmt: skip
            for z, t in zip(logits.split(counts), targets.split(counts), strict=True):
                sums.append(F.cross_entropy(z, t, reduction="sum"))
                correct = correct + (z.detach().argmax(-1) == t).sum()
    return (torch.stack(sums) if per_example else sums[0]), correct, int(targets.numel())


def _loss_of(model: Any, examples: list[Example], autocast_dtype: Any) -> Callable[[list[int]], Any]:
    """The summed loss of the micro-batch of `examples` at the given indices (what a step differentiates)."""
    return lambda group: batch_loss(model, [examples[i] for i in group], autocast_dtype)[0]


def _params(model: Any) -> list[Any]:
    return [p for _, p in _trainable(model)]


def _head_loss(head: Any, hidden: Any, targets: Any) -> tuple[Any, Any]:
    """(summed cross-entropy, correct-argmax count) of the vocabulary projection of `hidden` (T, H)."""
    import torch
    import torch.nn.functional as F

    if targets.numel() == 0:
        return hidden.new_zeros((), dtype=torch.float32), targets.new_zeros(())
    if isinstance(head, torch.nn.Linear) and head.bias is None:
        return linear_cross_entropy(hidden, head.weight, targets)
    # A head with a bias or an adapter of its own: the plain path, all logits at once.
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum"), (logits.detach().argmax(-1) == targets).sum()


def evaluate(
    model: Any, data: TokenizedData, micro_tokens: int, autocast_dtype: Any, rank: int = 0, world: int = 1
) -> dict[str, float]:
    """Held-out loss (mean over assistant tokens) and token accuracy (argmax equals the target)."""
    return evaluate_examples(model, data, micro_tokens, autocast_dtype, rank, world)[0]


def evaluate_examples(
    model: Any, data: TokenizedData, micro_tokens: int, autocast_dtype: Any, rank: int = 0, world: int = 1,
    workers: MicroBatchWorkers | None = None,
) -> tuple[dict[str, float], list[float]]:  # fmt: skip
    """`evaluate`'s scores, and each example's summed loss over its assistant tokens (in `data`'s order);
    `workers` compute several micro-batches at once."""
    import torch

    lengths = [len(e) for e in data.examples]
    groups = micro_batches(lengths, range(len(lengths)), micro_tokens)[rank::world]
    totals = torch.zeros(3, dtype=torch.float64)
    per_example = torch.zeros(len(lengths), dtype=torch.float64)
    was_training = model.training
    model.eval()

    def score(group: list[int]) -> tuple[Any, Any, int]:
        with torch.no_grad():  # per thread: a worker's grad mode is its own
            return batch_loss(model, [data.examples[i] for i in group], autocast_dtype, per_example=True)

    results = (workers or MicroBatchWorkers()).map(score, groups)
    for group, (sums, correct, n) in zip(groups, results, strict=True):
        per_example[group] = sums.to(torch.float64).cpu()
        totals += torch.tensor([float(per_example[group].sum()), correct.item(), n], dtype=torch.float64)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(totals)
        dist.all_reduce(per_example)  # each process filled only its own examples
    model.train(was_training)
    loss_sum, correct, n = totals.tolist()
    scores = {"eval_loss": loss_sum / max(1, n), "eval_accuracy": correct / max(1, n), "eval_tokens": int(n)}
    return scores, per_example.tolist()


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


# --- checkpoints --------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: Path, step: int, model: Any, optimizer: Any, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint `step` to a temporary folder, then rename it into place and point `latest` at it.

    A SIGKILL at any moment leaves either the previous checkpoint or the new one, never half of one.
    """
    import torch
    from safetensors.torch import save_file

    folder = run_dir / "checkpoints"
    final = folder / f"step-{step:06d}"
    tmp = folder / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().contiguous().clone() for n, p in _trainable(model)}
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()},
        tmp / "optimizer.pt",
    )
    py_state = random.getstate()
    records.write_json(
        tmp / "state.json",
        {**state, "step": step, "python_rng": [py_state[0], list(py_state[1]), py_state[2]]},
    )
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    records.atomic_write_text(folder / "latest", final.name + "\n")
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


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
    params = dict(_trainable(model))
    missing = set(params) - set(weights)
    if missing:
        raise TunewiseError(
            f"checkpoint {folder} does not match the model ({len(missing)} parameters missing)"
        )
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    blob = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    state = records.read_json(folder / "state.json")
    version, internal, gauss = state.pop("python_rng")
    random.setstate((version, tuple(internal), gauss))
    return state


# --- the run ------------------------------------------------------------------------------------------


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
        if self.measured_step_s is not None:
            lines.append(
                f"  measured: one step {self.measured_step_s:.2f} s, {self.measured_tokens_per_s:.0f} tokens/s -> "
                f"about {_duration(self.estimated_time_s or 0)} for the run"
            )
        if self.peak_memory_gb is not None:
            lines.append(f"  peak memory estimate: {self.peak_memory_gb:.2f} GB")
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


def _step_groups(
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
) -> TrainResult | Plan:
    """Train (or, with `dry_run`, plan) one run; `resume` names a run to continue from its last checkpoint.

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
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    workers = MicroBatchWorkers()
    try:
        result = _run(
            config, project, recorded, run_dir, resume, dry_run, say, on_step, prepared, rank, world, device,
            workers, run_id,
        )  # fmt: skip
    except BaseException:
        workers.close(wait=False)  # stopping: the caller records the outcome without waiting for the workers
        raise
    else:
        workers.close()
        return result
    finally:
        torch.set_num_threads(threads_before)  # a library call must not leave the process's threads changed


def _run(
    config: TrainConfig, project: Project, recorded: dict[str, Any] | None, run_dir: Path | None,
    resume: str | None, dry_run: bool, say: Narrate, on_step: Callable[[int, dict[str, Any]], None] | None,
    prepared: Prepared | None, rank: int, world: int, device: str, workers: MicroBatchWorkers,
    new_run_id: str | None = None,
) -> TrainResult | Plan:  # fmt: skip
    import torch

    from tunewise.models.loading import choose_precision

    prepared = prepared or prepare(config)
    if rank == 0:
        say(prepared.summary())

    # 2. The model, `auto` resolved against data size and model size, and precision by measurement.
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
    model = _build_model(config, resolved, prepared.tokenizer, device).to(
        torch.device(device, torch.cuda.current_device()) if device == "cuda" else device
    )
    model.train()
    kernels = model.tunewise_kernels
    total_params, trainable_params = count_params(model)
    threads = torch.get_num_threads()
    randomness = draws_random_numbers(model)
    # Without the kernels, one micro-batch at a time unless the config asks for more.
    requested_workers = config.micro_batch_workers if kernels.enabled else 1

    def workers_in(dtype: str) -> int:
        return workers_for(requested_workers, config.method, device, threads, randomness, dtype)

    steps_per_epoch = math.ceil(n_examples / resolved.batch_size)
    total_steps = steps_per_epoch * resolved.epochs
    warmup = round(config.warmup_ratio * total_steps)
    eval_every = config.eval_every if config.eval_every != AUTO else max(1, math.ceil(total_steps / 4))
    ckpt_every = config.checkpoint_every if config.checkpoint_every != AUTO else max(10, total_steps // 10)
    requested = config.precision
    if run_dir is not None and (run_dir / "environment.json").is_file():  # resume in the recorded precision
        requested = records.read_json(run_dir / "environment.json")["precision"]["dtype"]
    timed = _timing_examples(prepared, resolved, config, steps_per_epoch)

    def timer(dtype: str) -> float:  # each precision timed with the workers it would train with
        workers.configure(workers_in(dtype), threads)
        return _time_step(model, config, prepared, timed, dtype, workers)

    precision = choose_precision(device, requested, step_timer=timer)
    if world > 1 and not dry_run:  # all processes compute in one precision: rank 0's measurement decides
        import torch.distributed as dist

        shared = [precision]
        dist.broadcast_object_list(shared, src=0)
        precision = shared[0]
    if device == "cuda":  # flash-attention takes 16-bit inputs only: chosen once the precision is known
        flash = attention_for(device, kernels.enabled, precision.dtype, flash_attention_available())
        kernels = replace(kernels, attention=flash)
        set_attention(model, kernels.attention)
        model.tunewise_kernels = kernels
    if mixed.frozen_base_in_bf16(config.method, precision.dtype, kernels.enabled):
        mixed.store_frozen(model, torch.bfloat16)
    if kernels.enabled:
        release_free_heap()  # what the precision measurement's steps (and the fp32 weights, if let go) left free
    autocast_dtype = mixed.autocast_dtype(config.method, precision.dtype, kernels.enabled)
    workers.configure(workers_in(precision.dtype), threads)
    # Each precision has its own micro-batch size; not raised to max_length: it bounds activation memory.
    micro_tokens = micro_batch_tokens(config, precision.dtype)
    plan = Plan(
        n_examples=n_examples,
        epochs=resolved.epochs,
        batch_size=resolved.batch_size,
        steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        tokens_per_epoch=prepared.train.n_tokens,
        trained_tokens_per_epoch=prepared.train.n_trained,
        total_params=total_params,
        trainable_params=trainable_params,
        resolved=resolved.to_dict(),
        precision=precision.to_dict(),
        micro_batch_tokens=micro_tokens,
        micro_batch_workers=workers.workers,
    )
    if rank == 0 and not dry_run:  # a dry run returns the plan: the CLI prints it on stdout
        say(plan.describe())

    params = _params(model)
    optimizer = torch.optim.AdamW(params, lr=resolved.learning_rate, weight_decay=config.weight_decay)
    if dry_run:
        return _measure_plan(
            plan, model, prepared, resolved, micro_tokens, autocast_dtype, steps_per_epoch, total_steps, workers
        )  # fmt: skip

    # 3. The run directory and registry row (rank 0 only writes).
    run_id = run_dir.name if run_dir is not None else new_run_id or records.new_run_id()
    if world > 1:  # every process must agree on the run directory (rank 0 writes, all read checkpoints)
        import torch.distributed as dist

        shared = [run_id]
        dist.broadcast_object_list(shared, src=0)
        run_id = shared[0]
    run_dir = run_dir or project.runs_dir / run_id
    writer = rank == 0
    config_record = {
        "run_id": run_id,
        "config": config.to_dict(),
        "resolved": resolved.to_dict(),
        "data_sha256": prepared.data_hashes,
        "steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup,
        "eval_every": eval_every,
        "checkpoint_every": ckpt_every,
        "micro_batch_tokens": micro_tokens,
        "micro_batch_workers": workers.workers,
        "kernels": kernels.to_dict(),
    }
    metrics = records.MetricsLog(run_dir / "metrics.jsonl")
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        records.write_json(run_dir / "config.json", config_record)
        # On resume the first environment stays (it holds the precision measurement); the new one is added.
        env_name = (
            "environment.json"
            if recorded is None
            else time.strftime("environment-resume-%Y%m%d-%H%M%S.json", time.gmtime())
        )
        environment = {
            **records.environment(precision.to_dict(), device, world),
            "kernels": kernels.to_dict(),
        }
        records.write_json(run_dir / env_name, environment)
        records.record_start(project, run_id, run_dir, config_record, config.dataset_version)
        say(f"run {run_id}: {run_dir}")
    result = TrainResult(run_id, run_dir, "running")
    started = time.perf_counter()
    try:
        _train(
            result, model, optimizer, prepared, resolved, config, plan, metrics, run_dir,
            autocast_dtype=autocast_dtype, micro_tokens=micro_tokens, warmup=warmup, eval_every=eval_every,
            ckpt_every=ckpt_every, resume=resume is not None, writer=writer, rank=rank, world=world,
            say=say, on_step=on_step, workers=workers,
        )  # fmt: skip
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
        if writer:
            payload = {**result.to_dict(), "plan": plan.to_dict(), "finished_at": records.utc_now()}
            records.write_json(run_dir / "result.json", payload)
            records.record_finish(project, run_id, payload)
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return result


def _timing_examples(
    prepared: Prepared, resolved: Resolved, config: TrainConfig, steps_per_epoch: int
) -> list[int]:
    """The examples the precision measurement times: the first micro-batch of step 0 at the larger of the two
    precisions' micro-batch sizes, so that each precision packs the same examples at its own size."""
    largest = max(micro_batch_tokens(config, dtype) for dtype in ("float32", "bfloat16"))
    return _step_groups(prepared, resolved, 0, steps_per_epoch, largest)[1][0]


def _time_step(
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
            _loss_of(model, prepared.train.examples, autocast_dtype), groups, _params(model), 1.0
        )
        elapsed = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return elapsed


def param_count_hint(config: TrainConfig) -> int:
    """Parameter count for the auto rule, read from the model's config without loading weights."""
    from tunewise.models.loading import TINY_MODEL, resolve_base

    if config.base == TINY_MODEL:
        return 3_400_000
    folder = Path(resolve_base(config.base))
    index = folder / "model.safetensors"
    if index.is_file():
        return index.stat().st_size // 4  # fp32 on disk: 4 bytes per parameter (an estimate is enough here)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) // 2


def _measure_plan(
    plan: Plan, model: Any, prepared: Prepared, resolved: Resolved, micro_tokens: int, autocast_dtype: Any,
    steps_per_epoch: int, total_steps: int, workers: MicroBatchWorkers,
) -> Plan:  # fmt: skip
    """Time one real forward+backward step (after a warm-up one) and extrapolate; no weight is updated."""
    _, groups = _step_groups(prepared, resolved, 0, steps_per_epoch, micro_tokens)
    examples = prepared.train.examples

    loss_of, params = _loss_of(model, examples, autocast_dtype), _params(model)
    tokens = sum(len(examples[i]) for group in groups for i in group)

    def one_step() -> tuple[float, int]:
        t0 = time.perf_counter()
        workers.gradient(loss_of, groups, params, 1.0)
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, tokens

    one_step()  # warm-up: first calls pay for allocation and kernel selection
    seconds, tokens = one_step()
    plan.measured_step_s = seconds
    plan.measured_tokens_per_s = tokens / seconds
    plan.estimated_time_s = plan.tokens_per_epoch * plan.epochs / plan.measured_tokens_per_s
    # Peak RSS so far (weights, activations, gradients) plus what AdamW adds: two fp32 moments per parameter.
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    plan.peak_memory_gb = (peak_rss + 2 * 4 * plan.trainable_params) / 1e9
    return plan


def _train(
    result: TrainResult, model: Any, optimizer: Any, prepared: Prepared, resolved: Resolved, config: TrainConfig,
    plan: Plan, metrics: records.MetricsLog, run_dir: Path, *, autocast_dtype: Any, micro_tokens: int,
    warmup: int, eval_every: int, ckpt_every: int, resume: bool, writer: bool, rank: int, world: int,
    say: Narrate, on_step: Callable[[int, dict[str, Any]], None] | None, workers: MicroBatchWorkers,
) -> None:  # fmt: skip
    import torch
    from tqdm import tqdm

    params = _params(model)
    examples = prepared.train.examples
    loss_of = _loss_of(model, examples, autocast_dtype)
    # Hands free heap pages back to the OS when resident memory grows (train/heap.py), with the kernels.
    kernels = model_kernels(model)
    heap = HeapTrim(enabled=kernels is None or kernels.enabled)
    total_steps = plan.steps
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
            model, prepared.eval, micro_tokens, autocast_dtype, rank, world, workers
        )
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
        batch, groups = _step_groups(
            prepared, resolved, step, plan.steps_per_epoch, micro_tokens, rank, world
        )
        step_examples = [examples[i] for i in batch]
        # Normalize by the trained tokens of the whole step (all micro-batches, all processes): accumulation
        # then gives exactly the gradient of one big batch.
        n_trained = sum(sum(e.mask[1:]) for e in step_examples)
        n_tokens = sum(len(e) for e in step_examples)
        lr = lr_at(step, total_steps, resolved.learning_rate, warmup, config.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_total = workers.gradient(loss_of, groups, params, n_trained)
        if world > 1:
            _all_reduce_grads(params, loss_total)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm).item()
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
            "epoch": round(done / plan.steps_per_epoch, 4),
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
        if done % eval_every == 0 and done < total_steps and prepared.eval is not None:
            scores = run_eval(done)
            assert scores is not None
            stop = _track_best(state, done, scores, example_losses, config, model, run_dir, writer)
        if done % ckpt_every == 0 and done < total_steps and writer and not stop:
            save_checkpoint(run_dir, done, model, optimizer, {k: v for k, v in state.items() if k != "step"})
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
    if final is not None and _keeps_best(config):
        best = state["best_eval_loss"]
        if best is not None and final["eval_loss"] > best and (run_dir / "best.safetensors").is_file():
            last = final["eval_loss"]
            check = compare_with_best(state.get("best_example_losses"), example_losses, final["eval_tokens"])
            result.extra["best_check"] = {"best_step": state["best_step"], "best_loss": best, "last_loss": last,
                                          **check}  # fmt: skip
            noise = "" if check["se"] is None else f", standard error {check['se']:.4f}"
            if check["earlier_is_better"]:
                _load_trainable(model, run_dir / "best.safetensors")  # keep the best weights, not the last
                final = run_eval(result.steps, record=False)
                result.extra["kept_step"] = state["best_step"]
                if writer:
                    say(f"kept the weights of step {state['best_step']} (held-out loss {final['eval_loss']:.4f}) "
                        f"rather than the last step's ({last:.4f}{noise})")  # fmt: skip
            elif writer:
                say(f"kept the last step's weights: step {state['best_step']}'s held-out loss {best:.4f} is within "
                    f"the noise of the last's {last:.4f} (difference {check['diff']:.4f}{noise})")  # fmt: skip
    result.eval_after = final
    if writer:
        result.output = str(_save_output(model, prepared.tokenizer, config, run_dir))
        if final is not None:
            say(f"held-out loss {result.eval_before['eval_loss']:.4f} -> {final['eval_loss']:.4f}, token accuracy "
                f"{result.eval_before['eval_accuracy']:.3f} -> {final['eval_accuracy']:.3f}")  # fmt: skip
        say(f"train loss {result.train_loss_first:.4f} -> {result.train_loss_last:.4f}; "
            f"{result.tokens_per_s:.0f} tokens/s ({result.trained_tokens_per_s:.0f} trained tokens/s)")  # fmt: skip


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


def _keeps_best(config: TrainConfig) -> bool:
    """Early stopping implies keeping the best weights: stopping after N bad evaluations leaves worse ones."""
    return config.keep_best or config.early_stopping_patience is not None


def _track_best(
    state: dict[str, Any],
    step: int,
    scores: dict[str, float],
    example_losses: list[float],
    config: TrainConfig,
    model: Any,
    run_dir: Path,
    writer: bool,
) -> bool:
    """Track the best held-out loss; keep its weights on disk; say whether patience ran out."""
    best = state["best_eval_loss"]
    if best is None or scores["eval_loss"] < best:
        state["best_eval_loss"] = scores["eval_loss"]
        state["best_step"] = step
        state["best_example_losses"] = list(example_losses)
        state["bad_evals"] = 0
        if writer and _keeps_best(config):
            from safetensors.torch import save_file

            tmp = run_dir / ".best.safetensors.tmp"
            save_file({n: p.detach().contiguous().clone() for n, p in _trainable(model)}, str(tmp))
            os.replace(tmp, run_dir / "best.safetensors")
        return False
    state["bad_evals"] += 1
    return config.early_stopping_patience is not None and state["bad_evals"] >= config.early_stopping_patience


def compare_with_best(
    best: list[float] | None, last: list[float], tokens: int, z: float = 1.96
) -> dict[str, Any]:
    """Whether the best evaluation's weights beat the last step's by more than the validation set's noise.

    `best` and `last` are the summed losses of each held-out example under the two sets of weights. The
    difference of the mean token losses is `sum(last - best) / tokens`; its standard error comes from the
    spread of the per-example differences (the same examples under both, so the comparison is paired). On a
    validation set of 30 examples, "lowest loss" alone picked an earlier step over a difference of 0.002 in
    0.22, discarding the low-learning-rate end of the schedule on noise. With fewer than 2 examples (or no
    per-example record, from a checkpoint written before it existed) there is no noise estimate, and the lower
    loss wins.

    >>> compare_with_best([10.0, 20.0, 30.0], [11.0, 21.0, 31.0], 60)["earlier_is_better"]  # always 1 lower
    True
    >>> compare_with_best([10.0, 20.0, 30.0], [14.0, 17.0, 30.0], 60)["earlier_is_better"]  # mixed: noise
    False
    """
    if best is None or len(best) != len(last):
        diff = None
    else:
        diff = (sum(last) - sum(best)) / max(1, tokens)
    if diff is None or len(last) < 2:
        return {"diff": diff, "se": None, "earlier_is_better": diff is None or diff > 0}
    d = [b - a for a, b in zip(best, last, strict=True)]
    mean = sum(d) / len(d)
    se = math.sqrt(len(d) / (len(d) - 1) * sum((x - mean) ** 2 for x in d)) / max(1, tokens)
    return {"diff": diff, "se": se, "earlier_is_better": diff > z * se}


def _load_trainable(model: Any, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path))
    params = dict(_trainable(model))
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def _save_output(model: Any, tokenizer: Any, config: TrainConfig, run_dir: Path) -> Path:
    """The adapter in PEFT layout (lora) or a safetensors model folder (full), written then renamed."""
    name = "adapter" if config.method == "lora" else "model"
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    use_packed_attention(model, False)  # the saved config must name a standard attention implementation
    model.config.use_cache = True
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
