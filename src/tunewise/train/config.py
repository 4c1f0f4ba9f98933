"""Training configuration: what the user asked for (`TrainConfig`) and the rule that fills in `auto` values.

Precedence: tunewise.yaml < CLI flags (`TrainConfig.from_spec`). Every `auto` is resolved by `auto_hyperparameters()` before training,
and the resolved values (with where each came from) are printed and written to the run's config.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunewise.errors import ConfigError
from tunewise.spec import (
    EMBEDDED_MODEL,
    Auto,
    BatchSize,
    Epochs,
    LearningRate,
    LoraAlpha,
    LoraDropout,
    LoraRank,
    MaxLength,
    MicroBatchTokens,
    MicroBatchWorkers,
    Steps,
    describe_errors,
)

if TYPE_CHECKING:
    from tunewise.spec import Spec

AUTO = "auto"

Method = Literal["lora", "qlora", "full"]
Schedule = Literal["cosine", "linear", "constant"]


class TrainConfig(BaseModel):
    """Everything one training run needs. `"auto"` means: let `auto_hyperparameters()` decide.

    The hyperparameters' bounds are the spec's (`tunewise.spec.Epochs`, ...); a bad value raises a ConfigError
    listing every problem, worded as the spec words it."""

    model_config = ConfigDict(extra="forbid")

    data: list[str] = Field(default_factory=list)  # normalized chat JSONL files
    eval_data: list[str] = Field(default_factory=list)  # held-out chat JSONL files (optional)
    base: str = EMBEDDED_MODEL
    trust_remote_code: bool = False
    method: Method = "lora"
    epochs: Auto | Epochs = AUTO
    learning_rate: Auto | LearningRate = AUTO
    batch_size: Auto | BatchSize = AUTO  # examples per optimizer step (global, across processes)
    lora_rank: Auto | LoraRank = AUTO
    lora_alpha: Auto | LoraAlpha = AUTO
    lora_dropout: LoraDropout = 0.0
    lora_targets: str | list[str] = "all-linear"  # peft: every linear layer except the output head
    max_length: Auto | MaxLength = AUTO  # tokens per example; longer ones are truncated (and counted)
    # Tokens per packed micro-batch; steps larger than this accumulate gradients. It bounds activation memory.
    # auto: 768 for LoRA with a bf16 base, else 256 (`micro_batch_tokens`). An example longer than this
    # gets a micro-batch of its own.
    micro_batch_tokens: Auto | MicroBatchTokens = AUTO
    # Micro-batches computed at once, each by its own thread with threads // workers cores (train/workers.py).
    # auto: 2 for fp32 LoRA on a CPU with at least two threads and no dropout, else 1. Each one in flight
    # holds its activations: 2 holds twice micro_batch_tokens' worth.
    micro_batch_workers: Auto | MicroBatchWorkers = AUTO
    # auto: tunewise's CPU training kernels where they are known to help; off: plain transformers + PEFT.
    kernels: Literal["auto", "off"] = AUTO
    # Under a launcher with several processes (train/launcher.py): ddp, each process holds the whole model;
    # fsdp, each holds 1/N of the weights, gradients and optimizer state (train/sharded.py). One process: ignored.
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # Recompute each layer's activations in the backward pass instead of keeping them (about a third more
    # compute, a layer's input kept instead of ~9 of its widths). auto: on when the memory estimate
    # (train/memory.py) does not fit the device without it and does with it; needs kernels off (on a GPU they are).
    gradient_checkpointing: Literal["auto", "on", "off"] = AUTO
    schedule: Schedule = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: Auto | Steps = AUTO  # steps between held-out evaluations
    early_stopping_patience: Steps | None = None  # stop after this many evaluations without improvement
    # With held-out data, the run's output is the last step's weights unless the evaluation with the lowest
    # held-out loss beat them beyond the noise (`loop.compare_with_best`). The held-out data is then a validation
    # set, chosen on: it must not be the test set the model is judged on (`tunewise run` carves it from the
    # training split).
    keep_best: bool = True
    checkpoint_every: Auto | Steps = AUTO  # steps between checkpoints
    precision: Literal["auto", "float32", "bfloat16", "fp32", "bf16"] = AUTO
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    progress: bool = True
    dataset_version: str | None = None  # the registry id of the dataset version, when the data stage made it

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError("training config", describe_errors(exc.errors(), TrainConfig)) from None

    @field_validator("data", "eval_data", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if isinstance(value, (str, Path)):
            value = [value]
        return [str(p) if isinstance(p, Path) else p for p in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _workers_are_for_lora(self) -> TrainConfig:
        if self.micro_batch_workers != AUTO and self.micro_batch_workers > 1 and self.method == "full":
            raise ValueError(
                "micro_batch_workers above 1 is for LoRA: full fine-tuning's gradient per micro-batch is the size "
                "of the model (set micro_batch_workers: 1 or auto)"
            )
        if self.kernels == "off" and self.micro_batch_workers != AUTO and self.micro_batch_workers > 1:
            raise ValueError(
                "micro_batch_workers above 1 runs tunewise's worker threads, which kernels: off turns off "
                "(set micro_batch_workers: 1 or auto, or kernels: auto)"
            )
        return self

    @property
    def lora(self) -> bool:
        """Whether the run trains adapters (lora, or qlora on a 4-bit base) rather than every weight."""
        return self.method in ("lora", "qlora")

    @classmethod
    def from_spec(cls, spec: Spec, **overrides: Any) -> TrainConfig:
        """The training config of a spec (`spec_values`), with `overrides` (command-line flags, the data the
        pipeline made, a job's values) over it: the one way from a spec to a training run.

        >>> from tunewise.spec import parse_spec
        >>> s = parse_spec("task: {name: t, target: Label the review.}\\ndata: {train: x}\\nhyperparameters: {epochs: 2}")
        >>> c = TrainConfig.from_spec(s, lora_rank=4)
        >>> c.epochs, c.lora_rank, c.batch_size, c.keep_best
        (2, 4, 'auto', True)
        """
        return cls(**{**spec_values(spec), **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; an unknown key is an error naming the nearest valid one."""
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def spec_values(spec: Spec) -> dict[str, Any]:
    """The training settings a spec states: its model, method, seed and every hyperparameter but the
    pipeline's validation share. The one mapping from the spec to `TrainConfig`."""
    hp = spec.hyperparameters.model_dump(exclude={"validation_fraction"})
    return {
        "base": spec.model.base,
        "trust_remote_code": spec.model.trust_remote_code,
        "method": spec.method,
        "seed": spec.data.seed,
        **hp,
    }


def micro_batch_tokens(config: TrainConfig, dtype: str) -> int:
    """The tokens per micro-batch of a run computing in `dtype`: the configured number, or for `auto` the
    fastest size the training bench measured under its 2 GB peak RSS target (SmolLM2-135M, 2-core AMX Xeon).

    - fp32 (and full fine-tuning, whose activations autocast keeps partly in fp32): 256 tokens. Backward keeps
      33.8 KB per token per layer, 1.0 MB per token over 30 layers: 0.26 GB, and glibc's heap fragmentation
      about as much again. 1,024 tokens ran only 5% faster, at 3.2 GB peak against 1.75 GB.
    - LoRA with a bf16 base: 768 tokens. Backward keeps 14.2 KB per token per layer (0.33 GB for 768 tokens),
      and the AMX products gain much more from larger blocks. A micro-batch of ~260-token examples holds one
      example at 256 or 512 tokens, two or three at 768. 128 bitext_reply examples trained in 81.7 s at 768
      tokens, 75.2 s at 1,024 (1.84 and 1.99 GB peak RSS) and, on 64 examples, 47.8 s at 256 against 41.6 s at
      768 (1.55 and 1.76 GB). The training bench's 256 examples peaked at 2.01 GB at 768 and 2.19 GB at 1,024;
      with ideep's kernel cache capped too (tunewise/runtime.py), at 1.84 and 1.83 GB in two runs at 768, and
      768 and 1,024 tokens then ran 128 examples at the same speed (78.0 and 79.4 s; 1.50 and 1.65 GB).

    With two micro-batch workers (train/workers.py; fp32 by default) two micro-batches of this size are in
    flight at once; the sizes stayed: the bench's 256 examples then peaked at 1.99 GB in fp32 (and 1.91 GB in
    bf16 with two workers). Re-timed the same day one micro-batch at a time, fp32 at 256, 512 and 768 tokens ran
    at the same speed (347, 342 and 353 tokens/s, alternating in one process); with two bf16 workers, steps
    split into four balanced micro-batches instead of three of 768 tokens gained nothing in the bench (161.8
    against 159.6 s).
    """
    if config.micro_batch_tokens != AUTO:
        return int(config.micro_batch_tokens)
    return 768 if config.lora and dtype == "bfloat16" else 256


@dataclass(frozen=True)
class Resolved:
    """Concrete hyperparameters, with the source of each ('auto' rule or 'user')."""

    epochs: int
    learning_rate: float
    batch_size: int
    lora_rank: int | None
    lora_alpha: float | None
    max_length: int
    sources: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The guide and the OpenAI fine-tuning cookbook: about 3 epochs, scaled so that the number of training
# examples seen (examples x epochs) stays within 100 .. 25,000.
DEFAULT_EPOCHS = 3
MIN_EXAMPLES_SEEN = 100
MAX_EXAMPLES_SEEN = 25_000
MAX_AUTO_EPOCHS = 25


def auto_epochs(n_examples: int) -> int:
    """About 3 epochs; more for tiny sets, fewer for large ones, so examples x epochs is in 100..25,000.

    >>> auto_epochs(40), auto_epochs(1000), auto_epochs(20000), auto_epochs(2)
    (3, 3, 1, 25)
    >>> auto_epochs(20)
    5
    """
    if n_examples * DEFAULT_EPOCHS < MIN_EXAMPLES_SEEN:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_EXAMPLES_SEEN / n_examples))
    if n_examples * DEFAULT_EPOCHS > MAX_EXAMPLES_SEEN:
        return max(1, MAX_EXAMPLES_SEEN // n_examples)
    return DEFAULT_EPOCHS


def auto_batch_size(n_examples: int) -> int:
    """A power of two near n/32, within 4..32: enough steps per epoch on small sets, stable ones on large.

    >>> [auto_batch_size(n) for n in (10, 40, 256, 1000, 100000)]
    [4, 4, 8, 16, 32]
    """
    target = max(1.0, n_examples / 32)
    return int(min(32, max(4, 2 ** math.floor(math.log2(target)))))


def auto_learning_rate(method: str, n_params: int) -> float:
    """Peak learning rate: LoRA 1e-3 below 1B parameters, 2e-4 up to 3B, 1e-4 above; full fine-tuning 2e-5 below
    1B, else 1e-5.

    LoRA's best rate is about 10x full fine-tuning's, more in short runs (Schulman et al., "LoRA Without Regret",
    2025). Below 1B parameters the rate was measured here: on the embedded 135M model with 300 examples, 3 epochs,
    banking77 (10 intents) went from 52% exact at 2e-4 to 93% at 1e-3 (held-out loss 0.26 -> 0.027); sst2 stayed
    at 84%. Above 1B the values are the field's usual starting points, not measured here.

    >>> auto_learning_rate("lora", 135_000_000), auto_learning_rate("full", 135_000_000)
    (0.001, 2e-05)
    >>> auto_learning_rate("lora", 2_000_000_000), auto_learning_rate("lora", 7_000_000_000)
    (0.0002, 0.0001)
    >>> auto_learning_rate("full", 7_000_000_000)
    1e-05
    """
    if method in ("lora", "qlora"):
        if n_params < 1_000_000_000:
            return 1e-3
        return 2e-4 if n_params <= 3_000_000_000 else 1e-4
    return 2e-5 if n_params < 1_000_000_000 else 1e-5


def auto_lora_rank(n_examples: int) -> int:
    """Rank 8 below 1,000 examples, 16 below 10,000, else 32: more data can use more adapter capacity.

    >>> auto_lora_rank(40), auto_lora_rank(5000), auto_lora_rank(50000)
    (8, 16, 32)
    """
    if n_examples < 1_000:
        return 8
    return 16 if n_examples < 10_000 else 32


def auto_max_length(longest: int, context_length: int) -> int:
    """The longest example rounded up to a multiple of 64, within the model's context.

    >>> auto_max_length(100, 8192), auto_max_length(9000, 8192)
    (128, 8192)
    """
    return min(context_length, 64 * math.ceil(longest / 64))


def auto_hyperparameters(
    config: TrainConfig, n_examples: int, n_params: int, longest: int, context_length: int
) -> Resolved:
    """Resolve every `auto` in `config` from the data size, the method and the model.

    The rule (each part has its own function and doctest above):

    - epochs: 3, scaled so that examples x epochs stays within 100..25,000 (at most 25 epochs);
    - batch size: a power of two near n/32 within 4..32;
    - learning rate: LoRA 1e-3 below 1B parameters, 2e-4 up to 3B, 1e-4 above; full 2e-5 below 1B else 1e-5;
    - LoRA rank: 8 below 1,000 examples, 16 below 10,000, else 32; alpha = 2 x rank;
    - max length: the longest example rounded up to 64 tokens, within the context length.
    """
    sources: dict[str, str] = {}

    def pick(name: str, value: Any, rule: Any) -> Any:
        sources[name] = AUTO if value == AUTO else "user"
        return rule() if value == AUTO else value

    lora = config.lora
    rank = pick("lora_rank", config.lora_rank, lambda: auto_lora_rank(n_examples)) if lora else None
    return Resolved(
        epochs=pick("epochs", config.epochs, lambda: auto_epochs(n_examples)),
        learning_rate=float(
            pick("learning_rate", config.learning_rate, lambda: auto_learning_rate(config.method, n_params))
        ),
        batch_size=min(
            n_examples, pick("batch_size", config.batch_size, lambda: auto_batch_size(n_examples))
        ),
        lora_rank=rank,
        lora_alpha=float(pick("lora_alpha", config.lora_alpha, lambda: 2.0 * rank)) if lora else None,
        max_length=pick("max_length", config.max_length, lambda: auto_max_length(longest, context_length)),
        sources=sources,
    )
