"""A LoRA linear layer's forward pass in one in-place matrix multiply-add instead of three new tensors.

PEFT computes `result = base(x) + lora_B(lora_A(x)) * scaling`: the B projection, its scaled copy and the sum
are three (tokens x out_features) tensors, allocated and freed in every LoRA layer of every micro-batch. On a
CPU that churn costs time and, through heap fragmentation, resident memory. Here the low-rank update is added
into the base output in place, `result.addmm_(lora_A(x), B.T, alpha=scaling)`: the same arithmetic and the
same gradients (the base projection's backward pass does not need its output, so updating it in place is
safe), with no temporaries. tests/test_train_fused.py compares outputs and gradients with PEFT's own forward.

Anything but the plain case (merged or disabled adapters, several active adapters, DoRA and other variants,
autocast, extra arguments) goes through PEFT's forward unchanged.
"""

from __future__ import annotations

import types
from typing import Any


def _fused_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch

    active = self.active_adapters
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or len(active) != 1
        or active[0] not in self.lora_A
        or active[0] in self.lora_variant
        or torch.is_autocast_enabled(x.device.type)
        or self.base_layer.weight.dtype != self.lora_B[active[0]].weight.dtype
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    result = self.base_layer(x)
    down = self.lora_A[name](self.lora_dropout[name](x.to(self.lora_A[name].weight.dtype)))
    flat = result.view(-1, result.shape[-1])
    flat.addmm_(down.reshape(-1, down.shape[-1]), self.lora_B[name].weight.t(), alpha=self.scaling[name])
    return result


def use_fused_lora(model: Any) -> int:
    """Give every PEFT LoRA linear layer of `model` the fused forward; returns how many layers got it."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear:  # exactly PEFT's Linear: subclasses (quantized layers) keep their own
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
