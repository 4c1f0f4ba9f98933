"""Continuous batching for `LocalEngine.generate`: a finished row's slot takes the next waiting prompt at once.

With static batches (`LocalEngine.continuous = False`) a batch runs until its last row ends: the rows that end
early either keep computing for nothing or are dropped, and the batch shrinks, so a decode step (whose cost on
a CPU is mostly per-layer overhead, nearly the same for 8 rows as for 32) serves fewer and fewer prompts. Here
the batch keeps up to `max_batch_size` rows generating for as long as prompts wait:

- prompts are taken longest first (as the static batches are cut), so a prompt admitted later is never longer
  than the cache's width, and its keys fit in the columns before the current one;
- a waiting prompt is prefilled on its own (with the other prompts admitted at the same step, left-padded
  together), after the shared prefix, and its keys and values are copied into the free row of the batch's cache
  at the columns just before the current one; the columns between the prefix and them are masked out for that
  row. Keys carry their RoPE positions, so where they sit in the cache does not matter, only the mask;
- a prompt asked for several times (the greedy answer and its consistency samples, or `sample()`'s n copies)
  is prefilled once: its keys, values and last logits wait in a stash until its last copy is admitted;
- the cache is one preallocated buffer per layer (`_BatchLayer`): rows are written in place; when the columns
  run out, the columns that no live row reads any more (before the oldest live row's prompt) are dropped by
  moving the live ones down, which keeps the width near the longest prompt plus `max_new_tokens`.

Each row counts its own steps, so `max_new_tokens` and the JSON loop guard's rewinds behave as in a static
batch. Latency is divided as in the static path: a prefill split over its prompts in proportion to their real
tokens (a prompt's share equally among all its copies), each decode step equally among the rows it served.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

from tunewise.evaluate.constrain import RowMatchers
from tunewise.evaluate.engine import rewind
from tunewise.evaluate.loopguard import RowGuards


@functools.cache
def _batch_layer_class() -> type:
    """A cache layer over preallocated [rows, heads, columns, dim] buffers: the batch's first `rows` rows and
    `length` columns are exposed to the model as keys/values; rows are refilled and columns compacted in place."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class _BatchLayer(DynamicLayer):
        def __init__(self, like: torch.Tensor, row_capacity: int, capacity: int):
            super().__init__()
            shape = (row_capacity, like.shape[1], capacity, like.shape[3])
            self._k = like.new_zeros(shape)
            self._v = like.new_zeros(shape)
            self.device = like.device
            self.is_initialized = True
            self.rows = 0
            self.length = 0
            self._expose()

        def _expose(self) -> None:
            self.keys = self._k[: self.rows, :, : self.length]
            self.values = self._v[: self.rows, :, : self.length]

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            start, end = self.length, self.length + key_states.shape[-2]
            self._k[: self.rows, :, start:end] = key_states
            self._v[: self.rows, :, start:end] = value_states
            self.length = end
            self._expose()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def grow(self, capacity: int) -> None:
            old_k, old_v = self._k, self._v
            shape = (old_k.shape[0], old_k.shape[1], capacity, old_k.shape[3])
            self._k, self._v = old_k.new_zeros(shape), old_v.new_zeros(shape)
            self._k[:, :, : self.length] = old_k[:, :, : self.length]
            self._v[:, :, : self.length] = old_v[:, :, : self.length]
            self._expose()

    return _BatchLayer


class _Prefilled:
    """One distinct prompt suffix, prefilled: its keys/values per layer (real tokens only), last logits, and
    how many of its copies are still to be admitted."""

    __slots__ = ("keys", "values", "logits", "width", "waiting")

    def __init__(self, keys: list, values: list, logits: Any, width: int, waiting: int):
        self.keys, self.values, self.logits, self.width, self.waiting = keys, values, logits, width, waiting


