"""Near-duplicate detection: MinHash signatures over character 5-grams, LSH banding, verified pairs.

Texts are normalized first (case, whitespace, and every run of digits becomes 0: two tickets that differ only
in an order number are the same template). All 5-byte windows of a batch of texts are hashed at once with
numpy (a polynomial hash computed as five shifted adds); texts longer than LONG bytes keep one window in four,
chosen by hash value so the same windows are kept in every text (all of them if that leaves none). A signature is the minimum of 32 universal
hashes over a text's windows. Signatures are cut into 8 bands of 4 rows; texts that share a band are
candidates, and a candidate pair counts as near-duplicate only when at least THRESHOLD of the 32 signature
positions agree (an estimate of the Jaccard similarity of the 5-gram sets).

Texts whose normalized forms are equal have equal signatures, so callers sign each distinct normalized text
once (`Signer`) and keep, per text, the row of its signature: a templated dataset has far fewer distinct
normalized texts than examples.
"""

from __future__ import annotations

import re
from array import array

import numpy as np

SHINGLE = 5
NUM_PERM = 32
BANDS = 8
ROWS = NUM_PERM // BANDS
THRESHOLD = 0.7
LONG = 256
HELD = 2**21  # characters of distinct texts waiting to be signed (signing costs about 35 bytes a character)
_rng = np.random.default_rng(20261129)
# Universal hashes h(x) = (a*x + b) mod 2^32 with odd a: uint32 arithmetic wraps, which is the mod for free.
_A = (_rng.integers(0, 2**31, NUM_PERM, dtype=np.uint32) * np.uint32(2) + np.uint32(1)).reshape(NUM_PERM, 1)
_B = _rng.integers(0, 2**32, NUM_PERM, dtype=np.uint64).astype(np.uint32).reshape(NUM_PERM, 1)
_P = np.uint32(1000003)
_DIGITS = re.compile(r"\d+")
# Batch normalization joins texts with NUL: not whitespace, not a digit, not cased and not case-ignorable, so
# lower() (whose final-sigma rule looks at neighbours) treats each text as if it were alone; the rest is done
# in numpy over the code points, with what str.split() and \d mean: str.isspace() and str.isdecimal().
_SEP = "\x00"
_OTHER, _SPACE, _DIGIT = 0, 1, 2
_ASCII_CLASS = np.array(
    [_SPACE if chr(c).isspace() else _DIGIT if chr(c).isdecimal() else _OTHER for c in range(128)],
    dtype=np.uint8,
)  # 127 (DEL) is OTHER: np.take(..., mode="clip") sends every wider code point there first


def normalize_text(text: str) -> str:
    """Case, whitespace and numbers do not make two inputs different.

    >>> normalize_text("  Where is   MY order 12345?")
    'where is my order 0?'
    """
    return _DIGITS.sub("0", " ".join(text.lower().split()))


