"""Whether a run uses tunewise's CPU training kernels, and which attention computes its packed rows.

`hyperparameters.kernels` (tunewise.yaml) or `TrainConfig.kernels`:

- `auto` (the default): the kernels run where they are known to help: on a CPU, on the model families they are
  tested on (`TESTED_FAMILIES`, compared with PyTorch in tests/test_train_*.py). They are per-example
  attention over packed rows (train/attention.py), fused LoRA products and Llama layers (fused.py, layers.py,
  swiglu.py), the chunked vocabulary loss (loss.py), a bf16 frozen base under fp32 adapters (mixed.py), two
  micro-batches at once (workers.py) and heap trims (heap.py).
- `off`: plain transformers + PEFT: the model's own forward with transformers' attention for packed rows
  (position ids restarting at 0 per example, no attention mask: a block-diagonal mask under SDPA, variable-
  length sequences under flash-attention), transformers' `logits_to_keep` and `F.cross_entropy` for the loss,
  bf16 through `torch.autocast`, one micro-batch at a time.

On a GPU, `auto` means `off`: the kernels were written and measured for CPUs, and packed attention there is
flash-attention's variable-length kernel (when the flash-attn package is installed and the run computes in
bf16) or SDPA over the block-diagonal mask, never a Python loop over examples. The choice is recorded in the
run's config.json and environment.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tunewise.train.attention import NAME as PACKED_ATTENTION

KERNEL_CHOICES = ("auto", "off")

# transformers' `model_type`s the kernels are tested on (Llama, which SmolLM2 is). Other families run plain.
TESTED_FAMILIES = frozenset({"llama"})


@dataclass(frozen=True)
class KernelChoice:
    """What a run computes with: tunewise's kernels or not, the attention implementation, and why."""

    enabled: bool
    attention: str  # transformers' attn_implementation name while training
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_kernels(
    requested: str, device: str, model_type: str | None, dtype: str = "float32", flash: bool = False
) -> KernelChoice:
    """The kernels and attention of a run on `device` ("cpu" or "cuda") with a model of `model_type`.

    >>> choose_kernels("auto", "cpu", "llama").attention
    'tunewise_packed'
    >>> choose_kernels("off", "cpu", "llama").enabled, choose_kernels("auto", "cpu", "gemma2").attention
    (False, 'sdpa')
    >>> choose_kernels("auto", "cuda", "llama", "bfloat16", flash=True).attention
    'flash_attention_2'
    >>> choose_kernels("auto", "cuda", "llama", "float32", flash=True).attention  # flash needs 16-bit inputs
    'sdpa'
    """
    if requested not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be auto or off (got {requested!r})")
    if requested == "off":
        enabled, reason = False, "kernels: off"
    elif device != "cpu":
        enabled, reason = False, f"auto: tunewise's kernels are for CPUs, this run is on {device}"
    elif model_type not in TESTED_FAMILIES:
        enabled, reason = False, f"auto: not tested on the {model_type} family"
    else:
        enabled, reason = True, f"auto: CPU, {model_type} family"
    return KernelChoice(enabled, attention_for(device, enabled, dtype, flash), reason)


def attention_for(device: str, kernels: bool, dtype: str, flash: bool) -> str:
    """transformers' attention implementation for packed training rows.

    tunewise's per-example attention with the kernels on a CPU; elsewhere transformers' own path:
    flash-attention 2 on CUDA when it is installed (`flash`) and the run computes in 16 bits (it takes no fp32
    inputs), which runs packed rows as variable-length sequences; else SDPA, over the block-diagonal mask
    transformers builds from the restarting position ids.

    >>> attention_for("cpu", True, "bfloat16", False), attention_for("cpu", False, "bfloat16", True)
    ('tunewise_packed', 'sdpa')
    >>> attention_for("cuda", False, "bfloat16", True), attention_for("cuda", False, "bfloat16", False)
    ('flash_attention_2', 'sdpa')
    """
    if kernels and device == "cpu":
        return PACKED_ATTENTION
    if device == "cuda" and flash and dtype in ("bfloat16", "float16"):
        return "flash_attention_2"
    return "sdpa"


def flash_attention_available() -> bool:
    """Whether transformers can run flash-attention 2 here (the flash-attn package and a CUDA device)."""
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def set_attention(model: Any, name: str) -> str:
    """Switch a (possibly PEFT-wrapped) transformers model to attention implementation `name`; returns the one
    set: a family without an SDPA path in transformers (Gemma 2's logit soft-capping) gets its eager attention,
    which handles packed rows the same way (a block-diagonal mask from the restarting position ids)."""
    from tunewise.train.attention import use_packed_attention

    if name == PACKED_ATTENTION:
        use_packed_attention(model)
        return name
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if name == "sdpa" and not getattr(base, "_supports_sdpa", True):
        name = "eager"
    base.set_attn_implementation(name)
    return name


def model_kernels(model: Any) -> KernelChoice | None:
    """The choice a training model was built with (`train.model.build_model` records it), or None for a model
    built elsewhere, which the loss treats as kernels on."""
    return getattr(model, "tunewise_kernels", None)
