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
   long answer does not make the others pay for its steps, and the cache is not copied once per finished row;
7. with `json_guard`, takes a row that starts repeating itself inside JSON back to before the repetition: the
   dropped positions leave the row's attention mask (their cache slots stay, unread) and the last kept token is
   fed again at its own position; and it refuses a token that would close a JSON container with the wrong
   bracket, choosing again without it (evaluate/loopguard.py).

Steps 3 and 6 describe static batches (`continuous = False`). By default (`continuous = True`) the batch is
refilled instead: a row that finishes hands its slot to the next waiting prompt in the same step, prefilled on
its own and copied into the batch's cache (evaluate/continuous.py), so the batch stays full while prompts wait.
`generate_with_samples()` asks each prompt n + 1 times (the greedy row and its consistency samples), which the
merging of identical prompts prefills once; `generate_arms()` does so for several arms in one call, so a prompt
two arms ask is prefilled once and one batch serves all their rows. docs/engine.md lists the levers and their
switches.

Why not transformers' own batched `model.generate` either (evaluate/batched.py: left-padded batches, the grammar
and the loop guard as logits processors, identical greedy outputs): on the demo's prompts with the embedded
model on a CPU, the engine took 2.4x to 3.4x less time for the shapes that share a long prefix (a 500-token
system prompt, an 824-token few-shot block, schema-constrained decoding) and for 3 samples per prompt, almost
all of it from steps 2 and 4 (the shared prefix and each sampled prompt prefilled once). With a short system
prompt or none (the fine-tuned arm) it was 6-16% faster, never slower, so evaluation uses the engine for every
arm, and batched `generate` stays the reference its greedy outputs are tested against. Figures:
bench/generation.py, bench/README.md ("Generation engine vs batched generate").

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.evaluate.constrain import Constraint, GrammarBackend, RowMatchers
from tunewise.evaluate.loopguard import RowGuards

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
    # With `generate(params=...)` a stop string also gives "stop"; an `on_token` callback's abort gives "abort".
    rewinds: int = 0  # times the JSON loop guard took the row back (evaluate/loopguard.py)
    refusals: int = 0  # tokens the JSON guard refused (a "," in a sealed container, a mismatched bracket)


@dataclass(frozen=True)
class ArmRequest:
    """One arm's prompts for `LocalEngine.generate_arms`: decoded under `constraint` (None: free), its free rows
    under the JSON loop guard when `json_guard`."""

    prompts: Sequence[Prompt]
    constraint: Constraint | None = None
    json_guard: bool = False


@dataclass(frozen=True)
class LabelScores:
    """One prompt's labels ranked by likelihood (`LocalEngine.score_labels`)."""

    label: str  # the highest-scoring label
    scores: dict[str, float]  # every label's mean log-probability per reply token
    prompt_tokens: int
    completion_tokens: int  # reply tokens of the chosen label (end-of-turn included)
    scored_tokens: int  # reply tokens of every label: what scoring computed beyond the prompt
    latency_ms: float


# The smallest positive temperature the sampler takes: logits are divided by it in float32, where a smaller one
# (1e-300 is 0 there) turns them into inf and NaN probabilities. Below it, temperature 0 (greedy) is the intent.
MIN_TEMPERATURE = 1e-6
# The seeds a torch generator takes (it reads them as a 64-bit integer, signed or not).
SEED_RANGE = (-(2**63), 2**64 - 1)


