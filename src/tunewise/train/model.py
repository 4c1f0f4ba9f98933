"""The model a run trains, and what it computes: the packed forward pass, the loss over trained tokens, held-out
scores, and the saved output.

`build_model` loads the base, wraps it with LoRA for method lora, and, with tunewise's kernels
(train/kernels.py), gives its modules the fused forwards; `batch_loss` is the summed cross-entropy of one packed
micro-batch, through the kernels' chunked vocabulary loss or, without them, the model's own forward.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.fileio import publish
from tunewise.train.attention import use_packed_attention
from tunewise.train.config import Resolved, TrainConfig
from tunewise.train.data import Example, TokenizedData, micro_batches, pack
from tunewise.train.fused import use_fused_lora
from tunewise.train.kernels import choose_kernels, model_kernels, set_attention
from tunewise.train.layers import use_fused_layers
from tunewise.train.loss import linear_cross_entropy
from tunewise.train.sharded import Filler, copy_into, even_out
from tunewise.train.swiglu import use_fused_swiglu
from tunewise.train.workers import MicroBatchWorkers


def build_model(
    config: TrainConfig, resolved: Resolved | None, tokenizer: Any, device: str = "cpu", shards: int = 1
) -> Any:
    """The base model, wrapped with LoRA adapters for methods lora and qlora; every parameter trainable for full;
    `shards`: the processes a sharded run splits it over (for the memory estimate).

    With tunewise's kernels (`config.kernels`, train/kernels.py) its modules get the fused forwards; without,
    it is the model transformers and PEFT build, on transformers' attention. On a CUDA GPU computing in bf16,
    a LoRA base is loaded in bf16 (the adapters stay fp32), a QLoRA base in 4-bit NF4. Gradient checkpointing
    is turned on where `config.gradient_checkpointing` asks or the memory estimate needs it
    (`checkpointing_for`). The choices are kept on the model (`kernels.model_kernels`,
    `model.tunewise_checkpointing`)."""
    import torch

    from tunewise.models.loading import QLORA_HINT, load_model, qlora_unavailable

    if config.method == "qlora":  # before any weight is read: no silent fallback to a 16-bit base
        why = qlora_unavailable(device)
        if why is not None:
            raise TunewiseError(f"method qlora cannot run here: {why}", hint=QLORA_HINT)
    bf16_base = config.lora and device == "cuda" and cuda_bf16(config.precision)
    # The same seed before loading and wrapping, so LoRA's random A matrices are identical run to run.
    torch.manual_seed(config.seed)
    model = load_model(
        config.base, "bfloat16" if bf16_base else "float32", config.trust_remote_code, tokenizer=tokenizer,
        seed=config.seed, quantize="nf4" if config.method == "qlora" else None,
    )  # fmt: skip
    model.config.use_cache = False  # no KV cache in training: it only costs memory
    choice = choose_kernels(config.kernels, device, getattr(model.config, "model_type", None))
    if choice.enabled and config.gradient_checkpointing == "on":
        off = choose_kernels("off", device, None)
        choice = replace(off, reason="gradient_checkpointing: on runs plain transformers + PEFT")
    choice = replace(choice, attention=set_attention(model, choice.attention))
    checkpointing = checkpointing_for(
        config, resolved, model.config.to_dict(), device, choice.enabled, shards
    )
    model.tunewise_checkpointing = checkpointing
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        # Norms and the head in fp32 for stable 4-bit training; checkpointing as decided above.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing[0], activation_checkpointing_kwargs=NON_REENTRANT
        )
    elif checkpointing[0]:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=NON_REENTRANT)
    if choice.enabled:
        private_weights(model)
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
        model = get_peft_model(
            model, lora
        )  # adapters in fp32 over a bf16 base (peft's autocast_adapter_dtype)
    if choice.enabled:
        use_fused_lora(model)
        use_fused_layers(model)  # after the LoRA wrap: the fused layers take over LoRA projections
    model.tunewise_kernels = choice
    model.tunewise_checkpointing = checkpointing
    return model


# Non-reentrant checkpointing needs no input that requires grad, which a frozen embedding under LoRA does not give.
NON_REENTRANT = {"use_reentrant": False}


def cuda_bf16(precision: str) -> bool:
    """Whether a CUDA run with `precision` computes in bf16: asked for, or auto on a GPU with native bf16."""
    import torch

    if precision in ("float32", "fp32"):
        return False
    if precision in ("bfloat16", "bf16"):
        return True
    return torch.cuda.is_available() and bool(torch.cuda.is_bf16_supported())


def checkpointing_for(
    config: TrainConfig, resolved: Resolved | None, model_config: dict[str, Any], device: str, kernels: bool,
    shards: int = 1,
) -> tuple[bool, str]:  # fmt: skip
    """(gradient checkpointing on, why): as asked, or with `auto` on when the memory estimate
    (train/memory.py) of one micro-batch does not fit the free memory without it and does with it. The CPU
    kernels keep their own, smaller activations and run without it."""
    from tunewise.train.memory import available_gb

    if config.gradient_checkpointing != "auto":
        return (
            config.gradient_checkpointing == "on",
            f"gradient_checkpointing: {config.gradient_checkpointing}",
        )
    if kernels:
        return False, "auto: tunewise's CPU kernels keep their own activations"
    dtype = "bfloat16" if device == "cuda" and cuda_bf16(config.precision) else "float32"
    free = available_gb(device)
    if free is None:
        return False, f"auto: the free memory of {device} cannot be read"
    without, with_ = (
        run_memory(config, resolved, model_config, device, dtype, c, free, shards=shards)
        for c in (False, True)
    )
    if without.fits or not with_.fits:
        return False, f"auto: {'fits' if without.fits else 'does not fit either way'} without it"
    return (
        True,
        f"auto: {without.total_gb:.1f} GB without it, {with_.total_gb:.1f} GB with it, {free:.1f} GB free",
    )


def run_memory(
    config: TrainConfig, resolved: Resolved | None, model_config: dict[str, Any], device: str, dtype: str,
    checkpointing: bool, available: float | None, micro_tokens: int | None = None, at_once: int = 1,
    kernels: bool = False, shards: int = 1,
) -> Any:  # fmt: skip
    """The memory estimate (train/memory.py) of this run's model, method and micro-batches, per process when
    sharded over `shards`."""
    from tunewise.train.config import micro_batch_tokens
    from tunewise.train.memory import ModelShape, estimate

    return estimate(
        ModelShape.from_config(model_config), config.method, device, dtype,
        micro_tokens or micro_batch_tokens(config, dtype),
        lora_rank=resolved.lora_rank if resolved is not None else None, micro_batches_at_once=at_once,
        checkpointing=checkpointing, chunked_loss=kernels, available_gb=available,
        bf16_base=dtype == "bfloat16" and (device == "cuda" or kernels),  # else autocast over an fp32 base
        shards=shards,
    )  # fmt: skip


def private_weights(model: Any) -> None:
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


def parts(model: Any) -> tuple[Any, Any]:
    """(backbone returning hidden states, output head): called separately to slice before the head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def trainable(model: Any) -> list[tuple[str, Any]]:
    """(name, parameter) of every parameter that training updates."""
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
    backbone, _ = parts(model)
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
            _, head = parts(model)
            hidden = packed_hidden(model, batch)
            # (1, L, H) -> (T, H): only positions whose next token is trained reach the vocabulary projection.
            selected = hidden[0, batch["select"]]
            for h, t in zip(selected.split(counts), targets.split(counts), strict=True):
                loss_sum, right = head_loss(head, h, t)
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


