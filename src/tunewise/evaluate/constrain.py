"""Fair prompted arms: answers that meet the output contract by construction, with no training.

A prompted model that breaks the format is not proof that fine-tuning is needed: the format can be enforced at
decoding time. Two mechanisms, used by `LocalEngine` (evaluate/engine.py) for prompted and fine-tuned arms
alike:

- **label scoring** (`label` contracts): instead of generating, rank the contract's labels by the model's
  log-likelihood of each label as the assistant reply (the chat template's reply tokens, end-of-turn token
  included, so "pos" does not win merely by being a prefix of "positive"), normalized by its length in
  tokens. The answer is always one of the labels. See `LocalEngine.score_labels`.
- **schema-constrained decoding** (`json` and `regex` contracts): at every decode step a token bitmask from
  xgrammar (a maintained grammar engine; JSON Schema and regular expressions compiled to a pushdown automaton
  over the tokenizer's vocabulary) removes every token that would leave the grammar, so the output can only
  match the schema or the pattern. The mask is computed per row, so one batch may mix constraints.

What xgrammar cannot compile is refused before it is used: a spec's regex contract by `spec.py`
(`unsupported_by_grammar`, at `contract.pattern`'s line), a `response_format` by `tunewise serve` with a 400
(`grammar_problem`). Should one still reach `compile`, it warns and returns None and the arm generates freely
(its format compliance then shows it). Keywords xgrammar accepts but does not enforce are caught by the scorer,
which checks the full JSON Schema on every output.

`constraint_from_response_format` turns an OpenAI-style `response_format` into a `Constraint`, for
`tunewise serve`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tunewise.errors import TunewiseError

log = logging.getLogger(__name__)

# Suffixes of the variant arms: `few-shot+scored` ranks the labels, `few-shot+constrained` decodes under the
# contract's grammar.
SCORED = "scored"
CONSTRAINED = "constrained"


@dataclass(frozen=True)
class Constraint:
    """What generation must match: a JSON Schema (`{}` = any JSON value) or a regular expression."""

    kind: Literal["json", "regex"]
    schema: Mapping[str, Any] | None = None
    pattern: str | None = None

    def key(self) -> str:
        """A stable text key (for caching compiled grammars).

        >>> Constraint("regex", pattern="[0-9]+").key()
        'regex:[0-9]+'
        """
        if self.kind == "regex":
            return f"regex:{self.pattern}"
        return "json:" + json.dumps(self.schema or {}, sort_keys=True, separators=(",", ":"))


def variant_for_contract(contract: Any) -> str | None:
    """The variant a contract allows: 'scored' (label), 'constrained' (json, regex) or None (text).

    >>> variant_for_contract({"type": "label", "labels": ["a", "b"]}), variant_for_contract({"type": "text"})
    ('scored', None)
    """
    kind = contract.get("type") if isinstance(contract, Mapping) else getattr(contract, "type", "text")
    return SCORED if kind == "label" else CONSTRAINED if kind in ("json", "regex") else None


def split_arm(name: str) -> tuple[str, str | None]:
    """('few-shot', 'scored') for 'few-shot+scored'; (name, None) for a free arm; `rag+fine-tuned` is one arm.

    >>> split_arm("few-shot+constrained"), split_arm("zero-shot"), split_arm("rag+fine-tuned")
    (('few-shot', 'constrained'), ('zero-shot', None), ('rag+fine-tuned', None))
    """
    from tunewise.spec import split_arm_name

    base, variant = split_arm_name(name)
    return base, (variant or None)


def constraint_for_contract(contract: Any) -> Constraint | None:
    """The decoding constraint of a spec contract (pydantic model or dict); None for label and text contracts.

    >>> constraint_for_contract({"type": "regex", "pattern": "[A-Z]{3}"})
    Constraint(kind='regex', schema=None, pattern='[A-Z]{3}')
    """
    if isinstance(contract, Mapping):
        kind = contract.get("type")
        schema = contract.get("schema", contract.get("json_schema"))
        pattern = contract.get("pattern")
    else:
        kind = getattr(contract, "type", "text")
        schema = getattr(contract, "json_schema", None)
        pattern = getattr(contract, "pattern", None)
    if kind == "json":
        return Constraint("json", schema=dict(schema or {}))
    if kind == "regex":
        return Constraint("regex", pattern=pattern)
    return None


def constraint_from_response_format(response_format: Any) -> Constraint | None:
    """An OpenAI-style `response_format` as a `Constraint` (None: free generation).

    Accepts `{"type": "text"}`, `{"type": "json_object"}` (any JSON value),
    `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`, and tunewise's extension
    `{"type": "regex", "pattern": "..."}`. Anything else is a TunewiseError naming what was sent.

    >>> constraint_from_response_format({"type": "json_schema", "json_schema": {"name": "t", "schema": {"type": "integer"}}})
    Constraint(kind='json', schema={'type': 'integer'}, pattern=None)
    >>> constraint_from_response_format({"type": "text"}) is None
    True
    """
    if response_format is None:
        return None
    if hasattr(response_format, "model_dump"):
        response_format = response_format.model_dump(exclude_none=True)
    if not isinstance(response_format, Mapping):
        raise TunewiseError(f"response_format must be an object, got {type(response_format).__name__}")
    kind = response_format.get("type")
    hint = 'use {"type": "json_schema", "json_schema": {"name": "...", "schema": {...}}}, json_object or text'
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return Constraint("json", schema={})
    if kind == "json_schema":
        body = response_format.get("json_schema")
        if not isinstance(body, Mapping) or not isinstance(body.get("schema", {}), Mapping):
            raise TunewiseError("response_format json_schema needs an object with a 'schema'", hint=hint)
        schema = dict(body.get("schema") or {})
        import jsonschema

        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise TunewiseError(f"response_format schema is not a valid JSON Schema: {exc.message}") from None
        return Constraint("json", schema=schema)
    if kind == "regex":
        pattern = response_format.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise TunewiseError("response_format regex needs a 'pattern' string", hint=hint)
        return Constraint("regex", pattern=pattern)
    raise TunewiseError(f"unsupported response_format type {kind!r}", hint=hint)


# --- compiling ------------------------------------------------------------------------------------------

# How a JSON Schema is compiled (see GrammarBackend._compile for why).
_JSON_OPTIONS: dict[str, Any] = {"any_whitespace": True, "max_whitespace_cnt": 1, "strict_mode": True}


def grammar_problem(constraint: Constraint) -> str | None:
    """Why xgrammar cannot compile `constraint` (an unbalanced parenthesis, a backreference, a `$ref` to nothing),
    or None: the check of `GrammarBackend.compile` without a tokenizer (parsing only, no token tables), so that
    a request or spec can be refused up front instead of decoding freely. None too when xgrammar is missing.

    >>> grammar_problem(Constraint("regex", pattern="(a"))
    'Regex parsing error at position 3: The parenthesis is not closed.'
    >>> grammar_problem(Constraint("regex", pattern="[0-9]+")) is None
    True
    """
    if constraint.kind == "regex":
        return _parse_problem("regex", constraint.pattern or "")
    return _parse_problem("json", json.dumps(constraint.schema or {}))


@functools.lru_cache(maxsize=256)
def _parse_problem(kind: str, text: str) -> str | None:
    """`grammar_problem` by the constraint's text: a server sees the same response_format request after request,
    and each would otherwise be parsed again before the batch's cached compile."""
    try:
        xgr = _xgrammar()
    except TunewiseError:
        return None
    try:
        if kind == "regex":
            xgr.Grammar.from_regex(text)
        else:
            xgr.Grammar.from_json_schema(text, **_JSON_OPTIONS)
    except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses for unsupported input
        # Its messages start with a timestamp and a C++ source location: "[19:15:25] /project/cpp/x.cc:94: ".
        return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", str(exc)).strip()
    return None


