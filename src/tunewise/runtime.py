"""Process-wide settings for heavy CPU work, applied when evaluation, training or serving starts, never on import.

`import tunewise` changes nothing in the process: a library imported by someone else's program must not
retune its allocator or its math library. `tune_process()` does, once, at the start of an evaluation, of
`train.run` and of `tunewise serve`'s model pool, before any weight is loaded (in `tunewise run` the prompted
arms' evaluation comes first, and what it sets holds for the training after it):

- oneDNN's and ideep's kernel caches capped at 32 entries each (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`,
  `LRU_CACHE_CAPACITY`), unless the environment already sets them;
- glibc's heap shared by all threads (`mallopt(M_ARENA_MAX, 1)`), unless `MALLOC_ARENA_MAX` is set.

Why each, with the measurements, is in the two functions' docstrings.
"""

from __future__ import annotations

import ctypes
import os

KERNEL_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32", "LRU_CACHE_CAPACITY": "32"}
_M_ARENA_MAX = -8  # glibc's malloc.h
_tuned = False


def tune_process() -> None:
    """Cap oneDNN's kernel caches and share one heap between threads; the second call does nothing."""
    global _tuned
    if _tuned:
        return
    _tuned = True
    cap_kernel_caches()
    one_heap_for_all_threads()


def cap_kernel_caches() -> None:
    """Cap the two caches of compiled CPU kernels that bf16 matrix products fill (a value already set wins).

    PyTorch's CPU kernels for bf16 matrix multiplies (oneDNN, through its C++ wrapper ideep) keep compiled
    kernels in two caches, one per operand shape: oneDNN's own (ONEDNN_PRIMITIVE_CACHE_CAPACITY) and ideep's
    (LRU_CACHE_CAPACITY), each 1,024 entries by default. Training packs examples into rows of varying length,
    so nearly every micro-batch brings new shapes, and the caches grew resident memory step after step until
    full (2.9 GB peak on 256 examples). A micro-batch reuses its shapes across all its layers, so a few dozen
    entries keep every kernel still in use. Measured on 128 of bench/train_throughput.py's examples (bf16 LoRA,
    768-token micro-batches, Intel Xeon with AMX):

    - oneDNN's cache: 64 entries peaked at 1.99 GB, 32 at 1.84 GB at the same speed, but 16 took 1.7x as long
      (kernels rebuilt within a micro-batch); on an AMD EPYC, 8 ran at half the speed.
    - ideep's cache, with oneDNN's at 32: the heap still grew by 35 MB a step for the first nine steps, 0.33 GB
      in all, while ideep's cache filled; 32 entries (as 4 or 16) kept it flat, 1.84 -> 1.50 GB peak, at the
      same speed.

    Both are read once, when the process's first oneDNN kernel is built: setting them later changes nothing,
    which is why training and serving call this before loading weights.
    """
    for name, value in KERNEL_CACHES.items():
        os.environ.setdefault(name, value)


def one_heap_for_all_threads() -> bool:
    """Make glibc serve every thread from one heap; returns whether it did (not with MALLOC_ARENA_MAX set, nor
    outside glibc).

    glibc gives each new thread a heap ("arena") of its own, and memory a thread frees stays in its heap, free
    for that thread alone. Training computes two micro-batches at once in two threads (train/workers.py): on 48
    bitext_reply examples the precision measurement and two bf16 workers peaked at 2.55 GB, against 1.87 GB with
    one worker. With one heap, freed blocks serve whichever thread allocates next: 1.86 GB, and an fp32 run
    1.98 -> 1.88 GB, at the same speed (tensors are large and few, so the heap's lock is rarely contended). It
    holds for threads that get their heap after it: torch starts its worker threads with the first parallel
    operation, after this call.
    """
    if "MALLOC_ARENA_MAX" in os.environ:  # glibc read it at start-up
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return False
    return bool(mallopt(_M_ARENA_MAX, 1))
