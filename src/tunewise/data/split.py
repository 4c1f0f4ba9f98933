"""Deterministic, stratified train / held-out split, with guidance on how big the held-out set must be."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict

from tunewise.data.formats import completion


def interval_half_width(n: int, accuracy: float = 0.8) -> float:
    """Half-width of the 95% Wilson interval on an accuracy measured on n held-out examples.

    >>> round(interval_half_width(100, 0.8), 3)
    0.078
    >>> round(interval_half_width(400, 0.8), 3)
    0.039
    """
    if n <= 0:
        return 1.0
    z = 1.959964
    denominator = 1 + z * z / n
    return z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denominator


def _key(example: dict, seed: int) -> str:
    text = "\x00".join(m.get("content") or "" for m in example["messages"])
    return hashlib.sha256(f"{seed}\x00{text}".encode()).hexdigest()


def split_examples(
    examples: list[dict], eval_fraction: float = 0.2, seed: int = 0, labels: list[str] | None = None
) -> tuple[list[dict], list[dict]]:
    """Split by a seeded hash of each example (stable when examples are added or reordered), stratified by
    label when the task has labels: each class contributes round(fraction x its size) held-out examples.

    >>> ex = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "ab"[i % 2]}]} for i in range(10)]
    >>> train, held = split_examples(ex, 0.2, labels=["a", "b"])
    >>> len(train), len(held), sorted(completion(e["messages"]) for e in held)
    (8, 2, ['a', 'b'])
    """
    strata: dict[str, list[dict]] = defaultdict(list)
    for ex in examples:
        answer = completion(ex["messages"]) or ""
        strata[answer if labels is not None else ""].append(ex)
    train: list[dict] = []
    held: list[dict] = []
    for name in sorted(strata):
        members = sorted(strata[name], key=lambda e: _key(e, seed))
        k = round(len(members) * eval_fraction)
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)  # every class on both sides when it can be
        held += members[:k]
        train += members[k:]
    order = {id(e): i for i, e in enumerate(examples)}
    train.sort(key=lambda e: order[id(e)])
    held.sort(key=lambda e: order[id(e)])
    return train, held
