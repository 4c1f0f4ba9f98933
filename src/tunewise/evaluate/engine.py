"""The local generation engine: batched decoding over a transformers causal LM, with a KV cache.

Why not a `model.generate` call per example: on a CPU a 135M model spends most of a one-token decode step in
per-layer overhead, not arithmetic, so decoding one row at a time wastes the machine; and every prompt of an
arm repeats the same system prompt (and few-shot block), which a per-example loop recomputes each time. The
engine therefore:

1. renders each chat with the tokenizer's template (`add_generation_prompt=True`) and tokenizes it;
2. finds the token prefix shared by all prompts (the system prompt, the few-shot block) and, when it is at
   least `min_shared_prefix` tokens, runs it through the model once; its KV cache is copied into every batch
   (positions are absolute, so the same keys serve every row);
3. sorts prompts by remaining length and cuts them into batches (at most `max_batch_size` rows and
   `max_batch_tokens` padded prompt tokens), which keeps padding small;
4. left-pads each batch (pad positions are masked out, so every row's last position is a real token), runs the
   prefill asking only for the last position's logits (full-vocabulary logits over every prompt position
   would be 49k floats per token for nothing), then decodes one token per step for all rows at once.
   Identical prompts in a batch (`sample()`'s n copies of each prompt) are prefilled once and their cache and
   logits copied to each copy's row; rows keep their order, so seeded samples are the same as without it;
5. keeps the KV cache in buffers preallocated for the prompt plus `max_new_tokens` and written in place (a
   transformers DynamicCache whose plain layers are swapped for `_SlotLayer`): a decode step writes one
   position per layer instead of concatenating, i.e. copying, the whole cache as DynamicCache does;
6. stops a row at an end-of-turn token (for SmolLM2 `<|im_end|>`, which is also its pad and eos) or at
   `max_new_tokens`. A finished row stays in the batch (its outputs ignored) until finished rows make up
   `_compact_fraction` of the batch; they are then dropped from the batch and its cache together, so one
   long answer does not make the others pay for its steps, and the cache is not copied once per finished row.

Greedy by default (argmax, the same tie-break as `model.generate`); `temperature > 0` samples with a seeded
generator, for the consistency samples. In fp32 the batched greedy outputs equal per-example
`model.generate` outputs (tested on a tiny model; `bench/generation.py` checks the embedded model).

Latency is measured, then divided fairly among the prompts that shared the compute: the shared-prefix pass is
split equally over all prompts; a batch's prefill is split in proportion to each distinct prompt's real
(unpadded) tokens, a prompt's share equally among its copies; each decode step is split equally among the rows
still generating in it (a finished row waiting to be dropped is charged nothing). So a short answer is not
charged for the steps of a long one, and the per-prompt latencies add up to the measured model time (tokenizing
and detokenizing are not attributed).
It is a prompt's share of the machine's time (what it costs), not the wall time a lone request would see.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError

log = logging.getLogger(__name__)

# A chat (list of {"role", "content"} messages), an already rendered prompt string, or token ids.
Prompt = Sequence[Mapping[str, str]] | str | Sequence[int]

# End-of-turn markers of common chat templates; any that the tokenizer knows stops generation.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass(frozen=True)
class Generation:
    """One prompt's completion and what it cost."""

    text: str
    token_ids: tuple[int, ...]  # generated ids, the end-of-turn token included when one was emitted
    prompt_tokens: int  # the whole rendered prompt, shared prefix included
    completion_tokens: int  # len(token_ids): the end-of-turn token costs a decode step like any other
    latency_ms: float  # this prompt's fair share of the measured time (see the module docstring)
    finish_reason: str  # "stop" (end-of-turn token) or "length" (max_new_tokens reached)


