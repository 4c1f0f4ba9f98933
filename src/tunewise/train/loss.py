"""Cross-entropy through the vocabulary projection, a chunk of positions at a time, never holding all logits.

The plain path `F.cross_entropy(head(hidden), targets)` materializes T x V logits, keeps their log-softmax
for the backward pass and allocates T x V gradients there: with SmolLM2's 49,152-token vocabulary that is
about 200 KB per trained token per tensor, 0.3-0.4 GB for a 512-token micro-batch, more than a third of the
step's peak memory. Here each chunk's logits are turned into the loss and, right away, into the gradient
with respect to the hidden states (and the head's weight, when it is trained), so only one chunk of logits
exists at a time. The arithmetic is the same: d(sum CE)/d(logits) = softmax(logits) - onehot(targets),
followed by the two matrix products the backward pass of the projection would do.

The gradients are computed in the forward pass, which is right for training (the loss is always
differentiated) and skipped when nothing needs a gradient (evaluation under `torch.no_grad()`).
"""

from __future__ import annotations

from typing import Any

# Positions per chunk: 256 x 49,152 fp32 logits are 50 MB, large enough that the projection runs as an
# efficient matrix multiply, small enough that the loss adds little to a micro-batch's peak memory.
CHUNK = 256


def linear_cross_entropy(hidden: Any, weight: Any, targets: Any, chunk: int = CHUNK) -> tuple[Any, Any]:
    """(summed cross-entropy, number of positions whose argmax is the target) of `hidden @ weight.T`.

    `hidden` (T, H), `weight` (V, H), `targets` (T,). The loss is differentiable with respect to `hidden`
    and `weight` (whichever requires a gradient); the count is not.
    """
    global _function
    if _function is None:
        _function = _make_function()
    return _function.apply(hidden, weight, targets, chunk)


# The autograd.Function, built on first use so that importing this module does not import torch.
_function: Any = None


def _make_function() -> Any:
    import torch

    def chunk_loop(
        hidden: Any, weight: Any, head: Any, targets: Any, chunk: int, need_hidden: bool, need_weight: bool
    ) -> tuple[Any, ...]:
        """Loss, argmax count and gradients; `head` is `weight` in the dtype the products run in."""
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        rows = torch.arange(chunk, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].to(head.dtype)
            t = targets[start : start + chunk]
            logits = (h @ head.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            correct += (logits.argmax(-1) == t).sum()
            if not (need_hidden or need_weight):
                continue
            # In place: logits -> softmax -> softmax - onehot, the gradient of the summed loss.
            probs = logits.sub_(lse[:, None]).exp_()
            probs[rows[: t.shape[0]], t] -= 1.0
            probs = probs.to(head.dtype)
            if need_hidden:
                grad_hidden[start : start + chunk] = probs @ head
            if need_weight:
                grad_weight += (probs.t() @ h).to(weight.dtype)
        return loss, correct, grad_hidden, grad_weight

    class LinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, chunk: int) -> tuple[Any, Any]:
            device = hidden.device.type
            # Under autocast, cast the head once per call rather than once per product (a frozen weight is
            # not in autocast's cache), then run the products in that dtype with autocast out of the way.
            autocast = torch.is_autocast_enabled(device)
            head = weight.to(torch.get_autocast_dtype(device)) if autocast else weight
            with torch.autocast(device, enabled=False):
                loss, correct, grad_hidden, grad_weight = chunk_loop(
                    hidden, weight, head, targets, chunk, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
                )
            ctx.save_for_backward(grad_hidden, grad_weight)
            ctx.mark_non_differentiable(correct)
            return loss, correct

        @staticmethod
        def backward(ctx: Any, grad_loss: Any, _grad_correct: Any) -> tuple[Any, ...]:
            grad_hidden, grad_weight = ctx.saved_tensors
            return (
                grad_hidden * grad_loss if grad_hidden is not None else None,
                grad_weight * grad_loss if grad_weight is not None else None,
                None,
                None,
            )

    return LinearCrossEntropy
