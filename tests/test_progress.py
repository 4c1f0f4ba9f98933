"""The pipeline's progress display: live bars on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from tunewise.pipeline.progress import LiveProgress, PlainProgress, progress_for
from tunewise.pipeline.run import STAGES


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=terminal, width=120, color_system=None), buffer


def test_a_terminal_gets_the_live_display_and_a_pipe_plain_lines():
    assert isinstance(progress_for(console(True)[0], STAGES), LiveProgress)
    assert isinstance(progress_for(console(False)[0], STAGES), PlainProgress)


def test_live_display_shows_the_stage_its_progress_and_the_remaining_time():
    term, buffer = console(True)
    progress = LiveProgress(term, STAGES)
    progress.begin(4, "train")
    progress.update(3, 10, "step 3/10  loss 1.234")
    progress.progress.refresh()
    progress.log("  checkpoint written")
    shown = buffer.getvalue()
    assert "pipeline [4/8] train" in shown
    assert "train step 3/10  loss 1.234" in shown and "3/10" in shown
    assert "< " in shown  # the remaining-time estimate of the stage's bar
    assert "checkpoint written" in shown
    progress.end()
    assert progress.current is None and progress.progress.tasks[progress.overall].completed == 4
    progress.close()
    progress.close()  # idempotent: the CLI closes in a finally block


def test_plain_progress_prints_a_line_per_interval_with_percent_and_time_left(monkeypatch):
    term, buffer = console(False)
    clock = iter([0.0, 60.0, 70.0, 120.0])
    monkeypatch.setattr("tunewise.pipeline.progress.time.monotonic", lambda: next(clock))
    progress = PlainProgress(term, every_s=30.0)
    progress.begin(4, "train")  # t = 0
    progress.update(25, 100, "step 25/100")  # t = 60: printed
    progress.update(30, 100, "step 30/100")  # t = 70: under 30 s since the last line, quiet
    progress.update(50, 100, "step 50/100")  # t = 120: printed
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "  train: step 25/100 (25%), 0:01:00 elapsed, about 0:03:00 left",
        "  train: step 50/100 (50%), 0:02:00 elapsed, about 0:02:00 left",
    ]


def test_arm_meter_reports_rows_tokens_per_second_and_time_left():
    """An evaluated arm's line: 30 of 120 rows in 20 s with 2400 tokens is 120 tokens/s and 60 s left."""
    from tunewise.pipeline.progress import ArmMeter, NullProgress

    class Recorder(NullProgress):
        def __init__(self):
            self.calls = []

        def update(self, done, total, detail=""):
            self.calls.append((done, total, detail))

    now = [100.0]
    recorder = Recorder()
    meter = ArmMeter(recorder, "few-shot", 120, clock=lambda: now[0])
    now[0] = 120.0
    meter(30, 2400)
    assert recorder.calls == [(30, 120, "few-shot 30/120 rows  120 tokens/s  about 0:01:00 left")]
