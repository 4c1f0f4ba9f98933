"""Dynamic batching: concurrent requests are decoded together instead of one at a time.

Requests go into a bounded queue (full: the caller answers 429 with Retry-After). One worker thread owns the
models. Per-request settings (temperature, top_p, seed, stop, max_tokens) travel as per-row `SamplingParams`, so
requests with different settings share a batch; a batch serves one model (the base or one adapter). Two ways
to batch (`tunewise serve --batching`):

- continuous (the default): the worker opens a batch for the model of the oldest waiting request, with every
  waiting request of that model (up to `max_batch_size`), and decodes it step by step
  (evaluate/continuous.py: `OpenBatch`). A request that arrives meanwhile for the same model joins at the next
  step, into a free row; a request that ends leaves at once (its answer sent, its row free). Fair rule: the
  batch admits newcomers only while the oldest waiting request is of its own model; once a request for another
  model is the oldest waiting, the batch admits no more, finishes its rows, and the next batch serves that
  model. So a request waits for at most one batch to drain, and never behind a request that arrived after it
  (beyond the ones a batch takes when it opens, as static batches do).
- static: the worker takes the first waiting request, waits up to `batch_wait_s` for companions (a few ms),
  takes up to `max_batch_size` requests, groups them by model and decodes each group with one
  `LocalEngine.generate` call, which runs until its last row ends; requests arriving meanwhile wait for the
  next batch.

Why batching pays on a CPU: a decode step of a 135M model reads every weight once whatever the number of rows,
so 16 rows cost little more than one. Continuous batching keeps those rows busy: a short answer does not wait
for the longest one of its batch, and a newcomer does not wait for the batch to end.

The worker never dies on a failed batch, and one request cannot fail the others. Static: a failed batch is
decoded again in halves until the request that fails is alone (it gets the error). Continuous: a request whose
prefill fails is retried alone and, failing again, gets the error without entering the batch; if a decode step
fails, the batch is dropped and its requests are decoded again in static batches, its halves apart as above (a
streamed request's replayed tokens are checked against the ones already sent, never sent twice). A request
whose client went away or timed out is marked `cancelled`; its row is dropped at the next token (the
`on_token` callback answers True) and the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
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
    json_guard: bool = False  # the JSON loop guard on this request's row (evaluate/loopguard.py)
    admitted: float = 0.0  # when a continuous batch took it (worker thread only)

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
# open_batch(model, on_token) -> a context manager over an `OpenBatch` of the model, entered and left in the worker
# thread (the adapter active meanwhile), or over None when the model cannot be batched continuously.
OpenBatchFn = Callable[[str, Callable[[int, int], bool]], AbstractContextManager[Any]]


class Batcher:
    def __init__(
        self,
        execute: Execute,
        max_batch_size: int = 16,
        queue_size: int = 64,
        batch_wait_s: float = 0.005,
        open_batch: OpenBatchFn | None = None,
    ):
        self.execute = execute
        self.open_batch = open_batch  # None: static batches
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.batch_wait_s = batch_wait_s
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._paused = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Counters, read by tests and the bench: batches (static: engine calls; continuous: batches opened),
        # requests they served, the largest batch (continuous: the most rows decoding at once).
        self.batches = 0
        self.requests = 0
        self.largest_batch = 0
        # Moving average of the time a batch slot is held (static: a batch's duration; continuous: a request's
        # time in its batch), for Retry-After.
        self._batch_seconds = 1.0

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
        """Hold the worker between batches (requests queue up meanwhile; a continuous batch already decoding
        finishes its rows but admits no one): for draining and for tests."""
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
        if self.open_batch is not None:
            self._run_continuous()
            return
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

    # --- continuous batches ----------------------------------------------------------------------------------

    def _run_continuous(self) -> None:
        while True:
            jobs = self._open_next()
            if jobs is None:
                return
            self._decode(jobs[0].model, jobs)

    def _open_next(self) -> list[Job] | None:
        """Wait for a request; take every waiting request of the oldest one's model, up to max_batch_size."""
        with self._cond:
            while True:
                while not self._stopping and (not self._queue or self._paused):
                    self._cond.wait()
                if self._stopping:
                    return None
                model = self._queue[0].model
                taken: list[Job] = []
                kept: deque[Job] = deque()
                for job in self._queue:
                    if job.cancelled:  # timed out or abandoned while waiting: already answered
                        continue
                    if job.model == model and len(taken) < self.max_batch_size:
                        taken.append(job)
                    else:
                        kept.append(job)
                self._queue = kept
                if taken:
                    return taken

    def _newcomers(self, model: str, room: int) -> list[Job]:
        """The waiting requests that join the running batch of `model` now: from the front of the queue, while
        they are for `model` (the fair rule of the module docstring); none while paused or stopping."""
        taken: list[Job] = []
        if room <= 0:
            return taken
        with self._cond:
            if self._paused or self._stopping:
                return taken
            while self._queue and len(taken) < room:
                job = self._queue[0]
                if job.cancelled:
                    self._queue.popleft()
                elif job.model == model:
                    taken.append(self._queue.popleft())
                else:
                    break
        return taken

    def _decode(self, model: str, jobs: list[Job]) -> None:
        """Decode a continuous batch of `model`, opened with `jobs`, until its last row ends."""
        rows: dict[int, Job] = {}  # prompt index in the batch -> its request, until answered

        def on_token(i: int, token: int) -> bool:
            job = rows[i]
            if job.cancelled:
                return True
            if job.stream:
                job.sent.append(token)
                job.emit("token", token)
            return False

        stack = ExitStack()
        try:
            batch = stack.enter_context(self.open_batch(model, on_token))
        except Exception as exc:  # the model would not load: its requests fail, never the worker
            log.exception("opening a batch of %d request(s) for %s failed", len(jobs), model)
            for job in jobs:
                self._answer(job, "error", exc)
            return
        with stack:
            if batch is None:  # a model whose cache layers continuous batching cannot rebuild
                again = jobs
            else:
                self.batches += 1
                started = time.monotonic()
                served = self.requests
                try:
                    again = self._decode_rows(model, batch, jobs, rows)
                except Exception as exc:  # a bug here fails the batch's requests, never the worker
                    log.exception("a continuous batch for %s failed", model)
                    again = []
                    for job in rows.values():
                        self._answer(job, "error", exc)
                log.info(
                    "continuous batch for %s: %d request(s) in %.2f s (%d waiting)",
                    model,
                    self.requests - served,
                    time.monotonic() - started,
                    self.waiting,
                )
        # After the batch's context is left: a static batch enters the model's own.
        if batch is None:
            self._run_group(model, again)
        elif again:  # they just failed together: straight to their halves (see _run_group)
            half = len(again) // 2
            for group in (again[:half], again[half:]) if half else (again,):
                self._run_group(model, group)

    def _decode_rows(self, model: str, batch: Any, pending: list[Job], rows: dict[int, Job]) -> list[Job]:
        """Step `batch` until no row is left, admitting newcomers as rows free up. Returns the requests to
        decode again in static batches when a decode step failed (none otherwise)."""
        while True:
            if pending:
                self._admit(batch, pending, rows)
            if not batch.rows():
                return []
            self.largest_batch = max(self.largest_batch, batch.rows())
            try:
                batch.step()
            except Exception as exc:  # a failed step fails no request by itself: they are decoded again
                self._deliver(batch, rows)  # the rows that ended before the failure keep their answers
                again = [job for job in rows.values() if not job.cancelled]
                log.warning(
                    "a decode step of %d request(s) for %s failed (%s: %s): decoding them again in static batches",
                    len(again),
                    model,
                    type(exc).__name__,
                    exc,
                )
                return again
            self._deliver(batch, rows)
            pending = self._newcomers(model, batch.room())

    def _admit(self, batch: Any, jobs: list[Job], rows: dict[int, Job]) -> None:
        """Prefill `jobs` into `batch`; if that fails, one by one, so only a request that fails alone fails."""
        jobs = [job for job in jobs if not job.cancelled]
        if not jobs:
            return
        try:
            keys = batch.admit(jobs)
        except Exception as exc:
            if len(jobs) > 1:
                log.warning(
                    "the prefill of %d request(s) failed (%s: %s): admitting them one by one",
                    len(jobs),
                    type(exc).__name__,
                    exc,
                )
                for job in jobs:
                    self._admit(batch, [job], rows)
                return
            log.exception("a request for %s failed at its prefill", jobs[0].model)
            self._answer(jobs[0], "error", exc)
            return
        now = time.monotonic()
        for key, job in zip(keys, jobs, strict=True):
            rows[key] = job
            job.admitted = now

    def _deliver(self, batch: Any, rows: dict[int, Job]) -> None:
        for key, generation in batch.take_finished():
            job = rows.pop(key)
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (time.monotonic() - job.admitted)
            self._answer(job, "done", generation)

    def _answer(self, job: Job, kind: str, value: Any) -> None:
        self.requests += 1  # before the answer: a client may read the counters next
        job.emit(kind, value)

    def _count(self, model: str, size: int, started: float, served: int | None = None) -> None:
        """One engine call of `size` rows: the counters and the moving average of a batch's time."""
        self.batches += 1
        self.requests += size if served is None else served
        self.largest_batch = max(self.largest_batch, size)
        seconds = time.monotonic() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        log.info("batch of %d request(s) for %s in %.2f s (%d waiting)", size, model, seconds, self.waiting)
