"""tunewise: fine-tune only when it pays, and prove it."""

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