@dataclass(frozen=True)
class SamplingParams:
    """One prompt's decoding settings, for `generate(params=[...])` (the serving API's per-request settings).

    Each sampled prompt draws from its own generator seeded by `seed`, so its output does not depend on which
    other prompts share its batch. `top_p` < 1 samples from the smallest set of most likely tokens whose
    probabilities reach `top_p` (nucleus sampling). A `stop` string ends the prompt's generation as soon as its
    decoded text contains one; the returned text ends before it.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy (top_p and seed are then unused)
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise TunewiseError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise TunewiseError(f"temperature must be >= 0, got {self.temperature}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise TunewiseError(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {self.temperature}"
            )
        if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise TunewiseError(f"seed must be a 64-bit integer, got {self.seed}")
        if not 0 < self.top_p <= 1:
            raise TunewiseError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise TunewiseError("a stop string must not be empty")


class LocalEngine:
    """Batched generation with a shared-prefix KV cache over a transformers causal LM (see module docstring)."""

    # Finished rows are dropped from a batch (and its cache) once they make up this fraction of its rows: each
    # kept one costs ~1/rows of every later step, each compaction one copy of the live cache.
    _compact_fraction = 0.125
    # Identical prompts within a batch (sample()'s n copies) are prefilled once; tests turn it off to compare.
    _merge_duplicates = True
    # The levers, each switchable (bench/generation.py measures each alone and all together):
    # refill a finished row's slot with the next waiting prompt at once (evaluate/continuous.py), rather than
    # running static batches until their last row ends;
    continuous = True
    _column_slack: int | None = None  # spare cache columns of a continuous batch (None: its own choice)
    # answer generate_with_samples() (the greedy answer and the consistency samples) from one prefill per prompt,
    # rather than a generate() call and a sample() call.
    one_prefill = True
    # answer the arms of generate_arms() whose prompts share their prefix from one generate() call, rather than a
    # call per arm: a prompt two arms ask (a free arm and its constrained variant) is prefilled once, and one
    # batch serves them all, so its slots stay full until the last arm's last rows instead of draining per arm.
    merge_arms = True
    # Arms share a call only when that leaves each within this many tokens of the prefix its prompts share (the
    # rest of a longer prefix, a few-shot block, would be prefilled again for every prompt).
    _max_prefix_loss = 32
    # Rows of a generate_arms() batch: a decode step's cost grows slower than its rows (on a 2-core EPYC, one
    # thread, 300 cache columns: 219 ms for 32 rows, 357 ms for 64), so up to `arm_rows` rows, as many as the
    # keys and values of their prompts and answers fit in `arm_cache_bytes`.
    arm_rows = 64
    arm_cache_bytes = 2 * 2**30

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
        self._pieces: dict[int, str] = {}
        # Called as rows finish with (rows finished, completion tokens so far) of the current generate() call:
        # what a progress display needs for its tokens/s and time left (evaluation sets it per arm).
        self.progress: Callable[[int, int], None] | None = None

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
        constraint: Constraint | Sequence[Constraint | None] | None = None,
        *,
        params: Sequence[SamplingParams] | None = None,
        on_token: Callable[[int, int], bool | None] | None = None,
        json_guard: bool | Sequence[bool] = False,
    ) -> list[Generation]:
        """Complete every prompt; results keep the order of `prompts`.

        `temperature == 0` is greedy decoding; above 0, tokens are sampled from softmax(logits / temperature)
        with a generator seeded by `seed` (reproducible for the same prompts and settings).
        `constraint` (one for all prompts, or one per prompt, None = free) restricts every step to the tokens
        that keep the output inside a JSON Schema or regex (evaluate/constrain.py); a constraint xgrammar
        cannot compile falls back to free generation with a warning. Compiling is charged like the prefix.
        `params` (one `SamplingParams` per prompt) replaces max_new_tokens, temperature and seed with per-prompt
        settings, adding top_p and stop strings (the server batches requests with different settings).
        `on_token(prompt_index, token_id)` is called for every generated token as it is chosen (streaming);
        returning True ends that prompt's generation (finish_reason "abort": its client went away).
        `json_guard` stops free rows from looping inside JSON (a repeated key, a repeated element): see
        evaluate/loopguard.py. It never applies to constrained rows. `True` guards every free row unless
        `on_token` is given (a streamed token cannot be taken back); one flag per prompt guards the rows flagged,
        and the caller vouches that their tokens are not streamed (the server guards non-streamed requests
        and reads `on_token` only to cancel them).
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
        if isinstance(json_guard, bool):
            guarded = set(range(len(ids))) if json_guard and on_token is None else set()
        else:
            if len(json_guard) != len(ids):
                raise TunewiseError(f"{len(json_guard)} json_guard flags for {len(ids)} prompts")
            guarded = {i for i, flag in enumerate(json_guard) if flag}
        per_prompt = _PerPrompt(params, len(ids), self.tokenizer) if params is not None else None
        if per_prompt is not None:
            max_new_tokens = per_prompt.max_new_tokens
        generator = torch.Generator().manual_seed(seed) if temperature > 0 and per_prompt is None else None
        spent = [0.0] * len(ids)  # seconds of compute attributed to each prompt
        compile_start = time.perf_counter()
        grammars = self._grammars(constraint, len(ids))
        compile_seconds = time.perf_counter() - compile_start
        with torch.inference_mode():
            prefix_len, prefix_cache, prefix_seconds = self._shared_prefix(ids)
            prefix_seconds += compile_seconds
            for i in range(len(ids)):
                spent[i] += prefix_seconds / len(ids)
            results: dict[int, tuple[list[int], str]] = {}
            rewinds: dict[int, int] = {}
            refusals: dict[int, int] = {}
            batches = self._batches(ids, prefix_len)
            log.info(
                "generating for %d prompts in %d batches (shared prefix: %d tokens, max_new_tokens %d)",
                len(ids),
                len(batches),
                prefix_len,
                max_new_tokens,
            )
            if self.continuous and self._plain_layers():
                from tunewise.evaluate.continuous import run_continuous

                batches = []  # one batch, refilled as its rows finish
                results = run_continuous(
                    self, ids, prefix_len, prefix_cache, max_new_tokens, temperature, generator, spent,
                    grammars, per_prompt, on_token, guarded, rewinds, refusals,
                )  # fmt: skip
            for batch in batches:
                results.update(
                    self._run_batch(
                        batch,
                        ids,
                        prefix_len,
                        prefix_cache,
                        max_new_tokens,
                        temperature,
                        generator,
                        spent,
                        grammars,
                        per_prompt,
                        on_token,
                        guarded,
                        rewinds,
                        refusals,
                    )
                )
                if self.progress is not None:
                    self.progress(len(results), sum(len(t) for t, _ in results.values()))
        out = []
        for i, prompt_ids in enumerate(ids):
            generated, reason = results[i]
            # A stop string ends a row without an end-of-turn token; its text is cut before the stop string.
            body = generated[:-1] if generated and generated[-1] in self.stop_token_ids else generated
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            if per_prompt is not None:
                text = per_prompt.cut(i, text)
            out.append(
                Generation(
                    text=text,
                    token_ids=tuple(generated),
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=len(generated),
                    latency_ms=spent[i] * 1000.0,
                    finish_reason=reason,
                    rewinds=rewinds.get(i, 0),
                    refusals=refusals.get(i, 0),
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
        constraint: Constraint | None = None,
        json_guard: bool = False,
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
            constraint=constraint,
            json_guard=json_guard,
        )
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def generate_with_samples(
        self,
        prompts: Sequence[Prompt],
        n: int,
        temperature: float = 0.7,
        seed: int = 0,
        max_new_tokens: int = 64,
        constraint: Constraint | None = None,
        json_guard: bool = False,
    ) -> tuple[list[Generation], list[list[Generation]]]:
        """Each prompt's greedy answer and its `n` sampled ones (the consistency samples; none for n < 2, as
        evaluation draws them), from one prefill per prompt: the greedy row and the sampled rows of a prompt
        are the same prompt asked n + 1 times, which generate() prefills once.

        The greedy answers are those of `generate(prompts)`. Each sampled row draws from its own generator,
        seeded from `seed`, the prompt's index and the sample's index, so a sample does not depend on which
        other rows shared its steps (the samples differ from `sample()`'s, which share one generator).
        With `one_prefill` off: a generate() call, then a sample() call.
        """
        if n < 2:
            greedy = self.generate(
                prompts, max_new_tokens, seed=seed, constraint=constraint, json_guard=json_guard
            )
            return greedy, [[] for _ in prompts]
        if not self.one_prefill:
            greedy = self.generate(
                prompts, max_new_tokens, seed=seed, constraint=constraint, json_guard=json_guard
            )
            drawn = self.sample(prompts, n, temperature, seed, max_new_tokens, constraint, json_guard)
            return greedy, drawn
        if temperature <= 0:
            raise TunewiseError(
                "sampling needs temperature > 0 (temperature 0 is greedy: n identical outputs)"
            )
        params = [
            SamplingParams(max_new_tokens=max_new_tokens)
            if j == 0
            else SamplingParams(
                max_new_tokens=max_new_tokens, temperature=temperature, seed=_sample_seed(seed, i, j)
            )
            for i in range(len(prompts))
            for j in range(n + 1)
        ]
        flat = self.generate(
            [p for p in prompts for _ in range(n + 1)],
            params=params,
            constraint=constraint,
            json_guard=json_guard,
        )
        rows = [flat[i * (n + 1) : (i + 1) * (n + 1)] for i in range(len(prompts))]
        return [row[0] for row in rows], [row[1:] for row in rows]

    def generate_arms(
        self,
        arms: Sequence[ArmRequest],
        n: int,
        temperature: float = 0.7,
        seed: int = 0,
        max_new_tokens: int = 64,
    ) -> list[tuple[list[Generation], list[list[Generation]]]]:
        """Each arm's `generate_with_samples(arm.prompts, n, ...)`: its greedy answers and, for n >= 2, its n
        consistency samples per prompt, with the same seeds, so the same outputs.

        With `merge_arms` (and `one_prefill`), arms whose prompts share their prefix (within `_max_prefix_loss`
        tokens of each arm's own) are answered by one generate() call: one continuously refilled batch for all
        their rows, each distinct prompt prefilled once however many arms ask it. Otherwise a call per arm.
        """
        if n >= 2 and temperature <= 0:
            raise TunewiseError(
                "sampling needs temperature > 0 (temperature 0 is greedy: n identical outputs)"
            )
        if not (self.merge_arms and self.one_prefill) or len(arms) < 2:
            return [
                self.generate_with_samples(
                    a.prompts, n, temperature, seed, max_new_tokens, a.constraint, a.json_guard
                )
                for a in arms
            ]
        copies = n + 1 if n >= 2 else 1  # rows per prompt: the greedy one, then the samples
        encoded = [[self.encode(p) for p in a.prompts] for a in arms]
        results: list[tuple[list[Generation], list[list[Generation]]]] = [([], []) for _ in arms]
        # `progress` counts the rows and tokens of one generate() call: those of the earlier groups are added.
        report, before = self.progress, [0, 0]
        for group in self._arm_groups([[x for x in ids for _ in range(copies)] for ids in encoded]):
            prompts: list[list[int]] = []
            params: list[SamplingParams] = []
            constraints: list[Constraint | None] = []
            guards: list[bool] = []
            for a in group:
                for i, ids in enumerate(encoded[a]):
                    for j in range(copies):
                        prompts.append(ids)
                        params.append(
                            SamplingParams(max_new_tokens=max_new_tokens)
                            if j == 0
                            else SamplingParams(
                                max_new_tokens=max_new_tokens,
                                temperature=temperature,
                                seed=_sample_seed(seed, i, j),
                            )
                        )
                        constraints.append(arms[a].constraint)
                        guards.append(arms[a].json_guard)
            if not prompts:  # arms without prompts: nothing to answer
                continue
            rows = self._arm_batch_rows(prompts, max_new_tokens)
            saved = self.max_batch_size, self.max_batch_tokens
            # The batch's rows, whatever the prompts' widths: generate() cuts batches by both limits.
            self.max_batch_size, self.max_batch_tokens = rows, rows * max(len(x) for x in prompts)
            if report is not None:
                self.progress = lambda done, tokens: report(before[0] + done, before[1] + tokens)
            try:
                flat = self.generate(
                    prompts,
                    params=params,
                    constraint=constraints if any(constraints) else None,
                    json_guard=guards,
                )
            finally:
                self.max_batch_size, self.max_batch_tokens = saved
                self.progress = report
            before[0] += len(flat)
            before[1] += sum(g.completion_tokens for g in flat)
            at = 0
            for a in group:
                asked = [flat[at + k * copies : at + (k + 1) * copies] for k in range(len(encoded[a]))]
                at += len(asked) * copies
                results[a] = ([r[0] for r in asked], [r[1:] for r in asked])
        return results

    def _arm_batch_rows(self, prompts: list[list[int]], max_new_tokens: int) -> int:
        """Rows of one generate_arms() batch: up to `arm_rows` while the caches of the rows (each the longest
        prompt, its answer and as many spare columns) fit `arm_cache_bytes`; never fewer than the engine's own
        limits give."""
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        width = self.model.get_output_embeddings().weight.element_size()
        per_column = config.num_hidden_layers * 2 * heads * dim * width  # keys and values of every layer
        longest = max(len(x) for x in prompts)
        fit = self.arm_cache_bytes // (per_column * (longest + 2 * max_new_tokens))
        own = min(self.max_batch_size, self.max_batch_tokens // longest)
        return max(1, own, min(self.arm_rows, fit))

    def _arm_groups(self, arms: list[list[list[int]]]) -> list[list[int]]:
        """Arm indices grouped into generate() calls (`arms[a]`: the token ids of arm a's rows): an arm joins the
        first group where the prefix shared by all the rows, its own included, is within `_max_prefix_loss`
        tokens of every member's own shared prefix."""
        own = [_common_prefix(ids) if len(ids) > 1 else 0 for ids in arms]
        own = [k if k >= self.min_shared_prefix else 0 for k in own]  # below it nothing is shared anyway
        groups: list[list[int]] = []
        for a, ids in enumerate(arms):
            for members in groups if ids else []:
                union = _common_prefix([x for m in members for x in arms[m]] + ids)
                if all(own[m] - union <= self._max_prefix_loss for m in [*members, a]):
                    members.append(a)
                    break
            else:
                groups.append([a])
        return groups

    # --- label scoring ------------------------------------------------------------------------------------

    def score_labels(
        self, prompts: Sequence[Prompt], labels: Sequence[str], normalize: bool = True
    ) -> list[LabelScores]:
        """Rank `labels` for every prompt by the model's log-likelihood of each label as the assistant reply.

        A label's score is the mean log-probability of its reply tokens (what the chat template appends after
        the generation prompt, end-of-turn token included: so a label that is a prefix of another is not
        favoured), i.e. length normalized; `normalize=False` gives the plain sum (the reply's log-probability),
        which favours short labels where the mean favours long ones whose later tokens are predictable.
        Ties go to the label listed first. The compute:

        1. the prefix shared by all prompts is run once (as in generate());
        2. prompts, sorted by length, are prefilled in left-padded batches, each prompt once;
        3. every label's reply tokens but the last (the last is predicted, never fed) are fed after each prompt
           of the batch in one forward, one row per prompt: a 4D attention mask lets each label's tokens see
           the prompt and their own label's earlier tokens only, and their positions restart after the prompt
           for each label. So the prompt's cache is never copied per label. The fed tokens per forward (rows x
           reply tokens, each with a vocabulary of logits) stay under `max_batch_tokens` / 8; past that, labels
           are taken in chunks.

        Latency: the shared prefix split equally, each batch's time split in proportion to its prompts' own
        tokens, as in generate().
        """
        import torch

        if len(labels) < 1:
            raise TunewiseError("label scoring needs at least one label")
        if not prompts:
            return []
        ids = [self.encode(p) for p in prompts]
        if any(not x for x in ids):
            raise TunewiseError("a prompt rendered to zero tokens")
        replies = [self._reply_ids(label) for label in labels]
        fed = max(1, sum(len(r) - 1 for r in replies))  # reply tokens fed after each prompt
        budget = max(1, self.max_batch_tokens // 8)  # rows x fed tokens per forward (x vocabulary logits)
        scores: list[list[float]] = [[] for _ in ids]
        with torch.inference_mode():
            prefix_len, prefix_cache, prefix_seconds = self._shared_prefix(ids)
            spent = [prefix_seconds / len(ids)] * len(ids)
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
            k = 0
            while k < len(order):
                # Longest first: the first prompt of a batch is its widest, so it sizes the batch.
                width = len(ids[order[k]]) - prefix_len
                size = min(self.max_batch_size, self.max_batch_tokens // width, budget // fed)
                group = order[k : k + max(1, size)]
                k += len(group)
                start = time.perf_counter()
                for i, row in zip(
                    group,
                    self._score_batch(
                        [ids[i] for i in group], prefix_len, prefix_cache, replies, budget, normalize
                    ),
                ):
                    scores[i] = row
                elapsed = time.perf_counter() - start
                own = [len(ids[i]) - prefix_len for i in group]
                for i, n in zip(group, own):
                    spent[i] += elapsed * n / sum(own)
        results = []
        for i, row in enumerate(scores):
            best = max(range(len(labels)), key=lambda j: (row[j], -j))
            results.append(
                LabelScores(
                    label=labels[best],
                    scores={label: row[j] for j, label in enumerate(labels)},
                    prompt_tokens=len(ids[i]),
                    completion_tokens=len(replies[best]),
                    scored_tokens=sum(len(r) for r in replies),
                    latency_ms=spent[i] * 1000.0,
                )
            )
        return results

    def _reply_ids(self, text: str) -> list[int]:
        """The tokens the chat template appends for an assistant reply `text`, through its end-of-turn token."""
        probe = [{"role": "user", "content": "x"}]
        try:
            head = self.tokenizer.apply_chat_template(probe, add_generation_prompt=True, tokenize=False)
            full = self.tokenizer.apply_chat_template(
                [*probe, {"role": "assistant", "content": text}], tokenize=False
            )
        except Exception:  # no chat template: the label and an end-of-turn token
            head, full = "", None
        if full is not None and full.startswith(head):
            head_ids = self.encode(head)
            full_ids = self.encode(full)
            if full_ids[: len(head_ids)] == head_ids and len(full_ids) > len(head_ids):
                reply = full_ids[len(head_ids) :]
                end = next((k for k, t in enumerate(reply) if t in self.stop_token_ids), None)
                if end is not None and end > 0:
                    return reply[: end + 1]
        body = self.encode(text)
        return [*body, self._end_of_turn_id()]

    def _end_of_turn_id(self) -> int:
        vocab = self.tokenizer.get_vocab()
        for token in _END_OF_TURN:
            if token in vocab and vocab[token] in self.stop_token_ids:
                return vocab[token]
        return min(self.stop_token_ids)

    def _score_batch(
        self,
        batch: list[list[int]],
        prefix_len: int,
        prefix_cache: Any,
        replies: list[list[int]],
        budget: int,
        normalize: bool = True,
    ) -> list[list[float]]:
        """Mean log-probability of each reply after each prompt of a batch (see score_labels)."""
        import torch

        rows = len(batch)
        suffixes = [x[prefix_len:] for x in batch]
        width = max(len(x) for x in suffixes)
        feed = torch.full((rows, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((rows, prefix_len + width), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for r, x in enumerate(suffixes):
            feed[r, width - len(x) :] = torch.tensor(x)
            mask[r, prefix_len + width - len(x) :] = 1
        positions = (prefix_len + mask[:, prefix_len:].cumsum(-1) - 1).clamp(min=prefix_len)
        cache = self._new_cache()
        if prefix_cache is not None:
            cache.layers = [_shared_view(layer, rows) for layer in prefix_cache.layers]
        first = torch.log_softmax(
            self._forward(feed, mask, positions, cache).float(), dim=-1
        )  # [rows, vocab]
        next_pos = positions[:, -1] + 1
        out = [[first[r, reply[0]].item() for reply in replies] for r in range(rows)]
        seen = prefix_len + width  # cached positions of every row
        # Labels in chunks of at most `budget` fed tokens over the batch's rows.
        chunks: list[list[int]] = [[]]
        for j, reply in enumerate(replies):
            if len(reply) < 2:
                continue
            if chunks[-1] and rows * (sum(len(replies[i]) - 1 for i in chunks[-1]) + len(reply) - 1) > budget:
                chunks.append([])
            chunks[-1].append(j)
        dtype = self.model.get_output_embeddings().weight.dtype
        for chunk in chunks:
            if not chunk:
                continue
            tokens: list[int] = []
            offsets: list[int] = []  # each fed token's position after the prompt (restarts per label)
            segment: list[int] = []  # each fed token's label, to keep labels from seeing one another
            for j in chunk:
                fed = replies[j][:-1]
                tokens += fed
                offsets += range(len(fed))
                segment += [j] * len(fed)
            q = len(tokens)
            seg = torch.tensor(segment)
            own = (seg[:, None] == seg[None, :]) & torch.ones((q, q), dtype=torch.bool).tril()
            allowed = torch.cat(
                [mask.bool()[:, None, :].expand(rows, q, seen), own.expand(rows, q, q)], dim=-1
            )
            # Additive form (0 or the dtype's minimum) works with every attention implementation.
            bias = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
            kwargs = {self._cache_arg: cache, "use_cache": True}
            logits = self.model(
                input_ids=torch.tensor(tokens).expand(rows, q),
                attention_mask=bias[:, None],
                position_ids=next_pos[:, None] + torch.tensor(offsets)[None, :],
                **kwargs,
            ).logits.float()
            cache.crop(-q)  # drop this chunk's q positions: the next chunk sees the prompt only
            logp = logits - logits.logsumexp(dim=-1, keepdim=True)  # [rows, q, vocab]
            start = 0
            for j in chunk:
                targets = torch.tensor(replies[j][1:])
                n = len(targets)
                picked = logp[:, start : start + n].gather(-1, targets[None, :, None].expand(rows, n, 1))
                for r in range(rows):
                    out[r][j] += picked[r].sum().item()
                start += n
        return [[total / (len(x) if normalize else 1) for total, x in zip(row, replies)] for row in out]

    # --- constraints --------------------------------------------------------------------------------------

    def can_enforce(self, constraint: Constraint) -> bool:
        """Whether `constraint` compiles to a grammar here (compiled once and cached); when it does not,
        generate() would warn and decode freely, so a server should refuse the request instead."""
        return self._grammar_backend().compile(constraint) is not None

    def _grammar_backend(self) -> GrammarBackend:
        if getattr(self, "_backend", None) is None:
            width = self.model.get_output_embeddings().weight.shape[0]
            self._backend = GrammarBackend(self.tokenizer, width, sorted(self.stop_token_ids))
        return self._backend

    def _grammars(
        self, constraint: Constraint | Sequence[Constraint | None] | None, n: int
    ) -> dict[int, Any] | None:
        """Each prompt's compiled grammar (prompt index -> grammar), or None when nothing is constrained."""
        if constraint is None:
            return None
        per_prompt = [constraint] * n if isinstance(constraint, Constraint) else list(constraint)
        if len(per_prompt) != n:
            raise TunewiseError(f"{len(per_prompt)} constraints for {n} prompts: give one, or one per prompt")
        if not any(per_prompt):
            return None
        backend = self._grammar_backend()
        grammars = {i: backend.compile(c) for i, c in enumerate(per_prompt) if c is not None}
        return {i: g for i, g in grammars.items() if g is not None} or None

    # --- internals ----------------------------------------------------------------------------------------

    def _plain_layers(self) -> bool:
        """Whether every cache layer of the model is a plain full-attention one (what continuous batching
        rebuilds); sliding-window or linear-attention models keep static batches."""
        return all(type(layer) is _dynamic_layer() for layer in self._new_cache().layers)

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

        n = _common_prefix(ids)
        first = ids[0]
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
        grammars: Mapping[int, Any] | None = None,
        per_prompt: _PerPrompt | None = None,
        on_token: Callable[[int, int], bool | None] | None = None,
        guarded: set[int] = frozenset(),
        rewinds: dict[int, int] | None = None,
        refusals: dict[int, int] | None = None,
    ) -> dict[int, tuple[list[int], str]]:
        import torch

        start = time.perf_counter()
        rows = len(batch)
        # One grammar state per constrained prompt of the batch (empty when nothing is constrained).
        matchers = (
            RowMatchers(self._grammar_backend(), {i: grammars[i] for i in batch if grammars.get(i)})
            if grammars
            else None
        )
        # The loop guard of each free row (a grammar state cannot be rewound), and where its tokens were written.
        guards = RowGuards(
            [i for i in batch if i in guarded and not (grammars and grammars.get(i))], self._piece
        )
        columns: dict[int, list[int]] = {i: [] for i in batch}  # cache column of each generated token fed
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
        first_pos = next_pos.clone()  # position of each row's first generated token
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
            if matchers:
                current = matchers.mask_(current, [members[r] for r in live])
            if per_prompt is not None:
                chosen = per_prompt.choose(current, [members[r] for r in live])
            elif temperature > 0:
                probs = torch.softmax(current.float() / temperature, dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            else:
                chosen = current.argmax(dim=-1)
            if guards:
                chosen = self._refuse(guards, current, chosen, [members[r] for r in live], temperature,
                                          generator, per_prompt)  # fmt: skip
            # A finished row kept in the batch is fed its last token again; its outputs are ignored.
            if len(live) == len(members):
                tokens = chosen.clone()
            else:
                tokens[torch.tensor(live)] = chosen
            still = []
            for r, token in zip(live, chosen.tolist(), strict=True):
                i = members[r]
                generated[i].append(token)
                if matchers:
                    matchers.accept(i, token)
                abort = on_token is not None and on_token(i, token)
                why = self.finish_reason(i, token, generated[i], per_prompt, step + 1, max_new_tokens, abort)
                if why is not None:
                    done[i] = (generated[i], why)
                else:
                    still.append(r)
                    back = guards.accept(i, generated[i]) if guards and i in guards else None
                    if back is not None:
                        rewind(r, i, back, attention, columns, generated, tokens, next_pos, first_pos)
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
                first_pos = first_pos[index]
                members = [members[r] for r in still]
                still = list(range(len(still)))
            for r in still:
                columns[members[r]].append(length)  # this forward writes the fed tokens at column `length`
            logits = self._forward(tokens[:, None], attention[:, : length + 1], next_pos[:, None], cache)
            length += 1
            next_pos = next_pos + 1
            # This step's forward served the rows still generating; the rows that finished only took part in the
            # sampling. A finished row still in the batch is charged nothing: the step's time is split among the
            # rows that asked for it, so the shares still add up to the measured time.
            self._charge([members[r] for r in still], step_start, spent)
            live = still
            step_start = time.perf_counter()
        # What the guard did to each row, read once the batch is done.
        if rewinds is not None:
            rewinds.update({i: n for i, n in guards.rewinds.items() if n})
        if refusals is not None:
            refusals.update({i: n for i, n in guards.refusals.items() if n})
        return done

    def _piece(self, token: int) -> str:
        """One token's text (cached: the loop guard reads every generated token)."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.tokenizer.decode([token])
        return piece

    def finish_reason(
        self,
        i: int,
        token: int,
        generated: list[int],
        per_prompt: Any,
        steps: int,
        max_new_tokens: int,
        abort: bool,
    ) -> str | None:
        """Why row `i` stops after `token` and `steps` generated tokens ("stop", "abort" or "length"), or None
        when it goes on: the one rule of the static and the continuous batch."""
        if token in self.stop_token_ids or (per_prompt is not None and per_prompt.hit_stop(i, generated)):
            return "stop"
        if abort:
            return "abort"
        if steps == (per_prompt.limit(i) if per_prompt is not None else max_new_tokens):
            return "length"
        return None

    @staticmethod
    def _refuse(
        guards: RowGuards, logits: Any, chosen: Any, prompts: list[int], temperature: float, generator: Any,
        per_prompt: _PerPrompt | None,
    ) -> Any:  # fmt: skip
        """`chosen` with each token the guard refuses (a member added to a sealed container, a container closed
        with the wrong bracket) chosen again without it."""
        import torch

        for j, i in enumerate(prompts):
            for _ in range(64):  # more refusals than this means no sensible token is left: let it be
                token = int(chosen[j])
                if not guards.refuses(i, token):
                    break
                logits[j, token] = float("-inf")
                row = logits[j : j + 1]
                if per_prompt is not None:
                    chosen[j] = per_prompt.choose(row, [i])[0]
                elif temperature > 0:
                    probs = torch.softmax(row.float() / temperature, dim=-1)
                    chosen[j] = torch.multinomial(probs, 1, generator=generator)[0, 0]
                else:
                    chosen[j] = row.argmax(dim=-1)[0]
        return chosen

    @staticmethod
    def _charge(rows: list[int], since: float, spent: list[float]) -> None:
        elapsed = time.perf_counter() - since
        for i in rows:
            spent[i] += elapsed / len(rows)


def _common_prefix(ids: Sequence[Sequence[int]]) -> int:
    """Tokens at the start of every prompt of `ids`, leaving each at least one of its own (a prefill must give
    every row its next logits).

    >>> _common_prefix([[1, 2, 3, 4], [1, 2, 5]]), _common_prefix([[1, 2, 3], [1, 2, 3]])
    (2, 2)
    """
    limit = min(len(x) for x in ids) - 1
    first = ids[0]
    n = 0
    while n < limit and all(x[n] == first[n] for x in ids):
        n += 1
    return n


def _sample_seed(seed: int, prompt: int, sample: int) -> int:
    """The seed of one consistency sample: distinct per (seed, prompt, sample), inside torch's seed range.

    >>> _sample_seed(0, 0, 1), _sample_seed(0, 1, 1), _sample_seed(1, 0, 1)
    (1, 1000004, 1000006000010)
    """
    return ((seed * 1_000_003 + prompt) * 1_000_003 + sample) % 2**63


def rewind(
    r: int,
    i: int,
    back: int,
    attention: Any,
    columns: Any,
    generated: Any,
    tokens: Any,
    next_pos: Any,
    first_pos: Any,
) -> None:
    """Take row `r` (prompt `i`) back to its first `back` generated tokens, the JSON loop guard's repair: the
    positions of the dropped tokens, and of the last kept one, leave the attention mask; the last kept token is
    fed again, at its own position, so that the row's next choice is made where the dropped "," was chosen."""
    attention[r, columns[i][back - 1 :]] = 0
    del columns[i][back - 1 :], generated[i][back:]
    tokens[r] = generated[i][-1]
    next_pos[r] = first_pos[r] + back - 1


def _shared_view(layer: Any, rows: int) -> Any:
    """A cache layer holding `layer`'s positions for `rows` rows without copying them now: a plain layer's
    keys/values become an expanded view, which its first update concatenates into new tensors (one copy, which
    that update would make anyway); the original layer is never written. Other layer types are deep-copied."""
    if type(layer) is _dynamic_layer() or type(layer) is _slot_layer_class():
        view = _dynamic_layer()()
        view.lazy_initialization(layer.keys, layer.values)
        view.keys = layer.keys.expand(rows, -1, -1, -1)
        view.values = layer.values.expand(rows, -1, -1, -1)
        return view
    repeated = copy.deepcopy(layer)
    if rows > 1:
        repeated.batch_repeat_interleave(rows)
    return repeated


class _PerPrompt:
    """The `SamplingParams` of one generate() call: a generator per sampled prompt, top_p, stop strings."""

    def __init__(self, params: Sequence[SamplingParams], n: int, tokenizer: Any):
        import torch

        self.params = list(params)
        if len(self.params) != n:
            raise TunewiseError(f"{len(self.params)} SamplingParams for {n} prompts: give one per prompt")
        self.tokenizer = tokenizer
        self.max_new_tokens = max(p.max_new_tokens for p in self.params)
        self.generators = [
            torch.Generator().manual_seed(p.seed) if p.temperature > 0 else None for p in self.params
        ]
        # A stop string of k characters spans at most k tokens (a few more when tokens hold partial UTF-8
        # characters), so only the tail of a row's tokens is decoded to look for it.
        self.windows = [max((len(s) for s in p.stop), default=0) + 8 for p in self.params]

    def limit(self, i: int) -> int:
        return self.params[i].max_new_tokens

    def choose(self, logits: Any, prompts: list[int]) -> Any:
        """The next token of each row (`prompts[row]` is the row's prompt index)."""
        import torch

        chosen = logits.argmax(dim=-1)
        for row, i in enumerate(prompts):
            p = self.params[i]
            if p.temperature > 0:
                probs = torch.softmax(logits[row].float() / p.temperature, dim=-1)
                if p.top_p < 1:
                    ranked, order = probs.sort(descending=True)
                    # Keep the most likely tokens until their mass reaches top_p (the first always stays).
                    keep = (ranked.cumsum(-1) - ranked) < p.top_p
                    keep[0] = True  # a top_p below float32's smallest number compares as 0
                    ranked = ranked * keep
                    pick = torch.multinomial(ranked, 1, generator=self.generators[i])
                    chosen[row] = order[pick[0]]
                else:
                    chosen[row] = torch.multinomial(probs, 1, generator=self.generators[i])[0]
        return chosen

    def hit_stop(self, i: int, generated: list[int]) -> bool:
        stops = self.params[i].stop
        if not stops:
            return False
        tail = self.tokenizer.decode(generated[-self.windows[i] :], skip_special_tokens=True)
        return any(s in tail for s in stops)

    def cut(self, i: int, text: str) -> str:
        """`text` up to the first stop string of prompt i."""
        cuts = [text.find(s) for s in self.params[i].stop]
        return text[: min((c for c in cuts if c >= 0), default=len(text))]


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