class GrammarBackend:
    """xgrammar's compiler for one tokenizer and vocabulary size; compiled grammars are cached by constraint."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]):
        xgr = _xgrammar()
        # vocab_size is the model's logits width, which may exceed the tokenizer's (padded embeddings): the
        # bitmask must cover every logit, the extra ones always masked.
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        self.vocab_size = vocab_size
        self.compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._compiled: dict[str, Grammar | None] = {}
        # xgrammar 0.2's JSON string rule lets raw control characters (U+0000-U+001F) into a string, which JSON
        # forbids (they must be escaped) and `json.loads` rejects; a weak model does emit them. One-line JSON
        # needs none outside strings either (spaces separate), so a JSON row masks every token containing one
        # (stop tokens are special tokens, never among them).
        self.control_tokens = [
            i
            for i, raw in enumerate(info.decoded_vocab)
            if i < vocab_size and i not in stop_token_ids and any(b < 0x20 for b in raw)
        ]

    def compile(self, constraint: Constraint) -> Grammar | None:
        """The compiled grammar, or None (with a warning) when xgrammar cannot express the constraint."""
        key = constraint.key()
        if key not in self._compiled:
            compiled = self._compile(constraint)
            self._compiled[key] = None if compiled is None else Grammar(constraint.kind, compiled)
        return self._compiled[key]

    def _compile(self, constraint: Constraint) -> Any | None:
        try:
            if constraint.kind == "regex":
                return self.compiler.compile_regex(constraint.pattern)
            # At most one whitespace character between tokens: the model keeps its own style (compact like
            # most training data, or with spaces after `:` and `,`) but cannot pad forever; newlines and tabs
            # are masked anyway (see control_tokens). Strict mode: no properties or items beyond those the
            # schema names (a subset of what it allows; an object schema without `properties` stays open).
            return self.compiler.compile_json_schema(json.dumps(constraint.schema or {}), **_JSON_OPTIONS)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError subclasses for unsupported input
            what = f"regex {constraint.pattern!r}" if constraint.kind == "regex" else "JSON Schema"
            log.warning(
                "constrained decoding unavailable for this %s (%s): generating freely instead", what, exc
            )
            return None

    def matcher(self, grammar: Grammar) -> Any:
        return _xgrammar().GrammarMatcher(grammar.compiled)


@dataclass(frozen=True)
class Grammar:
    kind: Literal["json", "regex"]
    compiled: Any  # xgrammar.CompiledGrammar


class RowMatchers:
    """The grammar state of each constrained row of a batch: masks logits, advances with accepted tokens."""

    def __init__(self, backend: GrammarBackend, grammars: Mapping[int, Grammar | None]):
        self.backend = backend
        self.matchers = {i: backend.matcher(g) for i, g in grammars.items() if g is not None}
        self.json_rows = {i for i, g in grammars.items() if g is not None and g.kind == "json"}

    def __bool__(self) -> bool:
        return bool(self.matchers)

    def mask_(self, logits: Any, rows: Sequence[int]) -> Any:
        """Logits (one row per entry of `rows`, prompt indices) with every disallowed token set to -inf."""
        xgr = _xgrammar()
        constrained = [j for j, i in enumerate(rows) if i in self.matchers]
        if not constrained:
            return logits
        logits = logits.float().contiguous()
        bitmask = xgr.allocate_token_bitmask(len(rows), self.backend.vocab_size)
        for j in constrained:
            self.matchers[rows[j]].fill_next_token_bitmask(bitmask, j)
        xgr.apply_token_bitmask_inplace(
            logits, bitmask, vocab_size=self.backend.vocab_size, indices=constrained, backend="cpu"
        )
        json_rows = [j for j in constrained if rows[j] in self.json_rows]
        if json_rows and len(self.backend.control_tokens):
            banned = _index(self.backend.control_tokens)
            logits[_index(json_rows)[:, None], banned[None, :]] = float("-inf")
        return logits

    def accept(self, row: int, token: int) -> None:
        matcher = self.matchers.get(row)
        if matcher is not None and not matcher.is_terminated() and not matcher.accept_token(token):
            # Cannot happen after mask_ (the token was allowed); a bug if it does.
            raise RuntimeError(f"grammar rejected token {token} it had allowed")


def _index(ids: list[int]) -> Any:
    import torch

    return torch.tensor(ids, dtype=torch.long)


@functools.cache
def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:  # pragma: no cover - the train extra installs it
        raise TunewiseError(
            f"constrained decoding needs xgrammar ({exc})", hint="pip install 'tunewise[train]'"
        ) from None
    return xgrammar


# --- label distributions --------------------------------------------------------------------------------


def label_samples(scores: Mapping[str, float], n: int, temperature: float, rng: random.Random) -> list[str]:
    """n labels drawn from softmax(score / temperature): the consistency samples of a scored arm.

    Scoring itself is deterministic, so its consistency is measured the way sampling would see it: the scores
    (length-normalized log-likelihoods) read as a distribution over the labels at the evaluation temperature.
    Temperature 0 gives n copies of the best label.

    >>> label_samples({"a": 0.0, "b": -50.0}, 3, 0.7, random.Random(0))
    ['a', 'a', 'a']
    """
    labels = list(scores)
    if temperature <= 0:
        best = max(labels, key=lambda x: scores[x])
        return [best] * n
    top = max(scores.values())
    weights = [math.exp((scores[x] - top) / temperature) for x in labels]
    return rng.choices(labels, weights=weights, k=n)


__all__ = [
    "CONSTRAINED",
    "SCORED",
    "Constraint",
    "Grammar",
    "GrammarBackend",
    "RowMatchers",
    "constraint_for_contract",
    "constraint_from_response_format",
    "label_samples",
    "split_arm",
    "variant_for_contract",
]