def run_continuous(
    engine: Any,
    ids: list[list[int]],
    prefix_len: int,
    prefix_cache: Any,
    max_new_tokens: int,
    temperature: float,
    generator: Any,
    spent: list[float],
    grammars: Mapping[int, Any] | None,
    per_prompt: Any,
    on_token: Callable[[int, int], bool | None] | None,
    guarded: set[int],
    rewinds: dict[int, int],
    refusals: dict[int, int],
) -> dict[int, tuple[list[int], str]]:
    """Every prompt of `ids` completed through one continuously refilled batch; prompt index -> (tokens, reason)."""
    import torch

    queue = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    key_of = (lambda i: tuple(ids[i][prefix_len:])) if engine._merge_duplicates else (lambda i: i)
    copies: dict[Any, int] = {}
    for i in queue:
        copies[key_of(i)] = copies.get(key_of(i), 0) + 1
    stash: dict[Any, _Prefilled] = {}
    widest = len(ids[queue[0]]) - prefix_len
    # Rows at once: as the static batches, at most max_batch_size rows of at most max_batch_tokens prompt tokens.
    row_limit = max(1, min(engine.max_batch_size, engine.max_batch_tokens // max(1, widest)))
    # Spare columns: a compaction moves the live columns once per `slack` steps at most.
    slack = engine._column_slack or max(32, max_new_tokens)
    capacity = prefix_len + widest + max_new_tokens + slack
    matchers = (
        RowMatchers(engine._grammar_backend(), {i: g for i, g in grammars.items() if g}) if grammars else None
    )
    guards = RowGuards(
        [i for i in queue if i in guarded and not (grammars and grammars.get(i))], engine._piece
    )

    layers: list[Any] = []  # the batch's cache layers, allocated at the first admission
    cache = engine._new_cache()
    attention = torch.ones((row_limit, capacity), dtype=torch.long)
    next_pos = torch.zeros(row_limit, dtype=torch.long)
    first_pos = torch.zeros(row_limit, dtype=torch.long)
    tokens = torch.zeros(row_limit, dtype=torch.long)
    members: list[int | None] = []  # prompt index of each batch row; None: a free row
    start_col: list[int] = []  # each row's first prompt column after the prefix
    steps: list[int] = []  # tokens chosen by each row so far (rewinds included)
    columns: dict[int, list[int]] = {}  # cache column of each generated token fed, per prompt
    generated: dict[int, list[int]] = {}
    done: dict[int, tuple[list[int], str]] = {}
    length = 0  # columns filled
    waiting = 0  # next prompt of `queue` to admit
    step_start = 0.0  # when the current decode step began (a prefill in it is charged apart)
    finished_tokens = [0]  # completion tokens of the finished rows, for `engine.progress`

    def prefill(group: list[int]) -> None:
        """Prefill the distinct suffixes of `group` not yet in the stash, left-padded together."""
        nonlocal step_start
        start = time.perf_counter()
        fresh: list[Any] = []
        for i in group:
            key = key_of(i)
            if key not in stash and key not in fresh:
                fresh.append(key)
        if not fresh:
            return
        suffixes = [ids[next(i for i in group if key_of(i) == key)][prefix_len:] for key in fresh]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((len(suffixes), width), engine.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(suffixes), prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for r, s in enumerate(suffixes):
            input_ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, prefix_len + width - len(s) :] = 1
        positions = (prefix_len + mask[:, prefix_len:].cumsum(-1) - 1).clamp(min=prefix_len)
        own = engine._new_cache(capacity=prefix_len + width)
        if prefix_cache is not None:
            for layer, shared in zip(own.layers, prefix_cache.layers, strict=True):
                layer.seed(shared.keys, shared.values, len(suffixes))
        logits = engine._forward(input_ids, mask, positions, own)
        for r, (key, s) in enumerate(zip(fresh, suffixes, strict=True)):
            stash[key] = _Prefilled(
                [layer.keys[r, :, prefix_len + width - len(s) :] for layer in own.layers],
                [layer.values[r, :, prefix_len + width - len(s) :] for layer in own.layers],
                logits[r],
                len(s),
                copies[key],
            )
        elapsed = time.perf_counter() - start
        real = sum(len(s) for s in suffixes)
        for i in range(len(ids)):
            if key_of(i) in fresh:
                spent[i] += elapsed * (len(ids[i]) - prefix_len) / real / copies[key_of(i)]
        step_start += elapsed  # the step this prefill interrupted is charged without it

    def admit() -> tuple[list[int], Any]:
        """Fill free rows (and new ones up to the limit) with waiting prompts; (their rows, their logits)."""
        nonlocal waiting, length
        free = [r for r, m in enumerate(members) if m is None]
        room = len(free) + row_limit - len(members)
        if room <= 0 or waiting >= len(queue):
            return [], None
        group = queue[waiting : waiting + room]
        waiting += len(group)
        prefill(group)
        if not layers:  # the first admission: the batch's buffers, shaped like the first prompt's keys
            first = stash[key_of(group[0])]
            for n, k in enumerate(first.keys):
                layer = _batch_layer_class()(k[None], row_limit, capacity)
                if prefix_cache is not None:
                    layer._k[:, :, :prefix_len] = prefix_cache.layers[n].keys[0]
                    layer._v[:, :, :prefix_len] = prefix_cache.layers[n].values[0]
                layers.append(layer)
            cache.layers = layers
            length = prefix_len + widest
            for layer in layers:
                layer.length = length
        rows, logits = [], []
        for i in group:
            r = free.pop(0) if free else len(members)
            if r == len(members):
                members.append(None)
                start_col.append(0)
                steps.append(0)
            entry = stash[key_of(i)]
            col = length - entry.width
            for layer, k, v in zip(layers, entry.keys, entry.values, strict=True):
                layer._k[r, :, col:length] = k
                layer._v[r, :, col:length] = v
            attention[r] = 1
            attention[r, prefix_len:col] = 0
            next_pos[r] = first_pos[r] = prefix_len + entry.width
            members[r], start_col[r], steps[r] = i, col, 0
            columns[i], generated[i] = [], []
            rows.append(r)
            logits.append(entry.logits)
            entry.waiting -= 1
            if not entry.waiting:
                del stash[key_of(i)]
        for layer in layers:
            layer.rows = len(members)
            layer._expose()
        return rows, torch.stack(logits)

    def decide(rows: list[int], logits: Any) -> list[int]:
        """Choose each row's next token; returns the rows still generating."""
        prompts = [members[r] for r in rows]
        if matchers:
            logits = matchers.mask_(logits, prompts)
        if per_prompt is not None:
            chosen = per_prompt.choose(logits, prompts)
        elif temperature > 0:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            chosen = logits.argmax(dim=-1)
        if guards:
            chosen = engine._refuse(guards, logits, chosen, prompts, temperature, generator, per_prompt)
        still = []
        for r, token in zip(rows, chosen.tolist(), strict=True):
            i = members[r]
            generated[i].append(token)
            steps[r] += 1
            tokens[r] = token
            if matchers:
                matchers.accept(i, token)
            abort = on_token is not None and on_token(i, token)
            why = engine.finish_reason(i, token, generated[i], per_prompt, steps[r], max_new_tokens, abort)
            if why is not None:
                done[i] = (generated[i], why)
            else:
                still.append(r)
                back = guards.accept(i, generated[i]) if guards and i in guards else None
                if back is not None:
                    rewind(r, i, back, attention, columns, generated, tokens, next_pos, first_pos)
                continue
            members[r] = None
            finished_tokens[0] += len(generated[i])
            if engine.progress is not None:
                engine.progress(len(done), finished_tokens[0])
        return still

    def compact_rows() -> None:
        """Drop free rows (no prompt waits for them): the live ones move down, in place."""
        keep = [r for r, m in enumerate(members) if m is not None]
        for dst, src in enumerate(keep):
            if dst != src:
                for layer in layers:
                    layer._k[dst, :, :length] = layer._k[src, :, :length]
                    layer._v[dst, :, :length] = layer._v[src, :, :length]
                attention[dst], next_pos[dst], first_pos[dst], tokens[dst] = (
                    attention[src], next_pos[src], first_pos[src], tokens[src]
                )  # fmt: skip
        members[:] = [members[r] for r in keep]
        start_col[:] = [start_col[r] for r in keep]
        steps[:] = [steps[r] for r in keep]
        for layer in layers:
            layer.rows = len(members)
            layer._expose()

    def compact_columns() -> None:
        """Make room for the next column: drop the columns no live row reads, else grow the buffers."""
        nonlocal length, capacity, attention
        live = [r for r, m in enumerate(members) if m is not None]
        oldest = min(start_col[r] for r in live)
        # A prompt still waiting must fit before the current column: keep at least its width after the prefix.
        longest_waiting = len(ids[queue[waiting]]) - prefix_len if waiting < len(queue) else 0
        drop = min(oldest - prefix_len, length - prefix_len - longest_waiting)
        if drop <= 0:
            capacity *= 2
            for layer in layers:
                layer.grow(capacity)
            grown = torch.ones((row_limit, capacity), dtype=torch.long)
            grown[:, :length] = attention[:, :length]
            attention = grown
            return
        for layer in layers:
            for buf in (layer._k, layer._v):
                buf[:, :, prefix_len : length - drop] = buf[:, :, prefix_len + drop : length].clone()
        attention[:, prefix_len : length - drop] = attention[:, prefix_len + drop : length].clone()
        attention[:, length - drop :] = 1
        length -= drop
        for r in range(len(members)):
            start_col[r] = max(prefix_len, start_col[r] - drop)
        for r in live:
            columns[members[r]][:] = [c - drop for c in columns[members[r]]]
        for layer in layers:
            layer.length = length
            layer._expose()

    rows, logits = admit()
    step_start = time.perf_counter()
    while True:
        served = [members[r] for r in rows]
        live = decide(rows, logits) if rows else []
        # A row that just finished frees its slot for the next waiting prompt before the next forward.
        while waiting < len(queue):
            new_rows, new_logits = admit()
            if not new_rows:
                break
            served += [members[r] for r in new_rows]
            live += decide(new_rows, new_logits)
        if not live:
            # Charge the sampling of this last step to the rows that were in it.
            engine._charge(served, step_start, spent)
            break
        if waiting >= len(queue):
            finished = len(members) - len(live)
            if finished and finished >= engine._compact_fraction * len(members):
                compact_rows()
                live = list(range(len(members)))
        if length + 1 > capacity:
            compact_columns()
        for r in live:
            columns[members[r]].append(length)
        rows_now = len(members)
        logits = engine._forward(
            tokens[:rows_now, None], attention[:rows_now, : length + 1], next_pos[:rows_now, None], cache
        )
        length += 1
        next_pos[:rows_now] += 1
        rows = sorted(live)  # refilled rows were appended after the others: back to the logits' order
        logits = logits[torch.tensor(rows)] if len(rows) < rows_now else logits
        engine._charge([members[r] for r in rows], step_start, spent)
        step_start = time.perf_counter()
    rewinds.update({i: n for i, n in guards.rewinds.items() if n})
    refusals.update({i: n for i, n in guards.refusals.items() if n})
    return done