class LocalEngine:
    """Batched generation with a shared-prefix KV cache over a transformers causal LM (see module docstring)."""

    # Finished rows are dropped from a batch (and its cache) once they make up this fraction of its rows: each
    # kept one costs ~1/rows of every later step, each compaction one copy of the live cache.
    _compact_fraction = 0.125
    # Identical prompts within a batch (sample()'s n copies) are prefilled once; tests turn it off to compare.
    _merge_duplicates = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 32,
        max_batch_tokens: int = 8192,
        min_shared_prefix: int = 16,
        stop_token_ids: Sequence[int] | None = None,
    ):
        if max_batch_size < 1 or max_batch_tokens < 1:
            raise TunewiseError("max_batch_size and max_batch_tokens must be at least 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.min_shared_prefix = min_shared_prefix
        self.stop_token_ids = frozenset(stop_token_ids) if stop_token_ids else self._default_stop_ids()
        if not self.stop_token_ids:
            raise TunewiseError(
                "the tokenizer has no end-of-turn or eos token, so generation could never stop early",
                hint="pass stop_token_ids",
            )
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else min(self.stop_token_ids)
        # transformers 5.x renamed the forward argument `past_key_values` to `cache`; accept both.
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> LocalEngine:
        """Load a local model folder in fp32 on the CPU (bf16 is ~400x slower on CPUs without AVX512-BF16)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise TunewiseError(f"no model at {path} (config.json missing)", hint="pass a local model folder")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.eval()
        return cls(model, tokenizer, **kwargs)

    def _default_stop_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in _END_OF_TURN if t in vocab)
        return frozenset(ids)

    # --- prompts ------------------------------------------------------------------------------------------

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: a chat is rendered with the chat template and a generation prompt."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        items = list(prompt)
        if not items:
            raise TunewiseError("empty prompt: a chat needs at least one message")
        if all(isinstance(x, int) for x in items):
            return items
        text = self.tokenizer.apply_chat_template(items, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- generation ---------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """Complete every prompt; results keep the order of `prompts`.

        `temperature == 0` is greedy decoding; above 0, tokens are sampled from softmax(logits / temperature)
        with a generator seeded by `seed` (reproducible for the same prompts and settings).
        """
        import torch

        if max_new_tokens < 1:
            raise TunewiseError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise TunewiseError(f"temperature must be >= 0, got {temperature}")
        if not prompts:
            return []
        ids = [self.encode(p) for p in prompts]
        if any(not x for x in ids):
            raise TunewiseError("a prompt rendered to zero tokens")
        generator = torch.Generator().manual_seed(seed) if temperature > 0 else None
        spent = [0.0] * len(ids)  # seconds of compute attributed to each prompt
        with torch.inference_mode():
            prefix_len, prefix_cache, prefix_seconds = self._shared_prefix(ids)
            for i in range(len(ids)):
                spent[i] += prefix_seconds / len(ids)
            results: dict[int, tuple[list[int], str]] = {}
            batches = self._batches(ids, prefix_len)
            log.info(
                "generating for %d prompts in %d batches (shared prefix: %d tokens, max_new_tokens %d)",
                len(ids),
                len(batches),
                prefix_len,
                max_new_tokens,
            )
            for batch in batches:
                results.update(
                    self._run_batch(
                        batch, ids, prefix_len, prefix_cache, max_new_tokens, temperature, generator, spent
                    )
                )
        out = []
        for i, prompt_ids in enumerate(ids):
            generated, reason = results[i]
            body = generated[:-1] if reason == "stop" else generated
            out.append(
                Generation(
                    text=self.tokenizer.decode(body, skip_special_tokens=True),
                    token_ids=tuple(generated),
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(generated),
                    latency_ms=spent[i] * 1000.0,
                    finish_reason=reason,
                )
            )
        return out

    def sample(
        self,
        prompts: Sequence[Prompt],
        n: int,
        temperature: float = 0.7,
        seed: int = 0,
        max_new_tokens: int = 64,
    ) -> list[list[Generation]]:
        """n sampled completions per prompt (the consistency samples), batched together."""
        if n < 1:
            raise TunewiseError(f"n must be at least 1, got {n}")
        if temperature <= 0:
            raise TunewiseError(
                "sampling needs temperature > 0 (temperature 0 is greedy: n identical outputs)"
            )
        flat = self.generate(
            [p for p in prompts for _ in range(n)],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    # --- internals ----------------------------------------------------------------------------------------

    def _new_cache(self, capacity: int | None = None) -> Any:
        """A DynamicCache; with `capacity`, its plain layers preallocate that many positions (see `_SlotLayer`)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if capacity is not None:
            # Only plain full-attention layers are swapped: sliding-window or linear-attention layers keep their
            # own bookkeeping (correct, just slower).
            cache.layers = [
                _slot_layer(capacity) if type(layer) is _dynamic_layer() else layer for layer in cache.layers
            ]
        return cache

    def _forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, cache: Any) -> Any:
        kwargs = {self._cache_arg: cache, "use_cache": True}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        return out.logits[:, -1, :]

    def _shared_prefix(self, ids: list[list[int]]) -> tuple[int, Any, float]:
        """Longest token prefix common to all prompts, run once; (length, cache, seconds), or (0, None, 0)."""
        import torch

        # Leave every prompt at least one token of its own: the prefill must produce each row's next logits.
        limit = min(len(x) for x in ids) - 1
        first = ids[0]
        n = 0
        while n < limit and all(x[n] == first[n] for x in ids):
            n += 1
        if len(ids) < 2 or n < self.min_shared_prefix:
            return 0, None, 0.0
        start = time.perf_counter()
        cache = self._new_cache()
        prefix = torch.tensor([first[:n]])
        self._forward(prefix, torch.ones_like(prefix), torch.arange(n)[None, :], cache)
        return n, cache, time.perf_counter() - start

    def _batches(self, ids: list[list[int]], prefix_len: int) -> list[list[int]]:
        """Prompt indices grouped into batches of similar length (longest first, so memory fails early if at all)."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = len(ids[current[0]]) - prefix_len if current else len(ids[i]) - prefix_len
            if current and (
                len(current) >= self.max_batch_size or (len(current) + 1) * width > self.max_batch_tokens
            ):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _run_batch(
        self,
        batch: list[int],
        ids: list[list[int]],
        prefix_len: int,
        prefix_cache: Any,
        max_new_tokens: int,
        temperature: float,
        generator: Any,
        spent: list[float],
    ) -> dict[int, tuple[list[int], str]]:
        import torch

        start = time.perf_counter()
        rows = len(batch)
        # Identical prompts in a batch (sample() repeats each prompt n times) are prefilled once; their cache and
        # logits are then copied to every row that asked for them. Rows keep their order, so sampling draws the
        # same random numbers in the same order as if each copy had been prefilled on its own.
        unique: dict[Any, int] = {}  # prompt suffix -> its row in the prefill
        suffixes: list[list[int]] = []
        row_unique = []  # each batch row's prefill row
        for r, i in enumerate(batch):
            key = tuple(ids[i][prefix_len:]) if self._merge_duplicates else r
            if key not in unique:
                unique[key] = len(suffixes)
                suffixes.append(ids[i][prefix_len:])
            row_unique.append(unique[key])
        width = max(len(s) for s in suffixes)
        # Left padding: every row's last column is its last real token, so one logits slice serves all rows.
        input_ids = torch.full((len(suffixes), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(suffixes), width), dtype=torch.long)
        for r, s in enumerate(suffixes):
            input_ids[r, width - len(s) :] = torch.tensor(s)
            mask[r, width - len(s) :] = 1
        # RoPE positions continue after the shared prefix; pad positions are masked, any valid index will do.
        positions = (prefix_len + mask.cumsum(-1) - 1).clamp(min=prefix_len)
        # Room for the whole prompt and every generated token, so decode steps write in place (see _SlotLayer).
        total = prefix_len + width + max_new_tokens
        cache = self._new_cache(capacity=total)
        if prefix_cache is not None:
            for n, (layer, shared) in enumerate(zip(cache.layers, prefix_cache.layers, strict=True)):
                if hasattr(layer, "seed"):
                    layer.seed(shared.keys, shared.values, len(suffixes))
                else:
                    repeated = copy.deepcopy(shared)
                    repeated.batch_repeat_interleave(len(suffixes))
                    cache.layers[n] = repeated
        # The attention mask for every position the batch will reach; each forward passes the filled part.
        attention = torch.ones((len(suffixes), total), dtype=torch.long)
        attention[:, prefix_len : prefix_len + width] = mask
        length = prefix_len + width
        logits = self._forward(input_ids, attention[:, :length], positions, cache)
        next_pos = positions[:, -1] + 1
        if len(suffixes) < rows:
            expand = torch.tensor(row_unique)
            cache.batch_select_indices(expand)
            logits, attention, next_pos = logits[expand], attention[expand], next_pos[expand]
        prefill = time.perf_counter() - start
        # Each distinct prompt's share is in proportion to its real tokens, split equally among its copies.
        real = [len(s) for s in suffixes]
        copies = [row_unique.count(u) for u in range(len(suffixes))]
        for r, i in enumerate(batch):
            u = row_unique[r]
            spent[i] += prefill * real[u] / sum(real) / copies[u]

        # Rows of the batch (and of its cache), and the prompt index of each; a finished row stays until enough
        # rows have finished to pay for compacting the cache (a copy of the live part), then rows are dropped.
        members = list(batch)
        live = list(range(rows))  # batch rows still generating
        generated: dict[int, list[int]] = {i: [] for i in batch}
        done: dict[int, tuple[list[int], str]] = {}
        step_start = time.perf_counter()
        for step in range(max_new_tokens):
            current = logits if len(live) == len(members) else logits[torch.tensor(live)]
            if temperature > 0:
                probs = torch.softmax(current.float() / temperature, dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                chosen = current.argmax(dim=-1)
            # A finished row kept in the batch is fed its last token again; its outputs are ignored.
            if len(live) == len(members):
                tokens = chosen
            else:
                tokens[torch.tensor(live)] = chosen
            still = []
            for r, token in zip(live, chosen.tolist(), strict=True):
                i = members[r]
                generated[i].append(token)
                if token in self.stop_token_ids:
                    done[i] = (generated[i], "stop")
                elif step + 1 == max_new_tokens:
                    done[i] = (generated[i], "length")
                else:
                    still.append(r)
            if not still:
                # Charge the sampling of this last step to the rows that were in it.
                self._charge([members[r] for r in live], step_start, spent)
                break
            finished = len(members) - len(still)
            if finished and finished >= self._compact_fraction * len(members):
                # Drop finished rows in bulk (see _compact_fraction), not one copy of the cache per finished row.
                index = torch.tensor(still)
                cache.batch_select_indices(index)
                attention, next_pos, tokens = attention[index], next_pos[index], tokens[index]
                members = [members[r] for r in still]
                still = list(range(len(still)))
            logits = self._forward(tokens[:, None], attention[:, : length + 1], next_pos[:, None], cache)
            length += 1
            next_pos = next_pos + 1
            # This step's forward served the rows still generating; the rows that finished only took part in the
            # sampling. A finished row still in the batch is charged nothing: the step's time is split among the
            # rows that asked for it, so the shares still add up to the measured time.
            self._charge([members[r] for r in still], step_start, spent)
            live = still
            step_start = time.perf_counter()
        return done

    @staticmethod
    def _charge(rows: list[int], since: float, spent: list[float]) -> None:
        elapsed = time.perf_counter() - since
        for i in rows:
            spent[i] += elapsed / len(rows)


def _dynamic_layer() -> type:
    from transformers.cache_utils import DynamicLayer

    return DynamicLayer


@functools.cache
def _slot_layer_class() -> type:
    """A DynamicLayer whose keys/values live in a preallocated buffer, written in place.

    DynamicLayer concatenates the whole cache with the new position at every decode step (a full copy of every
    layer's keys and values per generated token); this one writes the new position into spare capacity and
    exposes `keys`/`values` as views of the filled part, so a decode step copies one position. Everything else
    (mask sizes, sequence length) behaves as in DynamicLayer, so the model's forward is unchanged.
    """
    import torch

    DynamicLayer = _dynamic_layer()

    class _SlotLayer(DynamicLayer):
        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity
            self.length = 0

        def _allocate(self, like: torch.Tensor, rows: int) -> None:
            shape = (rows, like.shape[1], self.capacity, like.shape[3])
            self._k = like.new_empty(shape)
            self._v = like.new_empty(shape)
            self.device = like.device
            self.is_initialized = True

        def _expose(self) -> None:
            self.keys = self._k[:, :, : self.length]
            self.values = self._v[:, :, : self.length]

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self._allocate(key_states, key_states.shape[0])
            self._expose()

        def seed(self, keys: torch.Tensor, values: torch.Tensor, rows: int) -> None:
            """Start from a one-row cache (the shared prefix), copied into each of `rows` rows."""
            self._allocate(keys, rows)
            n = keys.shape[-2]
            self._k[:, :, :n] = keys
            self._v[:, :, :n] = values
            self.length = n
            self._expose()

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            start, end = self.length, self.length + key_states.shape[-2]
            if end > self.capacity:  # not expected (capacity covers the prompt and max_new_tokens): grow
                old_k, old_v = self._k, self._v
                self.capacity = max(end, 2 * self.capacity)
                self._allocate(old_k, old_k.shape[0])
                self._k[:, :, :start] = old_k[:, :, :start]
                self._v[:, :, :start] = old_v[:, :, :start]
            self._k[:, :, start:end] = key_states
            self._v[:, :, start:end] = value_states
            self.length = end
            self._expose()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_repeat_interleave(self, repeats: int) -> None:
            rows = self._k.shape[0]
            self.batch_select_indices(torch.arange(rows).repeat_interleave(repeats))

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if not self.is_initialized:
                return
            order = indices.tolist()
            n = self.length
            if all(a < b for a, b in zip(order, order[1:], strict=False)):
                # Dropping rows (indices increasing): move the kept rows down in place, then narrow the view;
                # only the rows that move are copied, and nothing is allocated.
                for dst, src in enumerate(order):
                    if dst != src:
                        self._k[dst, :, :n] = self._k[src, :, :n]
                        self._v[dst, :, :n] = self._v[src, :, :n]
                self._k, self._v = self._k[: len(order)], self._v[: len(order)]
            else:
                # Repeating or reordering rows (a prompt's prefill expanded to its samples): a new buffer.
                old_k, old_v = self._k, self._v
                self._allocate(old_k, len(order))
                self._k[:, :, :n] = old_k[indices, :, :n]
                self._v[:, :, :n] = old_v[indices, :, :n]
            self._expose()

    return _SlotLayer


def _slot_layer(capacity: int) -> Any:
    return _slot_layer_class()(capacity)