def normalize_texts(texts: list[str]) -> list[str]:
    """`normalize_text` of each text, in a few C and numpy passes over the joined batch instead of five
    Python calls per text.

    >>> normalize_texts(["  A  b 12 ", "", "x\x1c9", "ΟΔΟΣ ٣7\u3000", " \t "])
    ['a b 0', '', 'x 0', 'οδος 0', '']
    """
    if not texts:
        return []
    joined = _SEP.join(texts)
    if joined.count(_SEP) != len(texts) - 1:  # a text holds NUL itself: the rare case, one by one
        return [normalize_text(t) for t in texts]
    cp = np.frombuffer(joined.lower().encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    n = len(cp)
    cls = np.take(_ASCII_CLASS, cp, mode="clip")
    wide = np.flatnonzero(cp > 127)
    if len(wide):  # few distinct characters beyond ASCII: ask Python about each once
        chars, where = np.unique(cp[wide], return_inverse=True)
        decoded = chars.tobytes().decode("utf-32-le", "surrogatepass")
        table = [_SPACE if c.isspace() else _DIGIT if c.isdecimal() else _OTHER for c in decoded]
        cls[wide] = np.array(table, dtype=np.uint8)[where]
    space, digit = cls == _SPACE, cls == _DIGIT
    # Runs of whitespace, as [first, last]: one space inside a text, nothing at either end of it.
    first = np.flatnonzero(space[1:] & ~space[:-1]) + 1
    last = np.flatnonzero(space[:-1] & ~space[1:])
    if n and space[0]:
        first = np.concatenate(([0], first))
    if n and space[-1]:
        last = np.append(last, n - 1)
    inner = (first > 0) & (last < n - 1)
    first, last = first[inner], last[inner]
    inner = (cp[first - 1] != 0) & (cp[last + 1] != 0)
    keep = cls == _OTHER
    keep[1:] |= digit[1:] & ~digit[:-1]  # a run of digits keeps its first, as 0
    keep[:1] |= digit[:1]
    keep[first[inner]] = True
    out, kept = cp[keep], cls[keep]
    out[kept == _SPACE] = ord(" ")
    out[kept == _DIGIT] = ord("0")
    return out.tobytes().decode("utf-32-le", "surrogatepass").split(_SEP)


def signatures(texts: list[str], normalized: bool = False) -> np.ndarray:
    """One row of NUM_PERM uint32 minimum hashes per text."""
    n = len(texts)
    if n == 0:
        return np.zeros((0, NUM_PERM), dtype=np.uint32)
    if not normalized:
        texts = normalize_texts(texts)
    encoded = [t.encode("utf-8").ljust(SHINGLE, b"\0") for t in texts]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint32)
    del encoded
    width = len(buf) - SHINGLE + 1
    shingle = buf[:width].copy()
    for k in range(1, SHINGLE):
        shingle *= _P
        shingle += buf[k : k + width]
    # Window i belongs to text owner[i]; keep only windows that lie entirely inside their text.
    ends = np.cumsum(lengths)
    owner = np.repeat(np.arange(n, dtype=np.int32), lengths)[:width]
    inside = np.arange(width) + SHINGLE <= ends[owner]
    long_text = (lengths > LONG)[owner]
    keep = inside & (~long_text | ((shingle & np.uint32(3)) == 0))
    # A long text of one repeated short pattern ("w0x w0x ...") may keep none of its windows: keep them all
    # (reduceat over an empty range would return the next text's first window instead).
    bare = np.bincount(owner[keep], minlength=n) == 0
    if bare.any():
        keep |= inside & bare[owner]
    shingle, owner = shingle[keep], owner[keep]
    # Windows are sorted by owner, so reduceat over each text's first window gives its signature. One
    # permutation at a time: a (windows,) scratch row stays in cache, a (NUM_PERM, windows) block would not.
    firsts = np.searchsorted(owner, np.arange(n))
    out = np.empty((n, NUM_PERM), dtype=np.uint32)
    scratch = np.empty_like(shingle)
    for p in range(NUM_PERM):
        np.multiply(shingle, _A[p, 0], out=scratch)
        scratch += _B[p, 0]
        out[:, p] = np.minimum.reduceat(scratch, firsts)
    return out


class Signer:
    """Signs a stream of texts, each distinct normalized text once.

    `ids[i]` is the row of text i's signature in `matrix()`; rows are numbered in order of first appearance,
    so the smallest row of a set of texts belongs to the earliest of them. Distinct texts are told apart by
    their 64-bit hash, as exact duplicates are (check.py): holding every distinct string of a large file of
    unique inputs would cost a worker more memory than their signatures.
    """

    def __init__(self, batch: int = 4096) -> None:
        self.batch = batch
        self.ids = array("I")
        self.rows: dict[int, int] = {}  # hash of a normalized text -> row
        self.pending: list[str] = []  # distinct normalized texts not signed yet
        self.held = 0  # their characters
        self.blocks: list[np.ndarray] = []

    def add(self, texts: list[str]) -> None:
        rows, pending = self.rows, self.pending
        ids = []
        for t in normalize_texts(texts):
            h = hash(t)
            r = rows.get(h)
            if r is None:
                r = rows[h] = len(rows)
                pending.append(t)
                self.held += len(t)
            ids.append(r)
        self.ids.extend(ids)
        if len(pending) >= self.batch or self.held > HELD:
            self._sign()

    def _sign(self) -> None:
        if self.pending:
            self.blocks.append(signatures(self.pending, normalized=True))
            self.pending = []
            self.held = 0

    def finish(self) -> list[np.ndarray]:
        """The signatures, in blocks of rows: concatenated by whoever receives them, so a worker never
        holds two copies."""
        self._sign()
        self.rows = {}
        return self.blocks

    def matrix(self) -> np.ndarray:
        blocks = self.finish()
        return np.concatenate(blocks) if blocks else np.zeros((0, NUM_PERM), dtype=np.uint32)


