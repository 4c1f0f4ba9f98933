"""Answer parsing and scoring against an output contract (`label`, `json`, `regex`, `text`).

Two parsers per contract, reported side by side:

- **strict**: the output, with surrounding whitespace removed, *is* the answer: a label of the set, a JSON
  document and nothing else, a full match of the regex. This is what a program consuming the output needs.
- **lenient**: gives a prompted model a fair chance (a strict scorer alone strawmans a model that
  answers "The sentiment is positive."). Case, surrounding punctuation and markdown, a label inside a sentence,
  JSON inside a ```json fence or surrounded by prose are all accepted. It refuses (returns None) when the
  output names two different labels, because then it did not answer.

Strict-correct always implies lenient-correct (tested as a property).

Format compliance is the strict parse succeeding (label in set / valid JSON meeting the schema / regex full
match); it is None for `text` contracts, where there is no format to comply with.

A json contract may name `text_fields`: paths of fields holding free prose (a support reply, a summary). No
model writes the reference's prose word for word, so those fields are left out of exact-match accuracy, field
F1 and answer consistency, and scored instead by ROUGE-L F1 against the reference's text (`text_similarity`).

Contracts are the spec's pydantic models (`tunewise.spec.LabelContract`...) or plain dicts with the same keys
(`{"type": "label", "labels": [...]}`, `{"type": "json", "schema": {...}}`, `{"type": "regex", "pattern": ...}`).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

__all__ = [
    "Contract",
    "Score",
    "as_contract",
    "canonical_json",
    "consistency",
    "field_match",
    "flatten_json",
    "format_ok",
    "json_structure",
    "label_metrics",
    "parse_json_lenient",
    "parse_json_strict",
    "parse_label_lenient",
    "parse_lenient",
    "parse_strict",
    "score",
    "split_text_fields",
    "text_chrf",
    "text_similarity",
]


@dataclass(frozen=True)
class Contract:
    """The parts of an output contract that scoring needs, whatever object the caller had."""

    type: str
    labels: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    pattern: str | None = None
    text_fields: tuple[str, ...] = ()  # json: dotted paths of free-prose fields


def as_contract(contract: Any) -> Contract:
    """Accept a spec contract model, a dict, a `Contract`, or a type name ('text').

    >>> as_contract({"type": "label", "labels": ["yes", "no"]}).labels
    ('yes', 'no')
    >>> as_contract("text").type
    'text'
    """
    if isinstance(contract, Contract):
        return contract
    if isinstance(contract, str):
        contract = {"type": contract}
    if not isinstance(contract, dict):
        # A pydantic model from tunewise.spec; its JSON Schema attribute is `json_schema` (alias `schema`).
        contract = {
            "type": contract.type,
            "labels": getattr(contract, "labels", ()),
            "schema": getattr(contract, "json_schema", None),
            "pattern": getattr(contract, "pattern", None),
            "text_fields": getattr(contract, "text_fields", ()),
        }
    kind = contract.get("type", "text")
    if kind not in {"label", "json", "regex", "text"}:
        raise ValueError(f"unknown contract type {kind!r}: expected label, json, regex or text")
    if kind == "label" and not contract.get("labels"):
        raise ValueError("a label contract needs its labels")
    if kind == "regex" and not contract.get("pattern"):
        raise ValueError("a regex contract needs its pattern")
    return Contract(
        type=kind,
        labels=tuple(contract.get("labels") or ()),
        schema=contract.get("schema") or contract.get("json_schema"),
        pattern=contract.get("pattern"),
        text_fields=tuple(contract.get("text_fields") or ()),
    )


# --- text normalization ---------------------------------------------------------------------------------

# Characters a model wraps an answer in: quotes, brackets, markdown emphasis, sentence punctuation.
_EDGE = " \t\r\n\"'`*_.,;:!?()[]{}<>«»“”‘’"


def _norm(text: str) -> str:
    """Case-fold, treat `_`, `-` and runs of whitespace as one space, strip edge punctuation.

    Labels like `card_arrival` are often written "card arrival" by a model, so `_` and `-` are spaces here.

    >>> _norm("  **Card_Arrival.** ")
    'card arrival'
    """
    text = re.sub(r"[\s_\-]+", " ", text.casefold())
    return text.strip(_EDGE).strip()


# --- labels ---------------------------------------------------------------------------------------------


def parse_label_strict(output: str, labels: Sequence[str]) -> str | None:
    """The label the output is, exactly (surrounding whitespace aside), or None.

    >>> parse_label_strict(" positive\\n", ["positive", "negative"])
    'positive'
    >>> parse_label_strict("Positive", ["positive", "negative"]) is None
    True
    """
    answer = output.strip()
    return answer if answer in labels else None


def parse_label_lenient(output: str, labels: Sequence[str]) -> str | None:
    """The one label an output names, forgiving case, punctuation and a surrounding sentence.

    1. The whole output, normalized, equals a normalized label: that label.
    2. Otherwise every label found as a whole phrase inside the output (normalized, word boundaries) is a
       mention; a mention inside a longer mentioned label's match is dropped ("very positive" is not also
       "positive"). Exactly one label left: that label. Two or more: None (the output hedges). None: None.

    >>> labels = ["positive", "negative", "very positive"]
    >>> parse_label_lenient("The sentiment is Positive.", labels)
    'positive'
    >>> parse_label_lenient("very positive!", labels)
    'very positive'
    >>> parse_label_lenient("positive or negative", labels) is None
    True
    >>> parse_label_lenient("Card arrival", ["card_arrival", "card_linking"])
    'card_arrival'
    """
    whole = _norm(output)
    by_norm: dict[str, str] = {}
    for label in labels:
        by_norm.setdefault(_norm(label), label)
    if whole in by_norm:
        return by_norm[whole]
    spans: list[tuple[int, int, str]] = []
    for key, label in by_norm.items():
        if not key:
            continue
        # Word boundaries made of letters and digits only, so "positive" is not found in "nonpositive".
        pattern = r"(?<![0-9a-z])" + re.escape(key) + r"(?![0-9a-z])"
        spans += [(m.start(), m.end(), label) for m in re.finditer(pattern, whole)]
    kept = {
        label
        for start, end, label in spans
        if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in spans)
    }
    return kept.pop() if len(kept) == 1 else None


# --- JSON -----------------------------------------------------------------------------------------------


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of repeated keys, other parsers the first or an error: an answer whose meaning
    # depends on the reader's parser does not follow the contract.
    value = dict(pairs)
    if len(value) != len(pairs):
        repeated = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise ValueError(f"repeated key {repeated!r}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; JSON has neither


# What counts as JSON in an answer: RFC 8259, with unique keys.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def parse_json_strict(output: str) -> tuple[bool, Any]:
    """(True, value) when the whole output (whitespace aside) is one JSON document, else (False, None).

    A tuple, because `null` is a valid document whose value is None. Repeated keys, NaN and Infinity are not
    JSON here.

    >>> parse_json_strict(' {"a": 1} ')
    (True, {'a': 1})
    >>> parse_json_strict('```json\\n{"a": 1}\\n```')
    (False, None)
    >>> parse_json_strict('{"a": 1, "a": 2}'), parse_json_strict('[NaN]')
    ((False, None), (False, None))
    """
    try:
        return True, _DECODER.decode(output.strip())
    except (ValueError, RecursionError):
        return False, None


_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)


def parse_json_lenient(output: str) -> tuple[bool, Any]:
    """Find the JSON answer in an output: the whole text, a ``` fence, or the first object/array in prose.

    Objects and arrays are searched in prose (scalars are not: every number in a sentence would parse).

    >>> parse_json_lenient('Sure! ```json\\n{"b": [1, 2]}\\n``` Hope this helps.')
    (True, {'b': [1, 2]})
    >>> parse_json_lenient('The answer is {"a": 1}, as asked.')
    (True, {'a': 1})
    >>> parse_json_lenient('no json here')
    (False, None)
    """
    ok, value = parse_json_strict(output)
    if ok:
        return ok, value
    for block in _FENCE.findall(output):
        ok, value = parse_json_strict(block)
        if ok:
            return ok, value
    for match in re.finditer(r"[\[{]", output):
        try:
            value, _ = _DECODER.raw_decode(output, match.start())
        except (ValueError, RecursionError):
            continue
        return True, value
    return False, None


def _canon(value: Any) -> Any:
    # JSON has one number type: 1 and 1.0 are the same value. Python's True == 1 is not JSON's view, so
    # booleans are kept apart from numbers by leaving them as they are and only folding integral floats.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def canonical_json(value: Any) -> str:
    """A canonical serialization: sorted keys, no whitespace, integral floats as integers.

    Two JSON values are the same answer exactly when their canonical forms are equal: key order and
    whitespace are ignored, nested values compared, list order kept.

    >>> canonical_json({"b": 1.0, "a": [True, {"d": None, "c": "x"}]})
    '{"a":[true,{"c":"x","d":null}],"b":1}'
    """
    return json.dumps(_canon(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def flatten_json(value: Any, prefix: str = "") -> dict[str, str]:
    """Leaf paths -> canonical leaf values. Empty objects and arrays are leaves (their absence is a difference).

    >>> flatten_json({"a": {"b": 1, "c": [2, "x"]}, "d": {}})
    {'a.b': '1', 'a.c[0]': '2', 'a.c[1]': '"x"', 'd': '{}'}
    >>> flatten_json(3)
    {'': '3'}
    """
    out: dict[str, str] = {}
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            out.update(flatten_json(sub, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and value:
        for i, sub in enumerate(value):
            out.update(flatten_json(sub, f"{prefix}[{i}]"))
    else:
        out[prefix] = canonical_json(value)
    return out


@dataclass(frozen=True)
class FieldMatch:
    """Field-level match of a predicted JSON value against the reference over flattened leaf paths."""

    true_positives: int
    n_predicted: int
    n_reference: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.n_predicted if self.n_predicted else float(self.n_reference == 0)

    @property
    def recall(self) -> float:
        return self.true_positives / self.n_reference if self.n_reference else float(self.n_predicted == 0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def field_match(predicted: Any, reference: Any, parsed: bool = True) -> FieldMatch:
    """Compare leaves: a predicted leaf counts when the reference has the same path with the same value.

    `parsed=False` means the output had no JSON at all: nothing predicted.

    >>> m = field_match({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"d": 3, "c": 5}, "a": 1.0, "e": 0})
    >>> (m.true_positives, m.n_predicted, m.n_reference)
    (2, 3, 4)
    >>> round(m.precision, 4), round(m.recall, 4), round(m.f1, 4)
    (0.6667, 0.5, 0.5714)
    """
    ref = flatten_json(reference)
    pred = flatten_json(predicted) if parsed else {}
    tp = sum(1 for path, value in pred.items() if ref.get(path) == value)
    return FieldMatch(tp, len(pred), len(ref))


def _schema_ok(value: Any, schema: dict[str, Any] | None) -> bool:
    if not schema:
        return True
    import jsonschema

    return jsonschema.validators.validator_for(schema)(schema).is_valid(value)


def json_structure(value: Any) -> frozenset[str]:
    """The key structure of a JSON value: its key paths, list indices folded to `[]`.

    Two outputs agree in structure when these sets are equal (same keys at the same nesting; the values and the
    number of list items may differ).

    >>> sorted(json_structure({"calls": [{"name": "f", "args": {"x": 1}}, {"name": "g", "args": {}}]}))
    ['calls', 'calls[]', 'calls[].args', 'calls[].args.x', 'calls[].name']
    """
    paths: set[str] = set()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, sub in node.items():
                child = f"{path}.{key}" if path else str(key)
                paths.add(child)
                walk(sub, child)
        elif isinstance(node, list):
            for sub in node:
                paths.add(f"{path}[]")
                walk(sub, f"{path}[]")

    walk(value, "")
    return frozenset(paths)


def split_text_fields(value: Any, paths: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """(a copy of `value` without the free-text fields, {path: removed value}); absent paths are skipped.

    >>> split_text_fields({"intent": "refund", "reply": "Sorry!", "meta": {"note": "x", "id": 3}},
    ...                   ["reply", "meta.note", "missing"])
    ({'intent': 'refund', 'meta': {'id': 3}}, {'reply': 'Sorry!', 'meta.note': 'x'})
    """
    if not paths or not isinstance(value, dict):
        return value, {}
    value = copy.deepcopy(value)  # the caller's answer stays whole
    removed: dict[str, Any] = {}
    for path in paths:
        *parents, leaf = path.split(".")
        node = value
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            removed[path] = node.pop(leaf)
    return value, removed


def _words(text: str) -> list[str]:
    # Unicode-aware words, case folded: rouge-score's default tokenizer keeps only ASCII letters and digits,
    # which would score every non-English reply as empty.
    return re.findall(r"\w+", text.casefold())


class _WordTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return _words(text)


_rouge: Any = None


def text_similarity(predicted: Any, reference: Any) -> float:
    """ROUGE-L F1 (longest common word subsequence) of a predicted free-text field against the reference's.

    A missing or non-string prediction scores 0; two empty texts score 1.

    >>> text_similarity("We will refund the order today", "we will refund your order")
    0.7273
    >>> text_similarity(None, "anything"), text_similarity("", "")
    (0.0, 1.0)
    """
    global _rouge
    if not isinstance(predicted, str) or not isinstance(reference, str):
        return 0.0
    if not _words(predicted) and not _words(reference):
        return 1.0
    if _rouge is None:
        from rouge_score import rouge_scorer

        _rouge = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    return round(_rouge.score(reference, predicted)["rougeL"].fmeasure, 4)


_chrf: Any = None


def text_chrf(predicted: Any, reference: Any) -> float:
    """chrF (character n-gram F-score, sacrebleu's defaults) of a predicted text against the reference, in [0, 1].

    It rewards a reply that says the same thing in nearly the same words (inflections, compounds) where ROUGE-L
    only counts whole words in order. A missing or non-string prediction scores 0; two empty texts score 1.

    >>> text_chrf("We will refund the order today", "we will refund your order")
    0.5739
    >>> text_chrf(None, "anything"), text_chrf("", "")
    (0.0, 1.0)
    """
    global _chrf
    if not isinstance(predicted, str) or not isinstance(reference, str):
        return 0.0
    if not predicted.strip() and not reference.strip():
        return 1.0
    if _chrf is None:
        from sacrebleu.metrics import CHRF

        _chrf = CHRF()
    return round(_chrf.sentence_score(predicted, [reference]).score / 100.0, 4)


# --- one output against one reference ---------------------------------------------------------------------


def parse_strict(output: str, contract: Any) -> tuple[bool, Any]:
    """(ok, answer) under the strict parser; `ok` is format compliance for label/json/regex contracts.

    >>> parse_strict('{"a": 1}', {"type": "json", "schema": {"required": ["a"]}})
    (True, {'a': 1})
    >>> parse_strict('{"b": 1}', {"type": "json", "schema": {"required": ["a"]}})
    (False, {'b': 1})
    >>> parse_strict("TCK-12", {"type": "regex", "pattern": r"TCK-\\d+"})
    (True, 'TCK-12')
    """
    c = as_contract(contract)
    if c.type == "label":
        answer = parse_label_strict(output, c.labels)
        return answer is not None, answer
    if c.type == "json":
        ok, value = parse_json_strict(output)
        return ok and _schema_ok(value, c.schema), value
    answer = output.strip()
    if c.type == "regex":
        return re.fullmatch(c.pattern or "", answer) is not None, answer
    return True, answer


def parse_lenient(output: str, contract: Any) -> tuple[bool, Any]:
    """(found, answer) under the lenient parser.

    For `regex` contracts: a full match of the output stripped of edge punctuation, else the first match
    inside it. For `text`: the normalized text (case, whitespace, edge punctuation).

    >>> parse_lenient("I think it is NEGATIVE.", {"type": "label", "labels": ["positive", "negative"]})
    (True, 'negative')
    >>> parse_lenient("Your ticket is TCK-12345.", {"type": "regex", "pattern": r"TCK-\\d+"})
    (True, 'TCK-12345')
    """
    c = as_contract(contract)
    if c.type == "label":
        answer = parse_label_lenient(output, c.labels)
        return answer is not None, answer
    if c.type == "json":
        return parse_json_lenient(output)
    if c.type == "regex":
        pattern = re.compile(c.pattern or "")
        for candidate in (output.strip(), output.strip(_EDGE)):
            if pattern.fullmatch(candidate):
                return True, candidate
        match = pattern.search(output)
        return (True, match.group(0)) if match else (False, None)
    return True, re.sub(r"\s+", " ", output.casefold()).strip(_EDGE).strip()


def format_ok(output: str, contract: Any) -> bool | None:
    """Format compliance: label in the set, valid JSON meeting the schema, full regex match; None for text.

    >>> format_ok("yes", {"type": "label", "labels": ["yes", "no"]})
    True
    >>> format_ok("Yes.", {"type": "label", "labels": ["yes", "no"]})
    False
    >>> format_ok("anything", "text") is None
    True
    """
    c = as_contract(contract)
    return None if c.type == "text" else parse_strict(output, c)[0]


@dataclass(frozen=True)
class Score:
    """One output scored against its reference."""

    correct: bool  # strict exact match
    correct_lenient: bool
    format_ok: bool | None  # None for text contracts
    answer: Any  # the strict parse (None when it failed)
    answer_lenient: Any  # the lenient parse (None when it failed)
    fields: FieldMatch | None = field(default=None)  # json contracts only
    text_similarity: float | None = None  # json contracts with text_fields: mean ROUGE-L F1 over them
    text_chrf: float | None = None  # json: mean chrF over the text fields; text: chrF of the whole answer
    rouge_l: float | None = None  # text contracts: ROUGE-L F1 of the whole answer


def score(output: str, reference: str, contract: Any) -> Score:
    """Score one output against one reference under a contract.

    Strict correctness: label and regex contracts compare the stripped output with the stripped reference
    (and the output must comply with the format); json contracts parse both and compare canonical forms
    (key order, whitespace and 1 vs 1.0 ignored) of an output that is JSON and nothing else; text compares
    stripped strings. Lenient correctness compares the lenient parse the same way. Field-level match (json)
    uses the lenient parse: it measures content, while format compliance measures form. A json contract's
    `text_fields` are left out of the exact comparisons and the field match, and compared by ROUGE-L instead
    (the mean over the text fields the reference holds).

    >>> s = score("Sure: ```json\\n{\\"b\\": 2, \\"a\\": 1}\\n```", '{"a":1,"b":2}', {"type": "json"})
    >>> s.correct, s.correct_lenient, s.format_ok, s.fields.f1
    (False, True, False, 1.0)
    >>> score(' {"b": 2,"a":1} ', '{"a":1,"b":2}', {"type": "json"}).correct
    True
    """
    c = as_contract(contract)
    ok, answer = parse_strict(output, c)
    found, lenient = parse_lenient(output, c)
    if c.type == "json":
        ref_ok, ref_value = parse_json_strict(reference)
        if not ref_ok:
            raise ValueError(f"reference is not valid JSON: {reference[:80]!r}")
        ref_structured, ref_texts = split_text_fields(ref_value, c.text_fields)
        ref_canon = canonical_json(ref_structured)
        strict_parsed, strict_value = parse_json_strict(output)
        strict_structured = split_text_fields(strict_value, c.text_fields)[0] if strict_parsed else None
        lenient_structured, texts = split_text_fields(lenient, c.text_fields) if found else (None, {})
        correct = strict_parsed and canonical_json(strict_structured) == ref_canon
        correct_lenient = found and canonical_json(lenient_structured) == ref_canon
        # Content, like the field match: measured on the lenient parse.
        similarity = (
            fmean(text_similarity(texts.get(p), ref) for p, ref in ref_texts.items()) if ref_texts else None
        )
        chrf = fmean(text_chrf(texts.get(p), ref) for p, ref in ref_texts.items()) if ref_texts else None
        return Score(
            correct=correct,
            correct_lenient=correct_lenient,
            format_ok=ok,
            answer=strict_value if strict_parsed else None,
            answer_lenient=lenient if found else None,
            fields=field_match(lenient_structured, ref_structured, parsed=found),
            text_similarity=similarity,
            text_chrf=chrf,
        )
    if c.type == "text":
        ref_norm = re.sub(r"\s+", " ", reference.casefold()).strip(_EDGE).strip()
        return Score(
            output.strip() == reference.strip(),
            lenient == ref_norm,
            None,
            answer,
            lenient,
            text_chrf=text_chrf(output.strip(), reference.strip()),
            rouge_l=text_similarity(output.strip(), reference.strip()),
        )
    ref = reference.strip()
    correct = ok and answer == ref
    correct_lenient = found and lenient == ref
    return Score(correct, correct_lenient, ok, answer if ok else None, lenient if found else None)


# --- sets of outputs ------------------------------------------------------------------------------------


def label_metrics(
    references: Sequence[str], predictions: Sequence[str | None], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 and the confusion matrix of label predictions (None = no valid label).

    Macro-F1 averages per-label F1 over the labels that occur in the references or the predictions (as
    scikit-learn does by default), so labels of a large contract absent from a small test set do not
    count as zeros. The confusion matrix has one row per reference label and one column per label, plus a
    last column `null` for outputs that gave no valid label.

    >>> m = label_metrics(["a", "a", "b", "b"], ["a", "b", "b", None], ["a", "b", "c"])
    >>> m["accuracy"], round(m["macro_f1"], 4)
    (0.5, 0.5833)
    >>> m["confusion"]["matrix"]
    [[1, 1, 0], [0, 1, 1]]
    """
    if len(references) != len(predictions):
        raise ValueError("references and predictions differ in length")
    present = set(references) | {p for p in predictions if p is not None}
    order = [x for x in (labels or ()) if x in present] + sorted(present - set(labels or ()))
    f1s = []
    for label in order:
        tp = sum(1 for r, p in zip(references, predictions, strict=True) if r == label and p == label)
        fp = sum(1 for r, p in zip(references, predictions, strict=True) if r != label and p == label)
        fn = sum(1 for r, p in zip(references, predictions, strict=True) if r == label and p != label)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    rows = [x for x in order if x in set(references)]
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * (len(order) + 1) for _ in rows]
    row_of = {label: i for i, label in enumerate(rows)}
    for r, p in zip(references, predictions, strict=True):
        matrix[row_of[r]][index[p] if p is not None else len(order)] += 1
    n = len(references)
    return {
        "accuracy": sum(1 for r, p in zip(references, predictions, strict=True) if r == p) / n if n else None,
        "macro_f1": sum(f1s) / len(f1s) if f1s else None,
        "confusion": {"rows": rows, "columns": [*order, None], "matrix": matrix},
    }


@dataclass(frozen=True)
class Consistency:
    """Agreement of the n sampled outputs of one prompt."""

    structure: bool  # same format validity and, for JSON, the same key structure
    answer: bool  # every sample parsed, to the same answer

    @property
    def both(self) -> bool:
        return self.structure and self.answer


def _answer_key(found: bool, answer: Any, c: Contract) -> str | None:
    if not found:
        return None
    return canonical_json(split_text_fields(answer, c.text_fields)[0]) if c.type == "json" else str(answer)


def consistency(samples: Iterable[str], contract: Any) -> Consistency:
    """Do the sampled outputs of one prompt agree in structure and in answer?

    Structure: every sample has the same format validity (all comply or none does) and, for json
    contracts, the same key structure (`json_structure` of the lenient parse). Answer: every sample has a
    lenient answer and they are all equal (canonical JSON for json, without the contract's free-text fields,
    whose wording may vary). Samples that all fail to parse agree in structure but not in answer: an output
    with no answer is not a consistent answer.

    >>> c = {"type": "json"}
    >>> consistency(['{"a": 1}', '```json\\n{"a": 2}\\n```'], c)
    Consistency(structure=False, answer=False)
    >>> consistency(['{"a": 1}', '{ "a" : 1.0 }'], c)
    Consistency(structure=True, answer=True)
    >>> consistency(["Positive.", "positive"], {"type": "label", "labels": ["positive", "negative"]})
    Consistency(structure=False, answer=True)
    """
    c = as_contract(contract)
    shapes, answers = set(), set()
    for output in samples:
        ok = parse_strict(output, c)[0]
        found, answer = parse_lenient(output, c)
        shape: tuple = (ok,)
        if c.type == "json":
            shape += (json_structure(answer) if found else None,)
        shapes.add(shape)
        answers.add(_answer_key(found, answer, c))
    return Consistency(structure=len(shapes) <= 1, answer=len(answers) == 1 and None not in answers)
