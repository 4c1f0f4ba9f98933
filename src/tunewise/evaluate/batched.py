"""Generation through transformers' own batched `model.generate` with logits processors: the engine's reference.

`GenerateEngine` has `LocalEngine`'s interface (evaluate/engine.py) and answers `generate` and `sample` with
`model.generate` over left-padded batches of similar length (prompts sorted longest first, at most
`max_batch_size` rows and `max_batch_tokens` padded prompt tokens per batch). Grammar-constrained rows and
the JSON loop guard go through the logits processors of evaluate/processors.py; a row the guard ends for
repeating itself is generated again from its prompt plus the tokens it kept, with the rest of its token
budget. Label scoring, per-request `SamplingParams` and streaming (`on_token`) stay `LocalEngine`'s.

It is the reference the engine is held to, not a path evaluation takes: tests/test_batched.py requires the same
greedy token ids from both on a tiny model in fp32, and bench/generation.py measures the engine against it on
the embedded model (bench/README.md, "Generation engine vs batched generate"). The engine measured faster in
every case: 2.4x-3.4x where prompts share a long prefix and for sampled answers, 6-16% where they share little.
Seeded samples are reproducible but drawn from another random stream than `LocalEngine`'s.

Latency: each batch's measured time (every `generate` call it took) is split among its prompts in proportion
to their prompt plus completion tokens, so the shares add up to the measured time.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.evaluate.constrain import Constraint
from tunewise.evaluate.engine import Generation, LocalEngine, Prompt, SamplingParams

log = logging.getLogger(__name__)


class GenerateEngine(LocalEngine):
    """`LocalEngine`'s interface over batched `model.generate` (see the module docstring)."""

    def generate(
        self,
        prompts: Sequence[Prompt],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        constraint: Constraint | Sequence[Constraint | None] | None = None,
        *,
        params: Sequence[SamplingParams] | None = None,
        on_token: Callable[[int, int], bool | None] | None = None,
        json_guard: bool | Sequence[bool] = False,
    ) -> list[Generation]:
        """As `LocalEngine.generate`; per-prompt `params` and `on_token` streaming are served by it."""
        import torch

        if params is not None or on_token is not None:
            return super().generate(prompts, max_new_tokens, temperature, seed, constraint, params=params,
                                    on_token=on_token, json_guard=json_guard)  # fmt: skip
        if max_new_tokens < 1:
            raise TunewiseError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise TunewiseError(f"temperature must be >= 0, got {temperature}")
        if not prompts:
            return []
        ids = [self.encode(p) for p in prompts]
        if any(not x for x in ids):
            raise TunewiseError("a prompt rendered to zero tokens")
        if isinstance(json_guard, bool):
            guarded = set(range(len(ids))) if json_guard else set()
        else:
            if len(json_guard) != len(ids):
                raise TunewiseError(f"{len(json_guard)} json_guard flags for {len(ids)} prompts")
            guarded = {i for i, flag in enumerate(json_guard) if flag}
        start = time.perf_counter()
        grammars = self._grammars(constraint, len(ids)) or {}
        guarded -= set(grammars)  # a grammar state cannot be rewound
        compile_seconds = time.perf_counter() - start
        spent = [compile_seconds / len(ids)] * len(ids)
        answers: dict[int, list[int]] = {}
        rewinds: Counter[int] = Counter()
        refusals: Counter[int] = Counter()
        batches = self._batches(ids, 0)
        log.info("generating for %d prompts in %d batches with model.generate", len(ids), len(batches))
        # Seeded without disturbing the caller's random state: generate() samples from torch's global generator.
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            torch.manual_seed(seed)
            for batch in batches:
                start = time.perf_counter()
                answers.update(
                    self._batch(batch, ids, max_new_tokens, temperature, grammars, guarded, rewinds, refusals)
                )
                elapsed = time.perf_counter() - start
                weight = {i: len(ids[i]) + len(answers[i]) for i in batch}
                for i in batch:
                    spent[i] += elapsed * weight[i] / sum(weight.values())
        out = []
        for i, prompt_ids in enumerate(ids):
            generated = answers[i]
            stopped = bool(generated) and generated[-1] in self.stop_token_ids
            body = generated[:-1] if stopped else generated
            out.append(
                Generation(
                    text=self.tokenizer.decode(body, skip_special_tokens=True),
                    token_ids=tuple(generated),
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(generated),
                    latency_ms=spent[i] * 1000.0,
                    finish_reason="stop" if stopped else "length",
                    rewinds=rewinds[i],
                    refusals=refusals[i],
                )
            )
        return out

    def _batch(
        self,
        batch: list[int],
        ids: list[list[int]],
        max_new_tokens: int,
        temperature: float,
        grammars: dict[int, Any],
        guarded: set[int],
        rewinds: Counter[int],
        refusals: Counter[int],
    ) -> dict[int, list[int]]:
        """One batch's answers. A row the guard ended is resumed in a further call, with the rows that have the
        same token budget left (rewinds are rare: usually one more call of one row)."""
        done: dict[int, list[int]] = {}
        # (prompt index, tokens kept so far, rebuilt guard tracker or None), grouped by token budget left.
        pending: dict[int, list[tuple[int, list[int], Any]]] = {
            max_new_tokens: [(i, [], None) for i in batch]
        }
        while pending:
            budget = max(pending)
            rows = pending.pop(budget)
            tokens, guard = self._call(rows, ids, budget, temperature, grammars, guarded)
            for r, ((i, kept, _), new) in enumerate(zip(rows, tokens, strict=True)):
                if guard is not None and r in guard.guards:
                    rewinds[i] += guard.guards.rewinds[r]
                    refusals[i] += guard.guards.refusals[r]
                if guard is not None and r in guard.resume:
                    left = budget - guard.used[r]
                    pending.setdefault(left, []).append((i, guard.generated[r], guard.guards.trackers[r]))
                    continue
                end = next((k for k, t in enumerate(new) if t in self.stop_token_ids), None)
                done[i] = kept + new[: budget if end is None else end + 1]
        return done

    def _call(
        self,
        rows: list[tuple[int, list[int], Any]],
        ids: list[list[int]],
        budget: int,
        temperature: float,
        grammars: dict[int, Any],
        guarded: set[int],
    ) -> tuple[list[list[int]], Any]:
        """One `model.generate` call over `rows` (left-padded); each row's new tokens, and the guard processor."""
        import torch
        from transformers import LogitsProcessorList

        from tunewise.evaluate.processors import GrammarProcessor, JsonGuardProcessor

        feeds = [ids[i] + kept for i, kept, _ in rows]
        width = max(len(f) for f in feeds)
        input_ids = torch.full((len(feeds), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(feeds), width), dtype=torch.long)
        for r, f in enumerate(feeds):
            input_ids[r, width - len(f) :] = torch.tensor(f)
            mask[r, width - len(f) :] = 1
        processors = LogitsProcessorList()
        constrained = {r: grammars[i] for r, (i, _, _) in enumerate(rows) if i in grammars}
        if constrained:
            backend = self._grammar_backend()
            processors.append(GrammarProcessor(backend, constrained, width, self.stop_token_ids))
        guard = None
        guard_rows = [r for r, (i, _, _) in enumerate(rows) if i in guarded]
        if guard_rows:
            resumed = {r: (tracker, kept) for r, (_, kept, tracker) in enumerate(rows) if tracker is not None}
            guard = JsonGuardProcessor(guard_rows, self._piece, width, self.stop_token_ids, budget,
                                       temperature > 0, self._end_of_turn_id(), resumed)  # fmt: skip
            processors.append(guard)
        # Plain softmax sampling at `temperature`, as LocalEngine samples: no top-k or top-p filtering.
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if temperature > 0
            else {"do_sample": False}
        )
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=budget,
            eos_token_id=sorted(self.stop_token_ids),
            pad_token_id=self.pad_token_id,
            logits_processor=processors,
            **sampling,
        )
        return out[:, width:].tolist(), guard
