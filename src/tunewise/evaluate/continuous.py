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

from tunewise.errors import TunewiseError
from tunewise.evaluate.constrain import RowMatchers
from tunewise.evaluate.engine import Generation, _PerPrompt, rewind
from tunewise.evaluate.loopguard import JsonTracker, RowGuards


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


class ContinuousBatch:
    """The rows of one refilled batch and their cache: prompts are admitted into free rows, each row chooses its
    tokens, the batch steps forward. `run_continuous` drives it over a known list of prompts (evaluation);
    `OpenBatch` over prompts that arrive while it decodes (the server). Prompts are named by an index into
    `ids` (a list or a dict); `spent` is indexed the same way."""

    def __init__(
        self,
        engine: Any,
        ids: Any,
        prefix_len: int,
        prefix_cache: Any,
        row_limit: int,
        capacity: int,
        width: int,
        max_new_tokens: int,
        temperature: float,
        generator: Any,
        spent: Any,
        matchers: Any,
        per_prompt: Any,
        on_token: Callable[[int, int], bool | None] | None,
        guards: Any,
        key_of: Callable[[int], Any],
        copies: dict[Any, int] | None,
    ):
        import torch

        self.engine, self.ids, self.prefix_len, self.prefix_cache = engine, ids, prefix_len, prefix_cache
        self.row_limit, self.capacity, self.width = row_limit, capacity, width
        self.max_new_tokens, self.temperature, self.generator, self.spent = (
            max_new_tokens, temperature, generator, spent
        )  # fmt: skip
        self.matchers, self.per_prompt, self.on_token, self.guards = matchers, per_prompt, on_token, guards
        # Identical prompts share one prefill (None: every prompt is its own, admitted once).
        self.key_of, self.copies = key_of, copies
        self.stash: dict[Any, _Prefilled] = {}
        self.layers: list[Any] = []  # the batch's cache layers, allocated at the first admission
        self.cache = engine._new_cache()
        self.attention = torch.ones((row_limit, capacity), dtype=torch.long)
        self.next_pos = torch.zeros(row_limit, dtype=torch.long)
        self.first_pos = torch.zeros(row_limit, dtype=torch.long)
        self.tokens = torch.zeros(row_limit, dtype=torch.long)
        self.members: list[int | None] = []  # prompt index of each batch row; None: a free row
        self.start_col: list[int] = []  # each row's first prompt column after the prefix
        self.steps: list[int] = []  # tokens chosen by each row so far (rewinds included)
        self.columns: dict[int, list[int]] = {}  # cache column of each generated token fed, per prompt
        self.generated: dict[int, list[int]] = {}
        self.done: dict[int, tuple[list[int], str]] = {}
        self.length = 0  # columns filled
        self.step_start = 0.0  # when the current decode step began (a prefill in it is charged apart)
        self.finished_tokens = 0  # completion tokens of the finished rows, for `engine.progress`

    def room(self) -> int:
        """Rows a prompt can be admitted into now: the free ones and the ones not yet used."""
        return sum(m is None for m in self.members) + self.row_limit - len(self.members)

    def prefill(self, group: list[int]) -> None:
        """Prefill the distinct suffixes of `group` not yet in the stash, left-padded together."""
        import torch

        engine, ids, prefix_len, key_of = self.engine, self.ids, self.prefix_len, self.key_of
        start = time.perf_counter()
        fresh: list[Any] = []
        for i in group:
            key = key_of(i)
            if key not in self.stash and key not in fresh:
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
        if self.prefix_cache is not None:
            for layer, shared in zip(own.layers, self.prefix_cache.layers, strict=True):
                layer.seed(shared.keys, shared.values, len(suffixes))
        logits = engine._forward(input_ids, mask, positions, own)
        for r, (key, s) in enumerate(zip(fresh, suffixes, strict=True)):
            self.stash[key] = _Prefilled(
                [layer.keys[r, :, prefix_len + width - len(s) :] for layer in own.layers],
                [layer.values[r, :, prefix_len + width - len(s) :] for layer in own.layers],
                logits[r],
                len(s),
                self.copies[key] if self.copies is not None else 1,
            )
        elapsed = time.perf_counter() - start
        real = sum(len(s) for s in suffixes)
        if self.copies is None:
            for i in group:
                self.spent[i] += elapsed * (len(ids[i]) - prefix_len) / real
        else:
            for i in range(len(ids)):
                if key_of(i) in fresh:
                    self.spent[i] += elapsed * (len(ids[i]) - prefix_len) / real / self.copies[key_of(i)]
        self.step_start += elapsed  # the step this prefill interrupted is charged without it

    def admit(self, group: list[int]) -> tuple[list[int], Any]:
        """Put the prompts of `group` (at most `room()`) into free rows, and new ones up to the limit; (their
        rows, their logits). A prompt wider than the columns before the current one shifts them (`make_room`)."""
        import torch

        prefix_len, key_of = self.prefix_len, self.key_of
        self.prefill(group)
        free = [r for r, m in enumerate(self.members) if m is None]
        if not self.layers:  # the first admission: the batch's buffers, shaped like the first prompt's keys
            first = self.stash[key_of(group[0])]
            for n, k in enumerate(first.keys):
                layer = _batch_layer_class()(k[None], self.row_limit, self.capacity)
                if self.prefix_cache is not None:
                    layer._k[:, :, :prefix_len] = self.prefix_cache.layers[n].keys[0]
                    layer._v[:, :, :prefix_len] = self.prefix_cache.layers[n].values[0]
                self.layers.append(layer)
            self.cache.layers = self.layers
            self.length = prefix_len + max([self.width] + [self.stash[key_of(i)].width for i in group])
            for layer in self.layers:
                layer.length = self.length
        else:
            self.make_room(max(self.stash[key_of(i)].width for i in group))
        length, attention = self.length, self.attention
        rows, logits = [], []
        for i in group:
            r = free.pop(0) if free else len(self.members)
            if r == len(self.members):
                self.members.append(None)
                self.start_col.append(0)
                self.steps.append(0)
            entry = self.stash[key_of(i)]
            col = length - entry.width
            for layer, k, v in zip(self.layers, entry.keys, entry.values, strict=True):
                layer._k[r, :, col:length] = k
                layer._v[r, :, col:length] = v
            attention[r] = 1
            attention[r, prefix_len:col] = 0
            self.next_pos[r] = self.first_pos[r] = prefix_len + entry.width
            self.members[r], self.start_col[r], self.steps[r] = i, col, 0
            self.columns[i], self.generated[i] = [], []
            rows.append(r)
            logits.append(entry.logits)
            entry.waiting -= 1
            if not entry.waiting:
                del self.stash[key_of(i)]
        for layer in self.layers:
            layer.rows = len(self.members)
            layer._expose()
        return rows, torch.stack(logits)

    def decide(self, rows: list[int], logits: Any) -> list[int]:
        """Choose each row's next token; returns the rows still generating."""
        import torch

        engine, members, generated, guards, matchers = (
            self.engine, self.members, self.generated, self.guards, self.matchers
        )  # fmt: skip
        per_prompt, temperature, generator = self.per_prompt, self.temperature, self.generator
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
            self.steps[r] += 1
            self.tokens[r] = token
            if matchers:
                matchers.accept(i, token)
            abort = self.on_token is not None and self.on_token(i, token)
            why = engine.finish_reason(
                i, token, generated[i], per_prompt, self.steps[r], self.max_new_tokens, abort
            )
            if why is not None:
                self.done[i] = (generated[i], why)
            else:
                still.append(r)
                back = guards.accept(i, generated[i]) if guards and i in guards else None
                if back is not None:
                    rewind(r, i, back, self.attention, self.columns, generated, self.tokens, self.next_pos,
                           self.first_pos)  # fmt: skip
                continue
            members[r] = None
            self.finished_tokens += len(generated[i])
            if engine.progress is not None:
                engine.progress(len(self.done), self.finished_tokens)
        return still

    def compact_rows(self) -> None:
        """Drop free rows (no prompt waits for them): the live ones move down, in place."""
        members, attention, next_pos, first_pos, tokens = (
            self.members, self.attention, self.next_pos, self.first_pos, self.tokens
        )  # fmt: skip
        keep = [r for r, m in enumerate(members) if m is not None]
        for dst, src in enumerate(keep):
            if dst != src:
                for layer in self.layers:
                    layer._k[dst, :, : self.length] = layer._k[src, :, : self.length]
                    layer._v[dst, :, : self.length] = layer._v[src, :, : self.length]
                attention[dst], next_pos[dst], first_pos[dst], tokens[dst] = (
                    attention[src], next_pos[src], first_pos[src], tokens[src]
                )  # fmt: skip
        members[:] = [members[r] for r in keep]
        self.start_col[:] = [self.start_col[r] for r in keep]
        self.steps[:] = [self.steps[r] for r in keep]
        for layer in self.layers:
            layer.rows = len(members)
            layer._expose()

    def _grow(self, capacity: int) -> None:
        import torch

        self.capacity = capacity
        for layer in self.layers:
            layer.grow(capacity)
        grown = torch.ones((self.row_limit, capacity), dtype=torch.long)
        grown[:, : self.length] = self.attention[:, : self.length]
        self.attention = grown

    def compact_columns(self, keep: int) -> None:
        """Make room for the next column: drop the columns no live row reads, keeping at least `keep` after the
        prefix (the width of a prompt still to be admitted), else grow the buffers."""
        prefix_len, length = self.prefix_len, self.length
        live = [r for r, m in enumerate(self.members) if m is not None]
        oldest = min(self.start_col[r] for r in live)
        drop = min(oldest - prefix_len, length - prefix_len - keep)
        if drop <= 0:
            self._grow(self.capacity * 2)
            return
        for layer in self.layers:
            for buf in (layer._k, layer._v):
                buf[:, :, prefix_len : length - drop] = buf[:, :, prefix_len + drop : length].clone()
        self.attention[:, prefix_len : length - drop] = self.attention[:, prefix_len + drop : length].clone()
        self.attention[:, length - drop :] = 1
        self.length = length - drop
        for r in range(len(self.members)):
            self.start_col[r] = max(prefix_len, self.start_col[r] - drop)
        for r in live:
            self.columns[self.members[r]][:] = [c - drop for c in self.columns[self.members[r]]]
        for layer in self.layers:
            layer.length = self.length
            layer._expose()

    def make_room(self, width: int) -> None:
        """Let a prompt of `width` tokens (after the prefix) fit before the current column: when the filled
        columns are fewer, they move right and the columns opened before them are masked for every row (keys
        carry their RoPE positions, so only the mask sees where they sit)."""
        shift = width - (self.length - self.prefix_len)
        if shift <= 0:
            return
        if self.length + shift + 1 > self.capacity:
            self._grow(max(2 * self.capacity, self.length + shift + 1))
        p, n = self.prefix_len, self.length
        for layer in self.layers:
            for buf in (layer._k, layer._v):
                buf[:, :, p + shift : n + shift] = buf[:, :, p:n].clone()
        self.attention[:, p + shift : n + shift] = self.attention[:, p:n].clone()
        self.attention[:, p : p + shift] = 0
        self.length = n + shift
        for r, i in enumerate(self.members):
            self.start_col[r] += shift
            if i is not None:
                self.columns[i][:] = [c + shift for c in self.columns[i]]
        for layer in self.layers:
            layer.length = self.length
            layer._expose()

    def forward(self, live: list[int]) -> tuple[list[int], Any]:
        """One decode step of every row (free rows compute for nothing until compacted); (the `live` rows in
        order, their logits), the step charged to them."""
        import torch

        for r in live:
            self.columns[self.members[r]].append(self.length)
        rows_now = len(self.members)
        logits = self.engine._forward(
            self.tokens[:rows_now, None],
            self.attention[:rows_now, : self.length + 1],
            self.next_pos[:rows_now, None],
            self.cache,
        )
        self.length += 1
        self.next_pos[:rows_now] += 1
        rows = sorted(live)  # refilled rows were appended after the others: back to the logits' order
        logits = logits[torch.tensor(rows)] if len(rows) < rows_now else logits
        self.engine._charge([self.members[r] for r in rows], self.step_start, self.spent)
        self.step_start = time.perf_counter()
        return rows, logits


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
    queue = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    key_of = (lambda i: tuple(ids[i][prefix_len:])) if engine._merge_duplicates else (lambda i: i)
    copies: dict[Any, int] = {}
    for i in queue:
        copies[key_of(i)] = copies.get(key_of(i), 0) + 1
    widest = len(ids[queue[0]]) - prefix_len
    # Rows at once: as the static batches, at most max_batch_size rows of at most max_batch_tokens prompt tokens.
    row_limit = max(1, min(engine.max_batch_size, engine.max_batch_tokens // max(1, widest)))
    # Spare columns: a compaction moves the live columns once per `slack` steps at most.
    slack = engine._column_slack or max(32, max_new_tokens)
    matchers = (
        RowMatchers(engine._grammar_backend(), {i: g for i, g in grammars.items() if g}) if grammars else None
    )
    guards = RowGuards(
        [i for i in queue if i in guarded and not (grammars and grammars.get(i))], engine._piece
    )
    batch = ContinuousBatch(
        engine, ids, prefix_len, prefix_cache, row_limit, prefix_len + widest + max_new_tokens + slack, widest,
        max_new_tokens, temperature, generator, spent, matchers, per_prompt, on_token, guards, key_of, copies,
    )  # fmt: skip
    waiting = 0  # next prompt of `queue` to admit

    def admit() -> tuple[list[int], Any]:
        """Fill free rows (and new ones up to the limit) with waiting prompts; (their rows, their logits)."""
        nonlocal waiting
        room = batch.room()
        if room <= 0 or waiting >= len(queue):
            return [], None
        group = queue[waiting : waiting + room]
        waiting += len(group)
        return batch.admit(group)

    rows, logits = admit()
    batch.step_start = time.perf_counter()
    while True:
        served = [batch.members[r] for r in rows]
        live = batch.decide(rows, logits) if rows else []
        # A row that just finished frees its slot for the next waiting prompt before the next forward.
        while waiting < len(queue):
            new_rows, new_logits = admit()
            if not new_rows:
                break
            served += [batch.members[r] for r in new_rows]
            live += batch.decide(new_rows, new_logits)
        if not live:
            # Charge the sampling of this last step to the rows that were in it.
            engine._charge(served, batch.step_start, spent)
            break
        if waiting >= len(queue):
            finished = len(batch.members) - len(live)
            if finished and finished >= engine._compact_fraction * len(batch.members):
                batch.compact_rows()
                live = list(range(len(batch.members)))
        if batch.length + 1 > batch.capacity:
            # A prompt still waiting must fit before the current column: keep at least its width.
            batch.compact_columns(len(ids[queue[waiting]]) - prefix_len if waiting < len(queue) else 0)
        rows, logits = batch.forward(live)
    rewinds.update({i: n for i, n in guards.rewinds.items() if n})
    refusals.update({i: n for i, n in guards.refusals.items() if n})
    return batch.done


class _OpenParams(_PerPrompt):
    """The `SamplingParams` of an open batch's prompts, added as they are admitted and dropped as they finish
    (keyed by prompt index, so a batch that lives for hours holds only its current rows' settings)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.params: dict[int, Any] = {}
        self.generators: dict[int, Any] = {}
        self.windows: dict[int, int] = {}
        self.max_new_tokens = 0

    def add(self, i: int, params: Any) -> None:
        one = _PerPrompt([params], 1, self.tokenizer)
        self.params[i], self.generators[i], self.windows[i] = one.params[0], one.generators[0], one.windows[0]

    def drop(self, i: int) -> None:
        for table in (self.params, self.generators, self.windows):
            table.pop(i, None)


class OpenBatch:
    """A continuous batch whose prompts arrive while it decodes (`tunewise serve`).

    `admit(requests)` prefills new prompts (together, left-padded) into free rows; `step()` chooses the next
    token of every row (a new row's first one comes from its prefill), then runs one decode forward. A prompt
    that ends leaves its row at once: `take_finished()` hands over its `Generation`, and its row is free for the
    next admission. Each request brings its own `SamplingParams` (a seeded generator per sampled row, so a
    row's tokens do not depend on its companions), its constraint and its loop guard flag. There is no shared
    prefix (prompts are not known in advance); a prompt wider than the columns before the current one moves
    them right (`ContinuousBatch.make_room`), so any prompt fits. The caller holds `torch.inference_mode` off:
    each call enters it.
    """

    def __init__(
        self, engine: Any, row_limit: int, on_token: Callable[[int, int], bool | None] | None = None
    ):
        self.engine = engine
        self.row_limit = row_limit
        self.on_token = on_token
        self.ids: dict[int, list[int]] = {}
        self.spent: dict[int, float] = {}
        self.per_prompt = _OpenParams(engine.tokenizer)
        self.matchers: RowMatchers | None = None  # built at the first constrained request
        self.guards = RowGuards([], engine._piece)
        self.batch: ContinuousBatch | None = None  # built at the first admission, sized by its prompts
        self.live: list[int] = []  # rows still generating, whose logits the last forward gave
        self._pending: list[tuple[list[int], Any]] = []  # admitted rows and their prefill logits
        self._next = 0
        self._finished: list[tuple[int, Generation]] = []

    def room(self) -> int:
        return self.row_limit if self.batch is None else self.batch.room()

    def rows(self) -> int:
        """Rows generating or admitted."""
        return len(self.live) + sum(len(rows) for rows, _ in self._pending)

    def prompts(self) -> list[int]:
        """The prompt index of every row generating or admitted."""
        if self.batch is None:
            return []
        return [self.batch.members[r] for r in self.live] + [
            self.batch.members[r] for rows, _ in self._pending for r in rows
        ]

    def admit(self, requests: list[Any]) -> list[int]:
        """Prefill `requests` (objects with `prompt_ids`, `params`, `constraint` and `json_guard`; at most
        `room()`) into free rows; their prompt indices. If the prefill fails nothing is admitted."""
        import torch

        keys = list(range(self._next, self._next + len(requests)))
        try:
            with torch.inference_mode():
                for key, request in zip(keys, requests, strict=True):
                    self._register(key, request)
                if self.batch is None:
                    self.batch = self._new_batch(keys)
                rows, logits = self.batch.admit(keys)
        except Exception:
            for key in keys:
                self._forget(key)
            raise
        self._next += len(requests)
        self._pending.append((rows, logits))
        return keys

    def step(self) -> None:
        """Choose the next token of every row, then run the decode forward of the rows still generating."""
        import torch

        batch = self.batch
        if batch is None:
            return
        engine = self.engine
        with torch.inference_mode():
            if self._pending:
                rows = [r for rows, _ in self._pending for r in rows]
                logits = torch.cat([logits for _, logits in self._pending])
                self._pending = []
                self.live += batch.decide(rows, logits)
                self._collect()
            if not self.live:
                return
            finished = len(batch.members) - len(self.live)
            if finished and finished >= engine._compact_fraction * len(batch.members):
                batch.compact_rows()
                self.live = list(range(len(batch.members)))
            if batch.length + 1 > batch.capacity:
                batch.compact_columns(0)
            rows, logits = batch.forward(self.live)
            self.live = batch.decide(rows, logits)
            self._collect()

    def take_finished(self) -> list[tuple[int, Generation]]:
        """The prompts that ended since the last call, with their generations."""
        finished, self._finished = self._finished, []
        return finished

    def _new_batch(self, keys: list[int]) -> ContinuousBatch:
        width = max(len(self.ids[i]) for i in keys)
        longest = max(self.per_prompt.limit(i) for i in keys)
        slack = self.engine._column_slack or max(32, longest)
        return ContinuousBatch(
            self.engine, self.ids, 0, None, self.row_limit, width + longest + slack, width, longest, 0.0, None,
            self.spent, self.matchers, self.per_prompt, self.on_token, self.guards, lambda i: i, None,
        )  # fmt: skip

    def _register(self, key: int, request: Any) -> None:
        if not request.prompt_ids:
            raise TunewiseError("a prompt rendered to zero tokens")
        self.ids[key] = list(request.prompt_ids)
        self.spent[key] = 0.0
        self.per_prompt.add(key, request.params)
        if request.constraint is not None:
            started = time.perf_counter()
            backend = self.engine._grammar_backend()
            grammar = backend.compile(request.constraint)
            self.spent[key] += time.perf_counter() - started
            if grammar is not None:
                if self.matchers is None:
                    self.matchers = RowMatchers(backend, {})
                    if self.batch is not None:
                        self.batch.matchers = self.matchers
                self.matchers.matchers[key] = backend.matcher(grammar)
                if grammar.kind == "json":
                    self.matchers.json_rows.add(key)
                return
        if request.json_guard:
            self.guards.trackers[key] = JsonTracker()
            self.guards.rewinds[key] = self.guards.refusals[key] = 0

    def _forget(self, key: int) -> None:
        for table in (self.ids, self.spent, self.guards.trackers, self.guards.rewinds, self.guards.refusals):
            table.pop(key, None)
        self.per_prompt.drop(key)
        if self.matchers is not None:
            self.matchers.matchers.pop(key, None)
            self.matchers.json_rows.discard(key)
        if self.batch is not None:
            for table in (self.batch.done, self.batch.generated, self.batch.columns):
                table.pop(key, None)

    def _collect(self) -> None:
        """Turn the rows that ended into generations (as `LocalEngine.generate` does) and forget them."""
        engine = self.engine
        for i, (generated, reason) in list(self.batch.done.items()):
            # A stop string ends a row without an end-of-turn token; its text is cut before the stop string.
            body = generated[:-1] if generated and generated[-1] in engine.stop_token_ids else generated
            text = self.per_prompt.cut(i, engine.tokenizer.decode(body, skip_special_tokens=True))
            generation = Generation(
                text=text,
                token_ids=tuple(generated),
                prompt_tokens=len(self.ids[i]),
                completion_tokens=len(generated),
                latency_ms=self.spent[i] * 1000.0,
                finish_reason=reason,
                rewinds=self.guards.rewinds.get(i, 0),
                refusals=self.guards.refusals.get(i, 0),
            )
            self._finished.append((i, generation))
            self._forget(i)
