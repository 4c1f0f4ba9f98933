"""tunewise: fine-tune only when it pays, and prove it."""

import ctypes
import os

__version__ = "0.1.0"

# PyTorch's CPU kernels for bf16 matrix multiplies (oneDNN, through its C++ wrapper ideep) keep compiled kernels
# in two caches, one per operand shape: oneDNN's own (ONEDNN_PRIMITIVE_CACHE_CAPACITY) and ideep's
# (LRU_CACHE_CAPACITY), each 1,024 entries by default. Training packs examples into rows of varying length, so
# nearly every micro-batch brings new shapes, and the caches grew resident memory step after step until full
# (2.9 GB peak on 256 examples). A micro-batch reuses its shapes across all its layers, so a few dozen entries keep
# every kernel still in use. Measured on 128 of bench/train_throughput.py's examples (bf16 LoRA, 768-token
# micro-batches, Intel Xeon with AMX):
# - oneDNN's cache: 64 entries peaked at 1.99 GB, 32 at 1.84 GB at the same speed, but 16 took 1.7x as long
#   (kernels rebuilt within a micro-batch); on an AMD EPYC, 8 ran at half the speed.
# - ideep's cache, with oneDNN's at 32: the heap still grew by 35 MB a step for the first nine steps, 0.33 GB in
#   all, while ideep's cache filled; 32 entries (as 4 or 16) kept it flat, 1.84 -> 1.50 GB peak, at the same speed.
# Both are read once, when oneDNN first runs, so they are set here, before tunewise imports torch; a value
# already in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
os.environ.setdefault("LRU_CACHE_CAPACITY", "32")


def _one_heap_for_all_threads() -> None:
    """Make glibc serve every thread from one heap (elsewhere, or with MALLOC_ARENA_MAX set, nothing).

    glibc gives each new thread a heap ("arena") of its own, and memory a thread frees stays in its heap, free
    for that thread alone. Training computes two micro-batches at once in two threads (train/workers.py): on 48
    bitext_reply examples the precision measurement and two bf16 workers peaked at 2.55 GB, against 1.87 GB with
    one worker. With one heap, freed blocks serve whichever thread allocates next: 1.86 GB, and an fp32 run
    1.98 -> 1.88 GB, at the same speed (tensors are large and few, so the heap's lock is rarely contended). It
    holds only for threads that get their heap after it, torch's own included, so it runs here, at import.
    """
    if "MALLOC_ARENA_MAX" in os.environ:  # glibc read it at start-up
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to set
        return
    mallopt(-8, 1)  # M_ARENA_MAX


_one_heap_for_all_threads()
