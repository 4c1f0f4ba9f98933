"""Training configuration: what the user asked for (`TrainConfig`) and the rule that fills in `auto` values.

Precedence: tunewise.yaml < CLI flags. Every `auto` is resolved by `auto_hyperparameters()` before training,
and the resolved values (with where each came from) are printed and written to the run's config.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from tunewise.errors import ConfigError, nearest

AUTO = "auto"

Method = Literal["lora", "full"]
Schedule = Literal["cosine", "linear", "constant"]


@dataclass
class TrainConfig:
    """Everything one training run needs. `"auto"` means: let `auto_hyperparameters()` decide."""

    data: list[str] = field(default_factory=list)  # normalized chat JSONL files
    eval_data: list[str] = field(default_factory=list)  # held-out chat JSONL files (optional)
    base: str = "embedded:smollm2-135m-instruct"
    trust_remote_code: bool = False
    method: Method = "lora"
    epochs: int | str = AUTO
    learning_rate: float | str = AUTO
    batch_size: int | str = AUTO  # examples per optimizer step (global, across processes)
    lora_rank: int | str = AUTO
    lora_alpha: float | str = AUTO
    lora_dropout: float = 0.0
    lora_targets: str | list[str] = "all-linear"  # peft: every linear layer except the output head
    max_length: int | str = AUTO  # tokens per example; longer ones are truncated (and counted)
    # Tokens per packed micro-batch; steps larger than this accumulate gradients. It bounds activation memory.
    # auto: 768 for LoRA with a bf16 base, else 256 (`micro_batch_tokens`). An example longer than this
    # gets a micro-batch of its own.
    micro_batch_tokens: int | str = AUTO
    # Micro-batches computed at once, each by its own thread with threads // workers cores (train/workers.py).
    # auto: 2 for fp32 LoRA on a CPU with at least two threads and no dropout, else 1. Each one in flight
    # holds its activations: 2 holds twice micro_batch_tokens' worth.
    micro_batch_workers: int | str = AUTO
    schedule: Schedule = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int | str = AUTO  # steps between held-out evaluations
    early_stopping_patience: int | None = None  # stop after this many evaluations without improvement
    # With held-out data, the run's output is the last step's weights unless the evaluation with the lowest
    # held-out loss beat them beyond the noise (`loop.compare_with_best`). The held-out data is then a validation
    # set, chosen on: it must not be the test set the model is judged on (`tunewise run` carves it from the
    # training split).
    keep_best: bool = True
    checkpoint_every: int | str = AUTO  # steps between checkpoints
    precision: str = AUTO  # auto | float32 | bfloat16
    # auto: tunewise's CPU training kernels where they are tested (a CPU, the Llama family); off: plain
    # transformers + PEFT (train/kernels.py).
    kernels: str = AUTO
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    progress: bool = True
    dataset_version: str | None = None  # the registry id of the dataset version, when the data stage made it

    def __post_init__(self) -> None:
        problems: list[str] = []
        if isinstance(self.data, str):
            self.data = [self.data]
        if isinstance(self.eval_data, str):
            self.eval_data = [self.eval_data]
        if self.method not in ("lora", "full"):
            problems.append(f"method must be lora or full (got {self.method!r})")
        if self.schedule not in ("cosine", "linear", "constant"):
            problems.append(f"schedule must be cosine, linear or constant (got {self.schedule!r})")
        checks = {
            "epochs": (int, 1, 1000),
            "batch_size": (int, 1, 65536),
            "lora_rank": (int, 1, 4096),
            "max_length": (int, 8, 1 << 20),
            "eval_every": (int, 1, 1 << 30),
            "checkpoint_every": (int, 1, 1 << 30),
        }
        for name, (kind, low, high) in checks.items():
            value = getattr(self, name)
            if value == AUTO:
                continue
            if not isinstance(value, kind) or isinstance(value, bool) or not low <= value <= high:
                problems.append(f"{name} must be 'auto' or an integer in [{low}, {high}] (got {value!r})")
        for name in ("learning_rate", "lora_alpha"):
            value = getattr(self, name)
            if value != AUTO and (not isinstance(value, (int, float)) or value <= 0):
                problems.append(f"{name} must be 'auto' or a positive number (got {value!r})")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1) (got {self.lora_dropout})")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        tokens = self.micro_batch_tokens
        if tokens != AUTO and (not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 16):
            problems.append(
                f"micro_batch_tokens must be 'auto' or an integer of at least 16 (got {tokens!r})"
            )
        workers = self.micro_batch_workers
        if workers != AUTO and (
            not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 64
        ):
            problems.append(f"micro_batch_workers must be 'auto' or an integer in [1, 64] (got {workers!r})")
        elif workers != AUTO and workers > 1 and self.method == "full":
            problems.append(
                "micro_batch_workers above 1 is for LoRA: full fine-tuning's gradient per micro-batch is the size "
                "of the model (set micro_batch_workers: 1 or auto)"
            )
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            problems.append("early_stopping_patience must be at least 1")
        if self.kernels not in (AUTO, "off"):
            problems.append(f"kernels must be auto or off (got {self.kernels!r})")
        elif self.kernels == "off" and isinstance(workers, int) and workers > 1:
            problems.append(
                "micro_batch_workers above 1 runs tunewise's worker threads, which kernels: off turns off "
                "(set micro_batch_workers: 1 or auto, or kernels: auto)"
            )
        if self.precision not in (AUTO, "float32", "bfloat16", "fp32", "bf16"):
            problems.append(f"precision must be auto, float32 or bfloat16 (got {self.precision!r})")
        if problems:
            raise ConfigError("training config", problems)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping; an unknown key is an error naming the nearest valid one."""
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in valid]
        if unknown:
            problems = []
            for key in unknown:
                guess = nearest(key, valid)
                problems.append(f"unknown key '{key}'" + (f" (did you mean '{guess}'?)" if guess else ""))
            raise ConfigError("training config", problems)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    return 768 if config.method == "lora" and dtype == "bfloat16" else 256


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
    if method == "lora":
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

    lora = config.method == "lora"
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
