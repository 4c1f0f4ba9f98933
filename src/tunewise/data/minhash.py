"""Near-duplicate detection: MinHash signatures over character 5-grams, LSH banding, verified pairs.

Texts are normalized first (case, whitespace, and every run of digits becomes 0: two tickets that differ only
in an order number are the same template). All 5-byte windows of a batch of texts are hashed at once with
numpy (a polynomial hash computed as five shifted adds); texts longer than LONG bytes keep one window in four,
chosen by hash value so the same windows are kept in every text. A signature is the minimum of 32 universal
hashes over a text's windows. Signatures are cut into 8 bands of 4 rows; texts that share a band are
candidates, and a candidate pair counts as near-duplicate only when at least THRESHOLD of the 32 signature
positions agree (an estimate of the Jaccard similarity of the 5-gram sets).
"""

from __future__ import annotations

import re

import numpy as np

SHINGLE = 5
NUM_PERM = 32
BANDS = 8
ROWS = NUM_PERM // BANDS
THRESHOLD = 0.7
LONG = 256
_rng = np.random.default_rng(20261129)
# Universal hashes h(x) = (a*x + b) mod 2^32 with odd a: uint32 arithmetic wraps, which is the mod for free.
_A = (_rng.integers(0, 2**31, NUM_PERM, dtype=np.uint32) * np.uint32(2) + np.uint32(1)).reshape(NUM_PERM, 1)
_B = _rng.integers(0, 2**32, NUM_PERM, dtype=np.uint64).astype(np.uint32).reshape(NUM_PERM, 1)
_P = np.uint32(1000003)
_DIGITS = re.compile(r"\d+")


def normalize_text(text: str) -> str:
    """Case, whitespace and numbers do not make two inputs different.

    >>> normalize_text("  Where is   MY order 12345?")
    'where is my order 0?'
    """
    return _DIGITS.sub("0", " ".join(text.lower().split()))


def signatures(texts: list[str]) -> np.ndarray:
    """One row of NUM_PERM uint32 minimum hashes per text."""
    n = len(texts)
    if n == 0:
        return np.zeros((0, NUM_PERM), dtype=np.uint32)
    encoded = [normalize_text(t).encode("utf-8").ljust(SHINGLE, b"\0") for t in texts]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=n)
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint32)
    width = len(buf) - SHINGLE + 1
    shingle = buf[:width].copy()
    for k in range(1, SHINGLE):
        shingle *= _P
        shingle += buf[k : k + width]
    # Window i belongs to text owner[i]; keep only windows that lie entirely inside their text.
    ends = np.cumsum(lengths)
    owner = np.repeat(np.arange(n), lengths)[:width]
    keep = np.arange(width) + SHINGLE <= ends[owner]
    long_text = (lengths > LONG)[owner]
    keep &= ~long_text | ((shingle & np.uint32(3)) == 0)
    shingle, owner = shingle[keep], owner[keep]
    hashed = shingle[None, :] * _A + _B  # (NUM_PERM, windows), contiguous per permutation
    # Windows are sorted by owner, so reduceat over each text's first window gives its signature.
    firsts = np.searchsorted(owner, np.arange(n))
    return np.ascontiguousarray(np.minimum.reduceat(hashed, firsts, axis=1).T)


def bands(sig: np.ndarray) -> np.ndarray:
    """BANDS uint64 hashes per signature: equal band = equal ROWS consecutive minimum hashes."""
    rows = sig.astype(np.uint64).reshape(len(sig), BANDS, ROWS)
    weights = np.uint64(0x9E3779B1) ** np.arange(1, ROWS + 1, dtype=np.uint64)
    # Salt each band with its index so equal values in different bands never collide.
    return (rows * weights).sum(axis=2) ^ (np.arange(BANDS, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93))


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of agreeing signature positions, row by row: an estimate of Jaccard similarity."""
    return (a == b).mean(axis=-1)


def candidate_edges(sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Verified near-duplicate pairs (i, j): each text is compared with the first text of every band bucket
    it falls in, so the work is linear in the number of texts."""
    n = len(sig)
    band = bands(sig)
    left, right = [], []
    for b in range(BANDS):
        order = np.argsort(band[:, b], kind="stable")
        values = band[order, b]
        starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
        sizes = np.diff(np.append(starts, n))
        rep = np.repeat(order[starts], sizes)
        member = order
        mask = member != rep
        member, rep = member[mask], rep[mask]
        ok = similarity(sig[member], sig[rep]) >= THRESHOLD
        left.append(member[ok])
        right.append(rep[ok])
    return np.concatenate(left), np.concatenate(right)


def cluster(sig: np.ndarray) -> np.ndarray:
    """Connected components of verified near-duplicate pairs: each row's group id (its smallest member)."""
    n = len(sig)
    labels = np.arange(n)
    if n < 2:
        return labels
    a, b = candidate_edges(sig)
    if len(a) == 0:
        return labels
    while True:
        low = np.minimum(labels[a], labels[b])
        new = labels.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]  # pointer jumping: follow each label to its own label
        if np.array_equal(new, labels):
            return labels
        labels = new
