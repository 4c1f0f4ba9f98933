"""A step's gradient from its micro-batches, two at a time: one worker thread per micro-batch on a CPU.

A SmolLM2-135M micro-batch is a few hundred tokens. Its large products use two cores well, but about 40% of
its time goes to small operations (element-wise steps, LoRA's rank-8 products, attention over one example)
that gain little from a second core and pay for the hand-over every time. Two micro-batches computed at once,
each on one core, keep both cores busy with their own work. Measured on the 2-core AMX Xeon, forward+backward
over the same 32 bitext_reply examples, the two ways alternating in one process: fp32 327 -> 382 tokens/s
(1.17x), LoRA with a bf16 base 555 -> 610 tokens/s (1.10x). In bench/train_throughput.py's whole runs (256
examples), fp32 243 -> 195 s, bf16 163 -> 160 s; on the demo's short examples fp32 1.12x, bf16 0.95x. So
`auto` runs two at a time in fp32 only (`workers_for`).

The gradient is the same sum as one thread's: each micro-batch's gradient is computed on its own
(`torch.autograd.grad`, not accumulated by `backward()` from two threads at once, whose order would vary),
and the main thread adds them to `.grad` in micro-batch order, as sequential `backward()` calls would. Which
worker computed which micro-batch does not matter, so a run is as deterministic as before. The price is two
micro-batches' activations in memory at once, and one gradient-sized tensor per micro-batch in flight: for
LoRA, a few MB. Full fine-tuning, whose gradient is the size of the model, and GPUs keep one at a time
(`workers_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

Batch = TypeVar("Batch")
Result = TypeVar("Result")


def workers_for(
    requested: int | str, method: str, device: str, threads: int, randomness: bool, dtype: str
) -> int:
    """How many micro-batches run at once: `requested`, or for "auto" 2 where it pays and is exact.

    auto is 2 only for LoRA computing in fp32 on a CPU with two or more threads and no dropout, else 1:
    - on a GPU one micro-batch fills the device;
    - full fine-tuning's gradient per micro-batch would be the size of the model;
    - dropout: two threads drawing from one random generator would draw in a varying order;
    - a bf16 base: its AMX products are large enough to share two cores, and two at once measured 1.10x on
      bitext_reply's ~260-token examples (three per 768-token micro-batch), 1.02x in the training bench's
      whole run, and 0.95x on the demo's ~130-token examples (alternating in one process), against fp32's
      1.17x, 1.25x and 1.12x.
    """
    if requested != "auto":
        return int(requested)
    if device != "cpu" or method != "lora" or threads < 2 or randomness or dtype != "float32":
        return 1
    return 2


def draws_random_numbers(model: Any) -> bool:
    """Whether a training forward pass of `model` uses dropout anywhere (a module's or attention's)."""
    import torch.nn as nn

    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return True
    configs = [getattr(m, "config", None) for m in model.modules()]
    return any(getattr(c, "attention_dropout", 0) or 0 for c in configs if c is not None)


class MicroBatchWorkers:
    """Threads that each compute whole micro-batches, `threads // workers` intra-op threads apiece.

    Made before the model exists and `configure`d once it does; the threads start on first use, and `close()`
    ends them. `gradient()` does one step's micro-batches."""

    def __init__(self) -> None:
        self.workers = 1
        self.per_worker = 1
        self._pool: ThreadPoolExecutor | None = None

    def configure(self, workers: int, threads: int) -> None:
        if (workers, max(1, threads // workers)) == (self.workers, self.per_worker):
            return
        self.close()
        self.workers = workers
        self.per_worker = max(1, threads // workers)

    def close(self, wait: bool = True) -> None:
        """End the threads. `wait=False` (a run stopping on an error or an interrupt) drops the micro-batches not
        started and returns without waiting for those in flight: their results are not needed, and on a large
        model one can take longer than a job runner's grace period after SIGTERM, which must be spent recording
        where the run stopped. Python joins the threads at exit."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=not wait)
            self._pool = None

    def _started(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="tunewise-micro-batch")
        return self._pool

    @contextmanager
    def _threads_per_worker(self) -> Iterator[None]:
        """torch's thread count is the process's, not a thread's: lowered while the workers compute (the main
        thread only waits then), restored for the optimizer step and everything else."""
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.per_worker)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def map(self, fn: Callable[[Batch], Result], batches: Sequence[Batch]) -> list[Result]:
        """`[fn(b) for b in batches]`, the workers computing several at once. `fn` runs in the workers' threads,
        so it must set up the thread-local state it needs itself (`torch.no_grad()`, autocast)."""
        if self.workers == 1 or len(batches) <= 1:
            return [fn(batch) for batch in batches]
        with self._threads_per_worker():
            return list(self._started().map(fn, batches))

    def gradient(
        self, loss_of: Callable[[Batch], Any], batches: Sequence[Batch], params: list[Any], divisor: float
    ) -> Any:
        """Add the gradient of `sum(loss_of(b) for b in batches) / divisor` to `params`' `.grad` (set where
        None) and return the summed loss as a float64 scalar tensor (detached)."""
        import torch

        total = torch.zeros((), dtype=torch.float64)
        if self.workers == 1 or len(batches) == 1:
            for batch in batches:
                loss = loss_of(batch)
                (loss / divisor).backward()
                total += loss.detach().double()
            return total

        def one(batch: Batch) -> tuple[Any, tuple[Any, ...]]:
            loss = loss_of(batch)
            grads = torch.autograd.grad(loss / divisor, params, allow_unused=True)
            return loss.detach(), grads

        with self._threads_per_worker():
            # map() hands out micro-batches in order and yields results in order, whichever worker finishes
            # first; the sums below therefore run in micro-batch order, as sequential backward() calls do.
            for loss, grads in self._started().map(one, batches):
                for p, g in zip(params, grads, strict=True):
                    if g is None:
                        continue
                    if p.grad is None:
                        p.grad = g
                    else:
                        p.grad.add_(g)
                total += loss.double()
        return total
