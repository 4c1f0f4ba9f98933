"""Attention for packed rows that costs what the examples cost, not what the row costs.

transformers handles a packed row (position ids restarting at 0 per example, no attention mask) by building
a block-diagonal L x L mask and running SDPA over the whole row: correct, but the work is quadratic in the
row length L. With 1,024-token rows of ~250-token examples, three quarters of the score matrix is masked
away, and attention grows from ~8% to ~34% of the FLOPs of a SmolLM2 layer (4*L*d per token vs 7M for the
linear layers). This implementation finds the example boundaries from the position ids and runs causal SDPA
on each example separately: exactly the same result (tests/test_train_data.py compares against each example
run alone), with attention work proportional to the sum of squared example lengths.

Registered with transformers under the name `tunewise_packed`; a model switches to it with
`use_packed_attention(model)` and back with `use_packed_attention(model, False)` before saving.
"""

from __future__ import annotations

from typing import Any

NAME = "tunewise_packed"
_registered = False


def _packed_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """query (B, Hq, L, D), key/value (B, Hkv, L, D) -> output (B, L, Hq, D), as transformers expects."""
    import torch
    import torch.nn.functional as F

    gqa = query.shape[1] != key.shape[1]
    position_ids = kwargs.get("position_ids")
    if (
        attention_mask is not None
        or position_ids is None
        or query.shape[0] != 1
        or query.shape[2] != key.shape[2]
    ):
        # Not a packed training row (padding mask, a KV cache, several rows): plain SDPA with the mask given.
        causal = attention_mask is None and query.shape[2] == key.shape[2] and query.shape[2] > 1
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=causal,
            enable_gqa=gqa,
        )  # fmt: skip
        return out.transpose(1, 2).contiguous(), None
    length = query.shape[2]
    starts = (position_ids.reshape(-1)[:length] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    bounds = list(zip(starts, [*starts[1:], length], strict=True))
    if query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float32) and dropout == 0.0:
        return _flash_per_example(query, key, value, bounds, scaling), None
    pieces = [
        F.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            dropout_p=dropout,
            scale=scaling,
            is_causal=e - s > 1,
            enable_gqa=gqa,
        )  # fmt: skip
        for s, e in bounds
    ]
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
    return out.transpose(1, 2).contiguous(), None


def _flash_per_example(query: Any, key: Any, value: Any, bounds: list[tuple[int, int]], scale: Any) -> Any:
    """Causal attention of bf16 or fp32 (1, H, L, D) rows over the examples `bounds`; returns the (1, L, Hq, D)
    output in the input's dtype, the layout the o projection reads.

    One autograd step keeps q, k, a copy of v (not the qkv tensor it is a view of) and its own output, which
    the o projection keeps anyway; per-example SDPA calls would keep their outputs and the o projection a
    concatenated, transposed copy besides (fp32: 27 MB less at the peak of a 48-example run with two
    micro-batch workers).

    bf16 rows: the forward pass runs torch's bf16 kernel, the backward pass its fp32 kernel on the kept bf16
    tensors cast to fp32. On the AMX Xeon, at 275 tokens (9 query heads, 3 key/value heads), the bf16 forward
    took 373 us against 736 us for fp32 with the casts, but the bf16 backward 3.0 ms against 2.1 ms. Against
    fp32 throughout, the bf16 forward measured 1.032x and 1.021x per LoRA step (16 and 24 bitext_reply
    examples, alternating in one process; the training bench's whole bf16 run took 139.9 s both ways, within
    its noise), and the step's adapter gradients stayed as close to an all-fp32 step's (3.74% relative error in
    both). Its output is fp32 attention's to bf16 rounding (tests/test_train_data.py). Cast outside autograd,
    SDPA would keep fp32 copies of q, k, v and its output for the backward pass: 2.4x the bytes of the bf16
    tensors, 6.1 of the ~18 KB a SmolLM2 layer keeps per token. The output's rounding to bf16 also enters the
    backward pass's sum(dO * O), as in GPU flash attention.
    """
    global _function
    if _function is None:
        _function = _make_function()
    return _function.apply(query, key, value.contiguous(), bounds, scale)


_function: Any = None


def _make_function() -> Any:
    import torch

    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

    class FlashPerExample(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, query: Any, key: Any, value: Any, bounds: Any, scale: Any) -> Any:
            batch, heads, length, dim = query.shape
            out = query.new_empty(batch, length, heads, dim)  # the layout the o projection reads
            lse = query.new_empty(batch, heads, length, dtype=torch.float32)
            for s, e in bounds:
                piece, lse[:, :, s:e] = flash(
                    query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=e - s > 1, scale=scale
                )
                out[:, s:e] = piece.transpose(1, 2)
            ctx.save_for_backward(query, key, value, out, lse)
            ctx.bounds, ctx.scale = bounds, scale
            return out

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, ...]:
            query, key, value, out, lse = ctx.saved_tensors
            grads = [torch.empty_like(t) for t in (query, key, value)]
            out = out.transpose(1, 2)  # (1, H, L, D), as the flash functions take it
            grad = grad.transpose(1, 2)
            for s, e in ctx.bounds:
                pieces = flash_backward(
                    grad[:, :, s:e].float(), query[:, :, s:e].float(), key[:, :, s:e].float(),
                    value[:, :, s:e].float(), out[:, :, s:e].float(), lse[:, :, s:e].contiguous(), 0.0, e - s > 1,
                    scale=ctx.scale,
                )  # fmt: skip
                for target, piece in zip(grads, pieces, strict=True):
                    target[:, :, s:e] = piece
            return *grads, None, None

    return FlashPerExample


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The mask builder for this implementation: none is needed, so none is built (no L x L tensor)."""
    return None


def register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, _packed_sdpa)
    AttentionMaskInterface.register(NAME, _no_mask)
    _registered = True


def use_packed_attention(model: Any, enabled: bool = True) -> None:
    """Switch a (possibly PEFT-wrapped) transformers model to per-example attention over packed rows, or back."""
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    plain = "sdpa" if getattr(base, "_supports_sdpa", True) else "eager"  # Gemma 2 has no SDPA path
    base.set_attn_implementation(NAME if enabled else plain)
