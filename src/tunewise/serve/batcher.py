"""Dynamic batching: concurrent requests are decoded together instead of one at a time.

Requests go into a bounded queue (full: the caller answers 429 with Retry-After). One worker thread owns the
models: it takes the first waiting request, waits up to `batch_wait_s` for companions (a few ms: long enough
for requests that arrive together to meet, short enough not to matter to a lone one), takes up to
`max_batch_size` requests, groups them by model (base or adapter) and decodes each group with one
`LocalEngine.generate` call. Per-request settings (temperature, top_p, seed, stop, max_tokens) travel as
per-row `SamplingParams`, so requests with different settings still share a batch.

Why batching pays on a CPU: a decode step of a 135M model reads every weight once whatever the number of rows,
so 16 rows cost little more than one. Batches are static (a batch runs until its last row ends; requests
arriving meanwhile wait for the next batch), which is simple and enough for a small model; continuous batching
(vLLM) is the tool when that wait matters.

The worker never dies on a failed batch, and one request cannot fail the others: a failed batch is decoded
again in halves until the request that fails is alone (it gets the error), then the next batch runs. A
request whose client went away or timed out is marked `cancelled`; the engine drops its row at the next token
(the `on_token` callback answers True) and the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One chat completion waiting for, or in, a batch. Events for the request handler arrive on `events`:
    ("token", id) while streaming, then ("done", Generation) or ("error", exception)."""

    model: str
    prompt_ids: list[int]
    params: Any  # evaluate.engine.SamplingParams
    loop: asyncio.AbstractEventLoop
    stream: bool = False
    constraint: Any = None  # evaluate.constrain.Constraint (response_format), None: free generation
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set on the event loop (timeout, client gone); read by the worker
    sent: list[int] = field(default_factory=list)  # the tokens streamed so far (worker thread only)

    def emit(self, kind: str, value: Any) -> None:
        """Hand an event to the request's event loop (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down and nobody listens
            pass


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after: int):
        super().__init__(f"{waiting} requests are waiting")
        self.waiting = waiting
        self.retry_after = retry_after


class Stopped(Exception):
    pass


# execute(model, jobs, on_token) -> one Generation per job, in order (runs in the worker thread).
Execute = Callable[[str, list[Job], Callable[[int, int], bool]], list[Any]]


class Batcher:
    def __init__(
        self, execute: Execute, max_batch_size: int = 16, queue_size: int = 64, batch_wait_s: float = 0.005
    ):
        self.execute = execute
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.batch_wait_s = batch_wait_s
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._paused = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Counters, read by tests and the bench: engine calls, requests they served, the largest batch.
        self.batches = 0
        self.requests = 0
        self.largest_batch = 0
        self._batch_seconds = 1.0  # moving average of a batch's duration, for Retry-After

    # --- the request side (event loop thread) ------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise Stopped("the server is shutting down")
            if len(self._queue) >= self.queue_size:
                raise QueueFull(len(self._queue), self.retry_after())
            self._queue.append(job)
            self._cond.notify()

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the batches ahead times a batch's recent duration."""
        ahead = max(1, math.ceil(len(self._queue) / self.max_batch_size))
        return max(1, math.ceil(ahead * self._batch_seconds))

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the worker between batches (requests queue up meanwhile): for draining and for tests."""
        with self._cond:
            self._paused += 1
        try:
            yield
        finally:
            with self._cond:
                self._paused -= 1
                self._cond.notify_all()

    # --- the worker ----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tunewise-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running batch, fail the waiting requests (503), stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            while self._queue:
                self._queue.popleft().emit("error", Stopped("the server is shutting down"))

    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._stopping and (not self._queue or self._paused):
                self._cond.wait()
            if self._stopping:
                return None
            deadline = time.monotonic() + self.batch_wait_s
            while len(self._queue) < self.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            n = min(len(self._queue), self.max_batch_size)
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            groups: dict[str, list[Job]] = {}
            for job in jobs:
                if not job.cancelled:  # timed out or abandoned while waiting: already answered
                    groups.setdefault(job.model, []).append(job)
            for model, group in groups.items():
                self._run_group(model, group)

    def _run_group(self, model: str, jobs: list[Job]) -> None:
        """Decode `jobs` together. If the batch fails, its halves are decoded apart, and so on down to single
        requests: a request that makes decoding fail (a setting validation could not foresee) fails alone,
        at the cost of about 2 log2(batch size) extra engine calls; the others get the answers they would
        have had in a batch without it (each row samples from its own seeded generator)."""
        done: set[int] = set()  # rows answered with an error during this call (a streamed retry diverged)

        def on_token(i: int, token: int) -> bool:
            job = jobs[i]
            if job.cancelled or i in done:
                return True
            if job.stream:
                k = seen[i]
                seen[i] += 1
                if k < len(job.sent):  # a retry replays what the client already has: check, do not resend
                    if job.sent[k] != token:
                        done.add(i)
                        job.emit(
                            "error", RuntimeError("the retried decoding diverged from the streamed tokens")
                        )
                        return True
                    return False
                job.sent.append(token)
                job.emit("token", token)
            return False

        seen = [0] * len(jobs)
        started = time.monotonic()
        try:
            generations = self.execute(model, jobs, on_token)
        except Exception as exc:  # a failed batch fails its requests, never the worker
            live = [job for i, job in enumerate(jobs) if not job.cancelled and i not in done]
            if len(live) > 1:
                log.warning(
                    "batch of %d request(s) for %s failed (%s: %s): decoding its halves apart",
                    len(jobs),
                    model,
                    type(exc).__name__,
                    exc,
                )
                half = len(live) // 2
                self._count(model, len(jobs), started, served=0)  # its requests count where they are answered
                self._run_group(model, live[:half])
                self._run_group(model, live[half:])
                return
            log.exception("batch of %d request(s) for %s failed", len(jobs), model)
            self._count(model, len(jobs), started)  # before the answers: a client may read the counters next
            for job in live:
                job.emit("error", exc)
            return
        self._count(model, len(jobs), started)
        for i, (job, generation) in enumerate(zip(jobs, generations, strict=True)):
            if i not in done:
                job.emit("done", generation)

    def _count(self, model: str, size: int, started: float, served: int | None = None) -> None:
        """One engine call of `size` rows: the counters and the moving average of a batch's time."""
        self.batches += 1
        self.requests += size if served is None else served
        self.largest_batch = max(self.largest_batch, size)
        seconds = time.monotonic() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        log.info("batch of %d request(s) for %s in %.2f s (%d waiting)", size, model, seconds, self.waiting)
