"""LoRA linear layers as one autograd step each: no temporaries in the forward pass, one node in the backward.

PEFT computes `result = base(x) + lora_B(lora_A(x)) * scaling`: the B projection, its scaled copy and the sum
are three (tokens x out_features) tensors, allocated and freed in every LoRA layer of every micro-batch, and
autograd records about eight nodes per layer (products, transposes, views, the scaling). On a CPU both cost
time. Here one autograd function does it: the forward adds the low-rank update into the base output in place
(`out.addmm_(x @ A.T, B.T)`), the backward computes the input gradient the same way
(`(g @ W).addmm_(g @ B, A)`) and the two factors' gradients, and records nothing else.

The same function serves projections that read the same input (a layer's q, k and v; an MLP's gate and up):
their frozen weights are kept as row slices of one tensor (`joined_weight`), their A factors stacked and their B
factors placed on a block diagonal, so that one product of each kind replaces three (or two), and the input
gradient comes out of one product instead of being summed from six. A gated MLP's down projection is the same
function applied to `silu(gate) * up`, computed inside it (`gated_lora_linear`). train/layers.py builds the
layer forwards that use them; tests/test_train_fused.py compares outputs and gradients with PEFT's own forward.

Anything but the plain case (merged or disabled adapters, several active adapters, DoRA and other variants,
active dropout, autocast, extra arguments, input in another dtype than the base weights) goes through PEFT's
forward unchanged.
"""

from __future__ import annotations

import types
from typing import Any

# The autograd.Functions, built on first use so that importing this module does not import torch.
_functions: dict[str, Any] = {}


def lora_linear(x: Any, weight: Any, a: Any, b: Any) -> Any:
    """`x @ weight.T + (x @ a.T) @ b.T` for 2-D `x` (tokens, in); `weight` frozen, `b` already scaled.

    Gradients flow to `x`, `a` and `b` (whichever require one), never to `weight`.
    """
    if not _functions:
        _functions.update(_make_functions())
    return _functions["linear"].apply(x, weight, a, b)


def gated_lora_linear(gate_up: Any, weight: Any, a: Any, b: Any) -> Any:
    """`lora_linear(silu(gate) * up, weight, a, b)` for 2-D `gate_up` holding gate then up (tokens, 2 x width):
    a gated MLP's down projection, which keeps `gate_up` for its backward pass and recomputes the gated product
    there instead of keeping it too (one (tokens, width) tensor per layer less: 14% of what a SmolLM2 layer
    keeps per token, which is what lets a micro-batch hold more tokens in the same memory)."""
    if not _functions:
        _functions.update(_make_functions())
    return _functions["gated"].apply(gate_up, weight, a, b)


def _make_functions() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from tunewise.train.swiglu import silu_mul_grads

    def project(x: Any, weight: Any, a: Any, b: Any) -> tuple[Any, Any]:
        """The output, and x @ a.T (tokens, rank): all the backward pass needs besides x."""
        out = x @ weight.t()
        down = x @ a.t()
        out.addmm_(down, b.t())
        return out, down

    def project_grads(
        ctx: Any, grad: Any, x_of: Any, down: Any, weight: Any, a: Any, b: Any
    ) -> tuple[Any, ...]:
        """The gradients of `project`'s x, a and b (None where not needed); `x_of()` gives x, only when needed.
        a's comes first, so that a recomputed x is freed before x's gradient is allocated."""
        need_x, _, need_a, need_b = ctx.needs_input_grad
        grad_down = grad @ b  # (tokens, rank)
        grad_a = grad_down.t() @ x_of() if need_a else None
        grad_b = grad.t() @ down if need_b else None
        grad_x = torch.mm(grad, weight).addmm_(grad_down, a) if need_x else None
        return grad_x, grad_a, grad_b

    class LoraLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, a: Any, b: Any) -> Any:
            out, down = project(x, weight, a, b)
            ctx.save_for_backward(x, down, weight, a, b)
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, ...]:
            x, down, weight, a, b = ctx.saved_tensors
            grad_x, grad_a, grad_b = project_grads(ctx, grad, lambda: x, down, weight, a, b)
            return grad_x, None, grad_a, grad_b

    def gated(gate_up: Any) -> Any:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)

    class GatedLoraLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, gate_up: Any, weight: Any, a: Any, b: Any) -> Any:
            out, down = project(gated(gate_up), weight, a, b)
            ctx.save_for_backward(gate_up, down, weight, a, b)  # not the gated product: recomputed
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, ...]:
            gate_up, down, weight, a, b = ctx.saved_tensors
            gate, up = gate_up.chunk(2, dim=-1)
            # silu(gate) once, for the recomputed input of the product and for up's gradient
            silu_gate = F.silu(gate)
            grad_h, grad_a, grad_b = project_grads(ctx, grad, lambda: silu_gate * up, down, weight, a, b)
            grad_gate_up = None
            if grad_h is not None:
                grad_gate_up = torch.empty_like(gate_up)
                silu_mul_grads(gate, up, grad_h, *grad_gate_up.chunk(2, dim=-1), silu_gate=silu_gate)
            return grad_gate_up, None, grad_a, grad_b

    return {"linear": LoraLinear, "gated": GatedLoraLinear}


