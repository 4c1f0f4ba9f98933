"""A LoRA linear layer's forward pass in one in-place matrix multiply-add instead of three new tensors.

PEFT computes `result = base(x) + lora_B(lora_A(x)) * scaling`: the B projection, its scaled copy and the sum
are three (tokens x out_features) tensors, allocated and freed in every LoRA layer of every micro-batch. On a
CPU that churn costs time and, through heap fragmentation, resident memory. Here the low-rank update is added
into the base output in place, `result.addmm_(lora_A(x), B.T, alpha=scaling)`: the same arithmetic and the
same gradients (the base projection's backward pass does not need its output, so updating it in place is
safe), with no temporaries. tests/test_train_fused.py compares outputs and gradients with PEFT's own forward.

Anything but the plain case (merged or disabled adapters, several active adapters, DoRA and other variants,
autocast, extra arguments, input in another dtype than the base weights) goes through PEFT's forward unchanged.
"""

from __future__ import annotations

import types
from typing import Any


def _fused_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch
    import torch.nn.functional as F

    active = self.active_adapters
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or len(active) != 1
        or active[0] not in self.lora_A
        or active[0] in self.lora_variant
        or self.lora_B[active[0]].bias is not None  # PEFT's lora_bias option
        or torch.is_autocast_enabled(x.device.type)
        or x.dtype != self.base_layer.weight.dtype
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = active[0]
    result = self.base_layer(x)
    # The adapter's products run in the activations' dtype: with a bf16 base (train/mixed.py) the fp32 factors
    # are cast, as autocast would cast them, and their gradients flow back to the fp32 factors through the casts.
    down = F.linear(self.lora_dropout[name](x), self.lora_A[name].weight.to(x.dtype))
    up = self.lora_B[name].weight.to(x.dtype).t()
    result.view(-1, result.shape[-1]).addmm_(down.reshape(-1, down.shape[-1]), up, alpha=self.scaling[name])
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
