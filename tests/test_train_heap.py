"""The heap trim's policy (train/heap.py): trim when resident memory grows past the margin, not every step."""

from __future__ import annotations

import mmap
import sys

import pytest

from tunewise.train import heap


@pytest.fixture
def scripted(monkeypatch):
    """Resident memory read from a script, and the trims recorded (by the reading they followed)."""
    readings: list[int | None] = []
    trims: list[int] = []
    position = {"i": -1}

    def resident():
        position["i"] += 1
        return readings[position["i"]]

    monkeypatch.setattr(heap, "resident_bytes", resident)
    monkeypatch.setattr(heap, "release_free_heap", lambda: trims.append(position["i"]))
    return readings, trims


def test_trims_only_past_the_margin_over_the_first_step_after_a_trim(scripted):
    readings, trims = scripted
    # reference 1000 (first step); 1100 is within 10%; 1101 is not -> trim; 900 is the new reference; 990 within;
    # 991 past -> trim; then 1000 the new reference.
    readings += [1000, 1050, 1100, 1101, 900, 990, 991, 1000, 1099]
    trim = heap.HeapTrim(margin=0.10)
    seen = [trim.after_step() for _ in readings]
    assert seen == readings
    assert trims == [3, 6]
    assert trim.trims == 2 and trim.reference == 1000


def test_a_forced_trim_resets_the_reference(scripted):
    readings, trims = scripted
    readings += [1000, 2000, 2100]
    trim = heap.HeapTrim(margin=0.10)
    trim.after_step()
    trim.now()  # after an evaluation: the next step's end is the new reference
    trim.after_step()
    trim.after_step()
    assert trims == [0] and trim.trims == 1 and trim.reference == 2000


def test_creep_is_cut_back_to_the_margin(scripted):
    """A heap whose fragmentation grows 3% of the working set per step, and a trim that removes it: resident
    memory never passes the reference by more than the margin plus one step's growth, and a trim comes once
    every 5 steps (the reference step, then 4 of growth: the 4th's +12% is the first past 10%), not every
    step."""
    readings, trims = scripted
    trim = heap.HeapTrim(margin=0.10)
    working_set, creep, since_trim, peak = 1000, 30, 0, 0
    for _ in range(40):
        resident = working_set + creep * since_trim
        readings.append(resident)
        peak = max(peak, resident)
        before = trim.trims
        trim.after_step()
        since_trim = 0 if trim.trims > before else since_trim + 1
    assert peak == 1120  # reference 1000 + 4 steps' creep, the first reading past 1100
    assert trim.trims == 8  # 40 steps, one trim per 5 (the reference step and 4 of growth)
    assert trims == list(range(4, 40, 5))


def test_without_a_reading_every_step_trims(scripted):
    readings, trims = scripted
    readings += [None, None, None]
    trim = heap.HeapTrim()
    assert [trim.after_step() for _ in readings] == [None, None, None]
    assert trims == [0, 1, 2]


@pytest.mark.skipif(sys.platform != "linux", reason="resident memory is read from Linux's /proc")
def test_resident_bytes_sees_touched_memory():
    # Fresh pages from the kernel, not malloc's: the heap may hold that much free and already resident.
    with mmap.mmap(-1, 64 * 2**20) as block:
        before = heap.resident_bytes()
        for offset in range(0, len(block), mmap.PAGESIZE):  # one byte per page: no 64 MB temporary of our own
            block[offset] = 1
        after = heap.resident_bytes()
    assert before is not None and after is not None
    assert after - before > 48 * 2**20


@pytest.mark.skipif(heap._malloc_trim() is None or sys.platform != "linux", reason="needs glibc and /proc")
def test_release_free_heap_hands_free_pages_in_the_middle_of_the_heap_back():
    """Blocks freed between live ones stay resident (glibc returns memory unasked only from the heap's top)
    until the trim hands their pages back."""
    blocks = [bytearray(100_000) for _ in range(1280)]  # ~128 MB, each below glibc's mmap threshold
    del blocks[::2]  # every other one: each freed block lies between two live ones
    freed = heap.resident_bytes()
    heap.release_free_heap()
    trimmed = heap.resident_bytes()
    assert freed is not None and trimmed is not None
    assert freed - trimmed > 48 * 2**20  # of the 64 MB freed; each block's first and last page stay
