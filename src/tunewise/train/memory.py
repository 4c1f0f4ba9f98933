"""How much memory a training run needs, from the model's config.json alone (no weights loaded, no torch): the
weights, their gradients, AdamW's moments and the activations one micro-batch keeps for its backward pass;
`tunewise train --dry-run` prints it and refuses a plan that does not fit the device.

Bytes per parameter, by method (`B` is the base's parameter count, `T` the trainable count):

    full    weights 4 B (fp32 master weights, bf16 by autocast)   gradients 4 T   AdamW 8 T (two fp32 moments)
    lora    weights 2 B on a bf16 base (CUDA, or bf16 CPU kernels), else 4 B; adapters 4 T; gradients 4 T; AdamW 8 T
    qlora   linear weights in NF4: 0.5 B plus 1/64 for the double-quantized block scales; the embeddings (and an
            untied output head) stay bf16; adapters, gradients and AdamW as lora

Sharded over N processes (`strategy: fsdp`, train/sharded.py), a process keeps 1/N of the weights, gradients and
AdamW moments, plus the weights FSDP gathers in full while it computes: two decoder layers (the one computing
and the next, prefetched) or the embeddings and head, whichever is larger.

Activations kept per token and layer, in elements of the compute dtype (2 bytes bf16, 4 fp32), for a decoder
layer with hidden size h, key/value width kv and MLP width i (Korthikanti et al. 2022, without dropout, with an
attention that keeps no L x L scores: per-example, SDPA's flash kernel or flash-attention):

    2h (the two norms' inputs) + h (the normed input the q, k, v projections share) + h + 2kv (q, k, v)
    + h (the attention output the o projection reads) + h (the MLP's normed input) + 3i (gate, up, their product)
    = 6h + 2kv + 3i

SmolLM2-135M (h 576, kv 192, i 1536) gives 8,448 elements: 33.8 KB per token in fp32, the figure measured for
tunewise's CPU training (train/config.py). With gradient checkpointing a layer keeps only its input (h) and one
layer's whole set is rebuilt at a time. The vocabulary projection adds, without the chunked loss of the CPU
kernels, the trained positions' logits in fp32 and their gradient: 8 bytes x vocab per token.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError

GB = 1e9
# NF4 stores 4 bits per weight and one fp32 scale per block of 64; double quantization stores those scales in
# 8 bits with one fp32 scale per 256 of them: 0.5 + (1 + 4/256) / 64 bytes per weight.
NF4_BYTES = 0.5 + (1 + 4 / 256) / 64
# What a process holds besides the model: the Python interpreter and torch's libraries on a CPU; the CUDA context
# and kernels on a GPU (measured about 0.5 GB for torch 2.x on an H100; an estimate, not a bound).
RUNTIME_GB = {"cpu": 0.4, "cuda": 0.6}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a causal LM's config.json."""

    params: int
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    kv_width: int  # key/value heads x head dim
    embedding_params: int  # the input embedding, plus the output head when it is not tied
    q_width: int = (
        0  # query heads x head dim (0: the hidden size, as in most families; Qwen3 and Gemma differ)
    )

    @property
    def attention_width(self) -> int:
        return self.q_width or self.hidden

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """Read the fields every Llama-like config has (Llama, Qwen2/3, Mistral, Gemma, Phi-3); text configs
        nested under `text_config` (Gemma 3) are read there.

        >>> shape = ModelShape.from_config({"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
        ...     "vocab_size": 1000, "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": True})
        >>> shape.params, shape.kv_width, shape.embedding_params
        (138048, 32, 64000)
        >>> ModelShape.from_config({"hidden_size": 1024, "num_hidden_layers": 28, "intermediate_size": 3072,
        ...     "vocab_size": 151936, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        ...     "tie_word_embeddings": True, "model_type": "qwen3"}).params  # Qwen3-0.6B, as transformers counts it
        596049920
        """
        config = config.get("text_config") or config
        h = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        inter = int(config.get("intermediate_size") or 4 * h)
        vocab = int(config["vocab_size"])
        heads = int(config.get("num_attention_heads") or 1)
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or h // heads)
        tied = bool(config.get("tie_word_embeddings", False))
        kind = str(config.get("model_type", ""))
        # Norms: two of h per layer; Gemma 2 and 3 four; Qwen3 and Gemma 3 also norm q and k (head_dim each).
        norms = (4 if kind.startswith(("gemma2", "gemma3")) else 2) * h
        norms += 2 * head_dim if kind.startswith(("qwen3", "gemma3")) else 0
        # q and o: h x heads*head_dim each; k and v: h x kv; gate, up, down: h x i each.
        per_layer = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim + 3 * h * inter + norms
        if kind.startswith("qwen2") or config.get("attention_bias"):  # biases on q, k, v (and o for Llama's)
            per_layer += (
                heads * head_dim + 2 * kv_heads * head_dim + (h if config.get("attention_bias") else 0)
            )
        embeddings = vocab * h * (1 if tied else 2)
        params = layers * per_layer + embeddings + h  # the final norm
        return cls(params, h, layers, inter, vocab, kv_heads * head_dim, embeddings, heads * head_dim)

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelShape:
        return cls.from_config(json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")))


def lora_params(shape: ModelShape, rank: int) -> int:
    """Trainable parameters of rank-`rank` adapters on every linear layer of the decoder (peft's all-linear:
    q, k, v, o, gate, up, down), r x (in + out) each.

    >>> lora_params(ModelShape(0, 576, 30, 1536, 49152, 192, 0), 8)  # SmolLM2-135M at rank 8, as peft counts
    2442240
    """
    h, kv, i, q_width = shape.hidden, shape.kv_width, shape.intermediate, shape.attention_width
    per_layer = (h + q_width) + 2 * (h + kv) + (q_width + h) + 2 * (h + i) + (i + h)
    return shape.layers * rank * per_layer


def activation_bytes_per_token(shape: ModelShape, dtype_bytes: int, checkpointing: bool) -> float:
    """Bytes one token's activations hold for the backward pass across the decoder.

    >>> activation_bytes_per_token(ModelShape(0, 576, 30, 1536, 49152, 192, 0), 4, False) / 30  # SmolLM2 fp32
    33792.0
    >>> activation_bytes_per_token(ModelShape(0, 576, 30, 1536, 49152, 192, 0), 2, True)  # 30 inputs + 1 layer
    51456.0
    """
    per_layer = 4 * shape.hidden + 2 * shape.attention_width + 2 * shape.kv_width + 3 * shape.intermediate
    if checkpointing:
        return float((shape.layers * shape.hidden + per_layer) * dtype_bytes)
    return float(shape.layers * per_layer * dtype_bytes)


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts of a run's peak memory, in GB, and what the device has."""

    device: str
    method: str
    dtype: str
    micro_batch_tokens: int
    micro_batches_at_once: int
    gradient_checkpointing: bool
    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float  # all micro-batches in flight
    runtime_gb: float
    available_gb: float | None
    shards: int = 1  # processes the weights, gradients and moments are split over (strategy fsdp)

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.gradients_gb + self.optimizer_gb + self.activations_gb + self.runtime_gb

    @property
    def fits(self) -> bool:
        return self.available_gb is None or self.total_gb <= self.available_gb

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_gb": round(self.total_gb, 3), "fits": self.fits}

    def describe(self) -> str:
        """One line per part, as the dry run prints it."""
        act = (
            f"activations {self.activations_gb:.2f} ({self.micro_batches_at_once} x {self.micro_batch_tokens} "
            f"tokens in {self.dtype}{', gradient checkpointing' if self.gradient_checkpointing else ''})"
        )
        parts = (
            f"weights {self.weights_gb:.2f} + gradients {self.gradients_gb:.2f} + AdamW {self.optimizer_gb:.2f} "
            f"+ {act} + runtime {self.runtime_gb:.2f}"
        )
        room = f" of {self.available_gb:.2f} GB available" if self.available_gb is not None else ""
        where = f", per process, sharded over {self.shards}" if self.shards > 1 else ""
        return (
            f"memory estimate ({self.device}, {self.method}{where}): {self.total_gb:.2f} GB{room} = {parts}"
        )


def estimate(
    shape: ModelShape, method: str, device: str, dtype: str, micro_batch_tokens: int, *,
    lora_rank: int | None = None, micro_batches_at_once: int = 1, checkpointing: bool = False,
    chunked_loss: bool = False, available_gb: float | None = None, bf16_base: bool | None = None,
    shards: int = 1,
) -> MemoryEstimate:  # fmt: skip
    """The memory a run needs (module docstring: the formulas), per process when sharded over `shards`.
    `bf16_base`: whether a LoRA base is stored in bf16 (default: when the run computes in bf16; a CPU run
    without the kernels autocasts an fp32 base).

    >>> shape = ModelShape(1_000_000_000, 2048, 16, 8192, 128_000, 512, 262_144_000)
    >>> e = estimate(shape, "full", "cuda", "bfloat16", 4096)
    >>> round(e.weights_gb, 1), round(e.gradients_gb, 1), round(e.optimizer_gb, 1)
    (4.0, 4.0, 8.0)
    >>> e = estimate(shape, "full", "cuda", "bfloat16", 4096, shards=8)  # + the embeddings gathered: 1.05 GB
    >>> round(e.weights_gb, 2), round(e.gradients_gb, 2), round(e.optimizer_gb, 2)
    (1.55, 0.5, 1.0)
    """
    dtype_bytes = 2 if dtype == "bfloat16" else 4
    if method == "full":
        trainable = shape.params
        weights = 4.0 * shape.params
    else:
        if lora_rank is None:
            raise ValueError("a LoRA estimate needs the rank")
        trainable = lora_params(shape, lora_rank)
        if method == "qlora":
            weights = NF4_BYTES * (shape.params - shape.embedding_params) + 2.0 * shape.embedding_params
        else:
            bf16 = dtype == "bfloat16" if bf16_base is None else bf16_base
            weights = (2.0 if bf16 else 4.0) * shape.params
        weights += 4.0 * trainable  # the adapters stay fp32
    per_token = activation_bytes_per_token(shape, dtype_bytes, checkpointing)
    if not chunked_loss:
        per_token += 8.0 * shape.vocab  # fp32 logits of a trained position and their gradient
    activations = per_token * micro_batch_tokens * micro_batches_at_once
    gradients, optimizer = 4.0 * trainable, 8.0 * trainable
    if shards > 1:
        per_param = weights / shape.params  # bytes a weight takes, adapters included
        layer = (shape.params - shape.embedding_params) / shape.layers
        gathered = per_param * max(2 * layer, shape.embedding_params)
        weights, gradients, optimizer = weights / shards + gathered, gradients / shards, optimizer / shards
    return MemoryEstimate(
        device=device, method=method, dtype=dtype, micro_batch_tokens=micro_batch_tokens,
        micro_batches_at_once=micro_batches_at_once, gradient_checkpointing=checkpointing,
        weights_gb=weights / GB, gradients_gb=gradients / GB, optimizer_gb=optimizer / GB,
        activations_gb=activations / GB, runtime_gb=RUNTIME_GB.get(device, 0.4), available_gb=available_gb,
        shards=shards,
    )  # fmt: skip


def available_gb(device: str) -> float | None:
    """Memory free for a run on `device` now: CUDA's free memory on the current GPU, else the OS's
    MemAvailable (what can be had without swapping); None where neither can be read."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info()
        return free / GB
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(memory: MemoryEstimate) -> None:
    """Refuse a plan whose estimate exceeds what the device has, with the numbers and the ways down."""
    if memory.fits:
        return
    ways = []
    if memory.method == "full":
        ways.append("method: lora (adapters: no gradients or AdamW moments for the base)")
    if memory.method == "lora" and memory.device == "cuda":
        ways.append("method: qlora (a 4-bit base)")
    if not memory.gradient_checkpointing:
        ways.append("gradient_checkpointing: on")
    ways.append(f"a smaller micro_batch_tokens (now {memory.micro_batch_tokens})")
    raise TunewiseError(
        f"the run does not fit: {memory.describe()}",
        hint="try " + "; or ".join(ways) + "; or a smaller base model",
    )
