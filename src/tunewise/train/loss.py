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

import threading
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
# The reusable logits buffers, one set per process, used by one chunk at a time: a training step's two
# micro-batch workers (train/workers.py), or a server's threads, take turns through `_lock` rather than
# holding a 50 MB buffer each. The vocabulary projection is a tenth of a step, so the turns rarely wait.
_lock = threading.Lock()
_buffers: dict[Any, Any] = {}


def _workspace(shape: tuple[int, int], dtype: Any, device: Any) -> Any:
    """A (rows, vocabulary) buffer of `dtype`, grown when a call needs more rows and reused otherwise; only
    while holding `_lock`."""
    import torch

    buffer = _buffers.get(dtype)
    rows, vocab = shape
    if buffer is None or buffer.device != device or buffer.shape[1] != vocab or buffer.shape[0] < rows:
        _buffers.pop(dtype, None)  # the old buffer goes before the new one is allocated
        buffer = _buffers[dtype] = torch.empty((rows, vocab), dtype=dtype, device=device)
    return buffer[:rows]


def release_workspace() -> None:
    """Free the logits buffers (the end of a training run)."""
    with _lock:
        _buffers.clear()


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
            n = t.shape[0]
            # Every step below works in place on buffers kept between calls (fp32 logits, and the products'
            # dtype when it is lower): a fresh 50 MB tensor per chunk cost more in page faults than the
            # arithmetic on it (74 -> 37 ms per 256 x 49,152 chunk in bf16 on the AMX Xeon, with logsumexp
            # and argmax replaced as below).
            with _lock:
                x = _workspace((n, weight.shape[0]), torch.float32, hidden.device)
                low = None if head.dtype == x.dtype else _workspace(x.shape, head.dtype, hidden.device)
                torch.mm(h, head.t(), out=x if low is None else low)
                if low is not None:
                    x.copy_(low)
                peak, best = x.max(-1, keepdim=True)  # one pass for both (argmax alone is slower than max)
                target = x.gather(1, t[:, None])
                total = x.sub_(peak).exp_().sum(-1, keepdim=True)  # x = exp(logits - peak)
                loss += (peak + total.log() - target).sum()  # logsumexp - target logit
                correct += (best.squeeze(1) == t).sum()  # max's index is the first maximal one, as argmax's
                if not (need_hidden or need_weight):
                    continue
                # softmax - onehot = (x - total * onehot) / total: the one-hot part subtracted before the cast, so
                # a confident right answer keeps its small gradient -(1 - p) to the products' precision.
                x[rows[:n], t] -= total.squeeze(1)
                e = x if low is None else low.copy_(x)
                if need_hidden:
                    grad_hidden[start : start + n] = (e @ head).float().div_(total)
                if need_weight:
                    grad_weight += (e.t() @ (h.float() / total).to(head.dtype)).to(weight.dtype)
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
