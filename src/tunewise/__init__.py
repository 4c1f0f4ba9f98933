"""tunewise: fine-tune only when it pays, and prove it."""

import os

__version__ = "0.1.0"

# oneDNN (PyTorch's CPU kernels for bf16 matrix multiplies) caches up to 1,024 compiled kernels, one per
# operand shape. Training packs examples into rows of varying length, so nearly every micro-batch brings new
# shapes, and the cache grew resident memory by about 0.1 GB per step until full (2.9 GB peak on 256 examples).
# A micro-batch reuses its shapes across all its layers, so a few dozen entries keep every kernel still in use.
# Measured on 256 examples (bench/train_throughput.py's data, bf16): 64 entries peaked at 1.95 GB in 203 s,
# 128 at 2.07 GB in 209 s (Intel Xeon with AMX); on an AMD EPYC, 128 was no slower than 1,024 but 8 ran at half
# the speed (kernels rebuilt at every use). Read once, when oneDNN first runs, so it is set here, before tunewise
# imports torch; a value already in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
