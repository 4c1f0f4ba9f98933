"""Near-duplicate detection with MinHash + LSH over character 5-grams, vectorized with numpy.

Texts are processed in batches: all 5-byte windows of a batch are hashed at once (a polynomial rolling hash
over a strided view), one in four windows is kept by a hash-value rule (the same windows are kept in every
text, so sampling does not break comparability), and each text's signature is the minimum of 32 universal
hashes over its windows. Signatures are cut into 8 bands of 4 rows: two texts whose Jaccard similarity is s
share at least one band with probability 1 - (1 - s^4)^8, i.e. 0.98 at s = 0.8 and 0.05 at s = 0.3.
"""

from __future__ import annotations

import numpy as np

SHINGLE = 5
NUM_PERM = 32
BANDS = 8
ROWS = NUM_PERM // BANDS
_rng = np.random.default_rng(20261129)
# Universal hashes h(x) = (a*x + b) mod 2^32 with odd a: uint32 arithmetic wraps, which is the mod for free.
_A = (_rng.integers(0, 2**31, NUM_PERM, dtype=np.uint32) * np.uint32(2) + np.uint32(1)).reshape(NUM_PERM, 1)
_B = _rng.integers(0, 2**32, NUM_PERM, dtype=np.uint64).astype(np.uint32).reshape(NUM_PERM, 1)
_P = np.uint32(1000003)


def normalize_text(text: str) -> str:
    """Case and whitespace do not make two inputs different.

    >>> normalize_text("  Where is   MY card?")
    'where is my card?'
    """
    return " ".join(text.lower().split())


def band_hashes(texts: list[str]) -> np.ndarray:
    """One row per text, BANDS uint64 band hashes each. Texts shorter than a shingle hash as a whole."""
    n = len(texts)
    if n == 0:
        return np.zeros((0, BANDS), dtype=np.uint64)
    encoded = [normalize_text(t).encode("utf-8") for t in texts]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=n)
    # Pad short texts so every text has at least one window.
    encoded = [b if len(b) >= SHINGLE else b.ljust(SHINGLE, b"\0") for b in encoded]
    lengths = np.maximum(lengths, SHINGLE)
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint32)
    total = len(buf)
    # Polynomial hash of every 5-byte window, computed as five shifted adds (uint32, wrapping).
    width = total - SHINGLE + 1
    shingle = buf[:width].copy()
    for k in range(1, SHINGLE):
        shingle *= _P
        shingle += buf[k : k + width]
    # Window i belongs to text owner[i]; keep only windows that lie entirely inside their text.
    ends = np.cumsum(lengths)
    owner = np.repeat(np.arange(n), lengths)[:width]
    inside = np.arange(width) + SHINGLE <= ends[owner]
    # Sample one window in four by value, but never drop all windows of a short text.
    keep = inside & ((shingle & np.uint32(3)) == 0)
    sparse = np.bincount(owner[keep], minlength=n) < 4
    keep |= inside & sparse[owner]
    shingle, owner = shingle[keep], owner[keep]
    hashed = shingle[None, :] * _A + _B  # (NUM_PERM, windows), contiguous per permutation
    # Windows are sorted by owner, so reduceat over each text's first window gives its signature.
    firsts = np.searchsorted(owner, np.arange(n))
    signature = np.minimum.reduceat(hashed, firsts, axis=1).T.astype(np.uint64)
    rows = signature.reshape(n, BANDS, ROWS)
    weights = np.uint64(0x9E3779B1) ** np.arange(1, ROWS + 1, dtype=np.uint64)
    bands = (rows * weights).sum(axis=2)
    # Salt each band with its index so equal values in different bands never collide.
    return bands ^ (np.arange(BANDS, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93))


def cluster(bands: np.ndarray) -> np.ndarray:
    """Connected components of 'shares a band': returns each row's group id (the smallest member index)."""
    n = len(bands)
    labels = np.arange(n)
    if n < 2:
        return labels
    # Sort each band once; only the labels change between passes.
    passes = []
    for b in range(bands.shape[1]):
        order = np.argsort(bands[:, b], kind="stable")
        values = bands[order, b]
        starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
        sizes = np.diff(np.append(starts, n))
        shared = np.repeat(sizes > 1, sizes)  # rows whose band value is shared with another row
        if shared.any():
            keep = np.flatnonzero(sizes > 1)
            passes.append((order[shared], starts[keep], sizes[keep]))
    changed = True
    while changed:
        changed = False
        for order, starts, sizes in passes:
            # Positions of each kept group inside the compacted `order`.
            compact_starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
            current = labels[order]
            new = np.repeat(np.minimum.reduceat(current, compact_starts), sizes)
            if (new < current).any():
                changed = True
                labels[order] = new
        labels = labels[labels]  # pointer jumping: follow each label to its own label
    return labels
