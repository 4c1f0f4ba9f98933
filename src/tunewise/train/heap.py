"""Keeping the C heap from holding more memory than training needs: glibc's `malloc_trim`, used sparingly.

A training step frees all its activations, but glibc keeps the freed pages, scattered among live blocks, for
the next allocations. When the next step's differently sized tensors do not fit them, the heap grows and
resident memory with it. Early versions measured resident memory rising step after step (1.1 to 1.9 GB over 8
steps of 64 examples) and trimmed after every step; since then the heap is shared by all threads and oneDNN's
kernel caches are capped (README, "Peak memory").

The trim has a price: the pages it hands back are faulted in again, zeroed, by the next step (16 examples'
gradient in fp32: about 170,000 page faults after a trim, 2,000-11,000 without). In `bench/worker_scaling.py`
that cost 1.4-1.7% of a pass on the 2-core Xeon and 9.9% on the 2-core AMD EPYC VM, whose page faults cost
more; with the passes after a trim and after none alternating in one process, on the EPYC, 8.7% (best of two
of each), and 3.4% and -0.2% (median of six of each, in two other runs): its speed drifts by about 5% from pass
to pass. And it no longer buys anything: 64 fp32 steps of the training bench's data (2 epochs of 256 examples)
without any trim ended at 1.87-1.99 GB, with no upward trend, and peaked at 1.99 GB, against 2.01 GB with a
trim after every step. So `HeapTrim` trims only when resident memory at the end of a step has grown past a
margin over what the first step after the last trim ended with: it costs nothing while memory holds steady,
and cuts any growth (a new data shape, a library's cache) back once it passes the margin.
"""

from __future__ import annotations

import functools
import os
from typing import Any


def release_free_heap() -> None:
    """Hand the heap's free pages back to the OS now (glibc's `malloc_trim`; elsewhere nothing)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim with
        return None


def resident_bytes() -> int | None:
    """This process's resident memory now, in bytes (Linux's /proc; elsewhere None)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapTrim:
    """Trims the heap at a step's end when resident memory has grown more than `margin` (a fraction) over the
    reference: the resident memory at the end of the first step after the last trim, the size of one step's
    working set plus one step's fragmentation. A trim resets the reference, so creep is cut back to that size
    whenever it passes the margin, and a genuinely larger working set (a batch of longer examples) costs one
    trim and becomes the new reference. Where resident memory cannot be read, every step trims, as before."""

    def __init__(self, margin: float = 0.10, enabled: bool = True) -> None:
        self.margin = margin
        self.enabled = enabled  # False: never trims (a run without tunewise's kernels, train/kernels.py)
        self.reference: int | None = None
        self.trims = 0

    def now(self) -> None:
        """Trim unconditionally (after an evaluation, whose shapes a training step does not reuse)."""
        if not self.enabled:
            return
        release_free_heap()
        self.trims += 1
        self.reference = None

    def after_step(self) -> int | None:
        """Trim if memory has grown past the margin; returns the resident bytes read before deciding."""
        resident = resident_bytes()
        if resident is None:
            self.now()
        elif self.reference is None:
            self.reference = resident
        elif resident > self.reference * (1 + self.margin):
            self.now()
        return resident
