"""How a bf16 decision is applied to the model: a frozen base stored in bf16 for LoRA, autocast for full.

Under `torch.autocast` every matrix product casts its fp32 input to bf16, and a frozen weight is cast again at
every use (autocast caches only the casts of trainable weights). On a CPU the cost is memory as much as time:
each projection that reads a layer's input keeps its own bf16 copy for the backward pass, next to the fp32
activations. For LoRA, where the base is frozen, the same arithmetic is had more cheaply by storing the base
weights in bf16 once: activations are then bf16 end to end (half the memory), no cast is repeated, and the
adapter factors stay fp32 so that AdamW's updates are not rounded away. This is how LoRA is commonly run on
GPUs (a bf16 base, fp32 adapters). The fused LoRA forward (train/fused.py) runs the adapter's two products in
the activations' dtype, as autocast would.

Full fine-tuning trains every weight, and bf16 weights would lose small updates to rounding, so it keeps fp32
weights under autocast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def frozen_base_in_bf16(method: str, dtype: str, kernels: bool = True) -> bool:
    """Whether a run with `method` in precision `dtype` stores its frozen base weights in bf16 (a run without
    tunewise's kernels, train/kernels.py, uses autocast instead)."""
    return kernels and method == "lora" and dtype == "bfloat16"


def autocast_dtype(method: str, dtype: str, kernels: bool = True) -> Any:
    """The dtype `torch.autocast` runs in for this run, or None where no autocast is needed."""
    import torch

    if dtype != "bfloat16" or frozen_base_in_bf16(method, dtype, kernels):
        return None
    return torch.bfloat16


def store_frozen(model: Any, dtype: Any) -> None:
    """Convert every frozen parameter of `model` to `dtype`, in place; trainable ones keep theirs."""
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    for param, data in zip(frozen, converted(frozen, dtype), strict=True):
        param.data = data


def converted(params: list[Any], dtype: Any) -> list[Any]:
    """`params`' data in `dtype`; weights that are slices of one tensor come out as slices of one tensor.

    train/layers.py stacks the weights of projections that read one input into one tensor; converting them one
    by one would scatter them, and the next forward pass would have to stack them again.
    """
    by_storage: dict[int, list[int]] = {}
    for i, param in enumerate(params):
        by_storage.setdefault(param.untyped_storage().data_ptr(), []).append(i)
    out: list[Any] = [None] * len(params)
    for indices in by_storage.values():
        group = [params[i].data for i in indices]
        if len(group) == 1 or not all(t.is_contiguous() for t in group):
            for i, t in zip(indices, group, strict=True):
                out[i] = t.to(dtype)
            continue
        start = min(t.storage_offset() for t in group)
        end = max(t.storage_offset() + t.numel() for t in group)
        whole = group[0].as_strided((end - start,), (1,), start).to(dtype)
        for i, t in zip(indices, group, strict=True):
            offset = t.storage_offset() - start
            out[i] = whole[offset : offset + t.numel()].view(t.shape)
    return out


@contextlib.contextmanager
def frozen_temporarily(model: Any, dtype: Any) -> Iterator[None]:
    """Frozen parameters in `dtype` inside the block, their original tensors restored after it.

    For timing a bf16 step before the precision is decided: restoring the originals (rather than converting
    back) loses nothing, whatever the weights' original precision.
    """
    originals = [(p, p.data) for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    try:
        for (param, _), data in zip(originals, converted([p for p, _ in originals], dtype), strict=True):
            param.data = data
        yield
    finally:
        for param, data in originals:
            param.data = data
