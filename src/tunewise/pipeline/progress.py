"""One progress display across the pipeline's stages.

On a terminal, two live lines stay at the bottom while narration scrolls above them:

    pipeline [4/8] train            ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━   4/8  0:03:12
      step 31/114  loss 0.412       ━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━   31/114  0:01:05 < 0:02:53

the first with the stage reached and the whole run's elapsed time, the second with the current stage's own
progress (training steps, evaluation calls), its elapsed time and the remaining time estimated from its rate.
Stages with no natural unit (data check, split, report) show only their elapsed time.

When stderr is not a terminal (CI logs, pipes), there is no live display: the same narration is printed as
plain lines, so logs stay readable.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


class NullProgress:
    """The display's interface, doing nothing: what a pipeline run from Python code gets by default."""

    def begin(self, index: int, stage: str) -> None:
        """Stage `index` (1-based) starts."""

    def update(self, done: float, total: float, detail: str = "") -> None:
        """The current stage has done `done` of `total` units."""

    def end(self) -> None:
        """The current stage is over (finished, skipped or failed)."""

    def log(self, message: str) -> None:
        """A line of narration."""

    def close(self) -> None:
        """Leave the terminal clean."""


class PlainProgress(NullProgress):
    """No live display: narration as plain lines on a console (for logs and pipes), and a stage's progress as
    a line at most every `every_s` seconds."""

    def __init__(self, console: Any, every_s: float = 30.0):
        self.console = console
        self.every_s = every_s
        self.stage = ""
        self.started = self.last = 0.0

    def begin(self, index: int, stage: str) -> None:
        self.stage = stage
        self.started = self.last = time.monotonic()

    def update(self, done: float, total: float, detail: str = "") -> None:
        now = time.monotonic()
        if now - self.last < self.every_s or not total or done <= 0:
            return
        self.last = now
        elapsed = now - self.started
        left = elapsed / done * (total - done)
        self.log(
            f"  {self.stage}: {detail or f'{done:g}/{total:g}'} ({done / total:.0%}), "
            f"{_clock(elapsed)} elapsed, about {_clock(left)} left"
        )

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)


def arm_detail(arm: str, done: int, total: int, tokens: int, elapsed: float) -> str:
    """The progress line of one evaluated arm: rows answered, the tokens/s measured so far, the time left at
    the rate of the rows answered so far.

    >>> arm_detail("few-shot", 30, 120, 2400, 20.0)
    'few-shot 30/120 rows  120 tokens/s  about 0:01:00 left'
    >>> arm_detail("zero-shot", 0, 8, 0, 0.0)
    'zero-shot 0/8 rows'
    """
    if done <= 0 or elapsed <= 0:
        return f"{arm} {done}/{total} rows"
    left = elapsed / done * (total - done)
    return f"{arm} {done}/{total} rows  {tokens / elapsed:.0f} tokens/s  about {_clock(left)} left"


class ArmMeter:
    """Feeds `progress.update` from a generation engine's row counts for one arm (`LocalEngine.progress`)."""

    def __init__(self, progress: NullProgress, arm: str, total: int, clock: Any = time.monotonic):
        self.progress, self.arm, self.total, self.clock = progress, arm, total, clock
        self.started = clock()

    def __call__(self, done: int, tokens: int) -> None:
        elapsed = self.clock() - self.started
        self.progress.update(done, self.total, arm_detail(self.arm, done, self.total, tokens, elapsed))


def _clock(seconds: float) -> str:
    """
    >>> _clock(3725)
    '1:02:05'
    >>> _clock(65.4)
    '0:01:05'
    """
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LiveProgress(NullProgress):
    """A rich live display: the pipeline's line and the current stage's line (see the module docstring)."""

    def __init__(self, console: Any, stages: Sequence[str]):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.stages = list(stages)
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[remaining]}"),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self._remaining = TimeRemainingColumn()
        self.overall = self.progress.add_task("pipeline", total=len(self.stages), remaining="")
        self.current: Any = None
        self.progress.start()

    def begin(self, index: int, stage: str) -> None:
        self.progress.update(
            self.overall, completed=index - 1, description=f"pipeline [{index}/{len(self.stages)}] {stage}"
        )
        self.stage = stage
        self.current = self.progress.add_task(f"  {stage}", total=None, remaining="")

    def update(self, done: float, total: float, detail: str = "") -> None:
        if self.current is None:
            return
        self.progress.update(
            self.current, completed=done, total=total, description=f"  {self.stage} {detail}".rstrip()
        )
        left = self._remaining.render(self.progress.tasks[self.current])
        self.progress.update(self.current, remaining=f"< {left.plain}")

    def end(self) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        self.progress.advance(self.overall)

    def log(self, message: str) -> None:
        self.progress.console.print(message, highlight=False, markup=False)

    def close(self) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        self.progress.stop()  # idempotent: a second call does nothing


def progress_for(console: Any, stages: Sequence[str]) -> NullProgress:
    """A live display on a terminal, plain lines elsewhere."""
    if console.is_terminal:
        return LiveProgress(console, stages)
    return PlainProgress(console)