def loss_of(model: Any, examples: list[Example], autocast_dtype: Any) -> Callable[[list[int]], Any]:
    """The summed loss of the micro-batch of `examples` at the given indices (what a step differentiates)."""

    def loss(group: list[int]) -> Any:
        value = batch_loss(model, [examples[i] for i in group], autocast_dtype)[0]
        return value * 0.0 if isinstance(group, Filler) else value  # a sharded process keeping in step

    return loss


def trainable_params(model: Any) -> list[Any]:
    """The parameters that training updates, in the model's order (the optimizer's and the gradients')."""
    return [p for _, p in trainable(model)]


def head_loss(head: Any, hidden: Any, targets: Any) -> tuple[Any, Any]:
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
    workers: MicroBatchWorkers | None = None, even: bool = False,
) -> tuple[dict[str, float], list[float]]:  # fmt: skip
    """`evaluate`'s scores, and each example's summed loss over its assistant tokens (in `data`'s order);
    `workers` compute several micro-batches at once; `even`: every process runs as many passes (a sharded
    model's forward pass is a collective), the extra ones scored for nothing."""
    import torch

    lengths = [len(e) for e in data.examples]
    every = micro_batches(lengths, range(len(lengths)), micro_tokens)
    groups = every[rank::world]
    if even:
        groups = even_out(groups, [every[r::world] for r in range(world)])
    totals = torch.zeros(3, dtype=torch.float64)
    per_example = torch.zeros(len(lengths), dtype=torch.float64)
    was_training = model.training
    model.eval()

    def score(group: list[int]) -> tuple[Any, Any, int]:
        with torch.no_grad():  # per thread: a worker's grad mode is its own
            return batch_loss(model, [data.examples[i] for i in group], autocast_dtype, per_example=True)

    results = (workers or MicroBatchWorkers()).map(score, groups)
    for group, (sums, correct, n) in zip(groups, results, strict=True):
        if isinstance(group, Filler):
            continue
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


def param_count_hint(config: TrainConfig) -> int:
    """Parameter count for the auto rule, read from the model's config without loading weights."""
    from tunewise.models.loading import TINY_MODEL, resolve_base
    from tunewise.train.memory import ModelShape

    if config.base == TINY_MODEL:
        return 3_400_000
    folder = Path(resolve_base(config.base))
    try:
        return ModelShape.from_folder(folder).params
    except (OSError, KeyError, ValueError, TypeError):  # an unusual config: size the weights on disk instead
        index = folder / "model.safetensors"
        if index.is_file():
            return index.stat().st_size // 4  # fp32 on disk: 4 bytes per parameter (an estimate is enough)
        return sum(p.stat().st_size for p in folder.glob("*.safetensors")) // 2


def load_trainable(model: Any, path: Path) -> None:
    """Copy the trainable weights saved in `path` (safetensors) into `model`."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path))
    params = dict(trainable(model))
    with torch.no_grad():
        for name, value in weights.items():
            copy_into(params[name], value)


def save_output(
    model: Any, tokenizer: Any, config: TrainConfig, run_dir: Path, state_dict: dict[str, Any] | None = None
) -> Path:
    """The adapter in PEFT layout (lora) or a safetensors model folder (full), written then renamed; a sharded
    model's weights come gathered in `state_dict` (train/sharded.py)."""
    name = "adapter" if config.lora else "model"
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    use_packed_attention(model, False)  # the saved config must name a standard attention implementation
    model.config.use_cache = True
    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    publish(tmp, final)
    return final