def bands(sig: np.ndarray) -> np.ndarray:
    """BANDS uint64 hashes per signature: equal band = equal ROWS consecutive minimum hashes."""
    weights = np.uint64(0x9E3779B1) ** np.arange(1, ROWS + 1, dtype=np.uint64)
    # Band b is columns b*ROWS .. b*ROWS+ROWS-1: accumulate row r of every band at once, in (n, BANDS)
    # uint64 blocks (a (n, NUM_PERM) uint64 copy of 554K signatures would be 142 MB, twice).
    out = np.zeros((len(sig), BANDS), dtype=np.uint64)
    for r in range(ROWS):
        out += sig[:, r::ROWS].astype(np.uint64) * weights[r]
    # Salt each band with its index so equal values in different bands never collide.
    out ^= np.arange(BANDS, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93)
    return out


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of agreeing signature positions, row by row: an estimate of Jaccard similarity."""
    return (a == b).mean(axis=-1)


# Agreeing positions needed for a share of at least THRESHOLD, exactly as similarity() >= THRESHOLD decides.
_NEED = next(k for k in range(NUM_PERM + 1) if k / NUM_PERM >= THRESHOLD)


def near(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """similarity(a, b) >= THRESHOLD, row by row, counting agreements instead of averaging floats."""
    return (a == b).sum(axis=-1) >= _NEED


def _near_pairs(sig: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """near(sig[a], sig[b]) in chunks: the gathered rows of a million pairs would be 256 MB at once."""
    ok = np.empty(len(a), dtype=bool)
    for s in range(0, len(a), chunk):
        ok[s : s + chunk] = near(sig[a[s : s + chunk]], sig[b[s : s + chunk]])
    return ok


def candidate_edges(sig: np.ndarray, band: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Verified near-duplicate pairs (i, j): each text is compared with the first text of every band bucket
    it falls in, so the work is linear in the number of texts."""
    n = len(sig)
    if band is None:
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
        ok = _near_pairs(sig, member, rep)
        left.append(member[ok])
        right.append(rep[ok])
    return np.concatenate(left), np.concatenate(right)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of the graph on range(n) with edges (a[k], b[k]): each node's smallest member.

    Hooking and pointer jumping: every root joined by an edge to a smaller root points at it, then every
    node points at its root; edges inside one component are dropped as they appear. A root only ever points
    at a smaller node, so each root is its component's smallest member.

    >>> components(6, np.array([1, 4, 5]), np.array([3, 5, 3])).tolist()
    [0, 1, 2, 1, 1, 1]
    """
    parent = np.arange(n)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]
        cross = ra != rb
        a, b, ra, rb = a[cross], b[cross], ra[cross], rb[cross]
        if not len(a):
            break
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        parent[hi] = lo  # repeated hi: one of its smaller neighbours wins; the others join next round
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
    return parent


def cluster(sig: np.ndarray, band: np.ndarray | None = None) -> np.ndarray:
    """Connected components of verified near-duplicate pairs: each row's group id (its smallest member)."""
    n = len(sig)
    if n < 2:
        return np.arange(n)
    a, b = candidate_edges(sig, band)
    return components(n, a, b)