def plain_adapter(module: Any, x: Any) -> str | None:
    """The name of `module`'s one active adapter when the fused path computes exactly what PEFT would, else None."""
    import torch
    import torch.nn as nn

    active = module.active_adapters
    if (
        module.disable_adapters
        or module.merged
        or len(active) != 1
        or active[0] not in module.lora_A
        or active[0] in module.lora_variant  # DoRA and other variants
        or module.lora_B[active[0]].bias is not None  # PEFT's lora_bias option
        or module.base_layer.bias is not None
        or module.base_layer.weight.requires_grad
        or not (isinstance(module.lora_dropout[active[0]], nn.Identity) or not module.training)
        or torch.is_autocast_enabled(x.device.type)
        or x.dtype != module.base_layer.weight.dtype
    ):
        return None
    return active[0]


def factors(modules: list[Any], names: list[str], dtype: Any) -> tuple[Any, Any]:
    """(stacked A, block-diagonal scaled B) of LoRA layers that read the same input, in `dtype`.

    With a bf16 base (train/mixed.py) the fp32 factors are cast, as autocast would cast them, and their
    gradients flow back to the fp32 factors through the casts.
    """
    import torch

    a = [m.lora_A[n].weight for m, n in zip(modules, names, strict=True)]
    b = [m.lora_B[n].weight * m.scaling[n] for m, n in zip(modules, names, strict=True)]
    if len(modules) == 1:
        return a[0].to(dtype), b[0].to(dtype)
    return torch.cat(a).to(dtype), torch.block_diag(*b).to(dtype)


def joined_weight(modules: list[Any]) -> Any:
    """The frozen base weights of `modules` as one (sum of out_features, in_features) tensor, without a copy.

    The first call stacks them and points each module's weight at its row slice of the result, so the weights
    live once in memory and later calls only view them together. train/mixed.py converts stacked weights
    together, so a dtype change keeps them stacked; weights replaced some other way are found apart and
    stacked again. Nothing is cached: the modules' own weights are the only reference.
    """
    import torch

    weights = [m.base_layer.weight.detach() for m in modules]
    first = weights[0]
    if len(weights) == 1:
        return first
    rows = sum(w.shape[0] for w in weights)
    offset, adjacent = first.storage_offset(), True
    for w in weights:
        adjacent = adjacent and (
            w.is_contiguous()
            and w.dtype == first.dtype
            and w.shape[1:] == first.shape[1:]
            and w.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
            and w.storage_offset() == offset
        )
        offset += w.numel()
    if adjacent:
        return first.as_strided((rows, first.shape[1]), (first.shape[1], 1), first.storage_offset())
    joined = torch.cat(weights)
    start = 0
    for module, w in zip(modules, weights, strict=True):
        module.base_layer.weight.data = joined[start : start + w.shape[0]]
        start += w.shape[0]
    return joined


def lora_project(x: Any, modules: list[Any], names: list[str]) -> Any:
    """The outputs of LoRA layers `modules` (active adapters `names`) that read 2-D `x`, side by side:
    one `lora_linear` over their stacked weights and factors."""
    a, b = factors(modules, names, x.dtype)
    return lora_linear(x, joined_weight(modules), a, b)


def gated_lora_project(gate_up: Any, module: Any, name: str) -> Any:
    """The output of LoRA layer `module` (active adapter `name`) on `silu(gate) * up`, from 2-D `gate_up`."""
    a, b = factors([module], [name], gate_up.dtype)
    return gated_lora_linear(gate_up, joined_weight([module]), a, b)


def _fused_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    name = None if args or kwargs else plain_adapter(self, x)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    out = lora_project(x.reshape(-1, x.shape[-1]), [self], [name])
    return out.view(*x.shape[:-1], out.shape[-1])


def use_fused_lora(model: Any) -> int:
    """Give every PEFT LoRA linear layer of `model` the fused forward; returns how many layers got it."""
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear:  # exactly PEFT's Linear: subclasses (quantized layers) keep their own
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
