"""tunewise: fine-tune only when it pays, and prove it."""

import os

__version__ = "0.1.0"

# oneDNN (PyTorch's CPU kernels for bf16 matrix multiplies) caches up to 1,024 compiled kernels, one per
# operand shape. Training packs examples into rows of varying length, so nearly every micro-batch brings new
# shapes, and the cache grew resident memory by about 0.1 GB per step until full (2.9 GB peak on 256 examples).
# A micro-batch reuses its shapes across all its layers, so a few dozen entries keep every kernel still in use.
# Measured on 128 of bench/train_throughput.py's examples (bf16 LoRA, 768-token micro-batches, Intel Xeon with
# AMX): 64 entries peaked at 1.99 GB (1,024-token micro-batches: 2.06 GB), 32 at 1.84 GB at the same speed, 24 at
# 1.83 GB, but 16 took 1.7x as long (kernels rebuilt within a micro-batch); on an AMD EPYC, 8 ran at half the
# speed. Read once, when oneDNN first runs, so it is set here, before tunewise imports torch; a value already in
# the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
