"""Per-example records -> the evaluation summary (`tunewise.outputs.EvalSummary`; read by `decide`, `report`
and the economics stage).

A per-example record is one arm's answer to one held-out example:

    {"id": "ex-17", "input": "...", "reference": "...", "arm": "few-shot", "output": "...",
     "samples": ["...", ...], "latency_ms": 120.0, "prompt_tokens": 812, "completion_tokens": 21}

`samples` (extra sampled outputs for the consistency rate) may be empty or absent: consistency is measured
over the samples of the examples that have at least two (the greedy `output` is not one of them, being
deterministic it would only dilute disagreement); latency and token fields
may be None (an endpoint that reports no usage). Optional keys `kind` ("prompted" | "fine-tuned" |
"endpoint") and `constrained` (bool) describe the arm; `arm_info` passed to `build_summary` wins over them.

Knowledge tasks add optional keys (evaluate/knowledge.py): `answers` (acceptable answers; default the reference),
`gold_doc` (the document that holds the answer) and, for the rag arms, `passages` (`[{"doc", "chunk", "score",
"text"}]`, in prompt order) and `retrieval_ms`. A text contract's arms then get exact match and token F1, the rag
arms groundedness and, with `gold_doc`, recall@k and MRR; a rag arm's passages count as its input for the
unsupported-content rate.

The summary's shape is `EvalSummary` (see `build_summary`). Every rate carries a 95% interval: Wilson for proportions,
percentile bootstrap for field F1 and for paired differences. `cost_per_query` is left null for the economics
stage to fill.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.evaluate.arms import PROMPTED_ARMS, is_tuned_arm
from tunewise.evaluate.knowledge import exact_match, grounded, reciprocal_rank, token_f1
from tunewise.evaluate.scorers import as_contract, consistency, label_metrics, score
from tunewise.evaluate.stats import (
    bootstrap_mean,
    bootstrap_paired_difference,
    mcnemar_exact,
    wilson,
)
from tunewise.evaluate.unsupported import is_unsupported
from tunewise.outputs import EvalSummary

__all__ = ["build_summary", "score_records"]

_REQUIRED = ("id", "input", "reference", "arm", "output")


def _kind(arm: str) -> str:
    """Guess an arm's kind from its name when nobody said: 'few-shot+scored' is prompted, 'fine-tuned:RUN' too."""
    if is_tuned_arm(arm):
        return "fine-tuned"
    return "prompted" if arm.split(":")[0].split("+")[0] in PROMPTED_ARMS else "endpoint"


def _variant(arm: str) -> str:
    """'scored' for 'few-shot+scored', 'free' for an arm without a suffix.

    >>> _variant("few-shot+scored"), _variant("fine-tuned")
    ('scored', 'free')
    """
    return arm.partition("+")[2] or "free"


def contract_vocabulary(schema: Any, labels: Sequence[str] = ()) -> tuple[str, ...]:
    """Values the contract itself offers: its labels and every string `enum`/`const` of its JSON Schema.
    Answering with one of them invents nothing (it may still be the wrong answer, which accuracy measures).

    >>> contract_vocabulary({"properties": {"p": {"enum": ["low", "high"]}, "k": {"const": "v"}}}, ["x"])
    ('x', 'low', 'high', 'v')
    """
    found = list(labels)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            found.extend(v for v in node.get("enum", []) if isinstance(v, str))
            if isinstance(node.get("const"), str):
                found.append(node["const"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return tuple(dict.fromkeys(found))


def score_records(records: Iterable[Mapping[str, Any]], contract: Any) -> list[dict[str, Any]]:
    """Each record with its scores added (`correct`, `correct_lenient`, `format_ok`, `answer`, `unsupported`...).

    The report and the review pages read these; `build_summary` aggregates them.

    >>> rows = score_records([{"id": 1, "input": "x", "reference": "yes", "arm": "a", "output": "Yes."}],
    ...                      {"type": "label", "labels": ["yes", "no"]})
    >>> rows[0]["correct"], rows[0]["correct_lenient"], rows[0]["format_ok"], rows[0]["answer_lenient"]
    (False, True, False, 'yes')
    """
    c = as_contract(contract)
    vocabulary = contract_vocabulary(c.schema, c.labels)
    out = []
    for i, record in enumerate(records):
        missing = [k for k in _REQUIRED if k not in record]
        if missing:
            raise TunewiseError(
                f"evaluation record {i} lacks {', '.join(missing)}",
                hint="each record needs id, input, reference, arm and output",
            )
        s = score(record["output"], record["reference"], c)
        passages = [p["text"] for p in record.get("passages") or []]
        docs = [p["doc"] for p in record.get("passages") or []]
        answers = list(record.get("answers") or [record["reference"]])
        gold = record.get("gold_doc")
        samples = list(record.get("samples") or [])
        agree = consistency(samples, c) if len(samples) >= 2 else None
        row = dict(record)
        row.update(
            correct=s.correct,
            correct_lenient=s.correct_lenient,
            format_ok=s.format_ok,
            answer=s.answer,
            answer_lenient=s.answer_lenient,
            field_tp=s.fields.true_positives if s.fields else None,
            field_predicted=s.fields.n_predicted if s.fields else None,
            field_reference=s.fields.n_reference if s.fields else None,
            field_f1=s.fields.f1 if s.fields else None,
            text_similarity=s.text_similarity,
            text_chrf=s.text_chrf,
            rouge_l=s.rouge_l,
            consistent_structure=agree.structure if agree else None,
            consistent_answer=agree.answer if agree else None,
            consistent=agree.both if agree else None,
            # A rag arm was handed its passages: a value found in them is not made up.
            unsupported=is_unsupported(
                record["output"], "\n".join([record["input"], *passages]), record["reference"], vocabulary
            ),
            exact_match=exact_match(record["output"], answers) if c.type == "text" else None,
            token_f1=token_f1(record["output"], answers) if c.type == "text" else None,
            grounded=grounded(record["output"], passages) if "passages" in record else None,
            retrieval_hit=(gold in docs) if "passages" in record and gold else None,
            retrieval_rr=reciprocal_rank(docs, gold) if "passages" in record and gold else None,
        )
        out.append(row)
    return out


def _rate(flags: Sequence[bool | None]) -> dict[str, float] | None:
    known = [bool(f) for f in flags if f is not None]
    if not known:
        return None
    return {**wilson(sum(known), len(known)).as_dict(), "n": len(known)}


def _mean(values: Iterable[float | None]) -> float | None:
    known = [float(v) for v in values if v is not None]
    return float(np.mean(known)) if known else None


def _latency(values: Iterable[float | None]) -> dict[str, float] | None:
    known = [float(v) for v in values if v is not None]
    if not known:
        return None
    p50, p95 = np.percentile(known, [50, 95])  # linear interpolation between order statistics
    return {"p50": float(p50), "p95": float(p95)}


def _bootstrap(values: Iterable[float | None], seed: int = 0) -> dict[str, float] | None:
    known = [float(v) for v in values if v is not None]
    return {**bootstrap_mean(known, seed=seed).as_dict(), "n": len(known)} if known else None


def _ratio(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, key: str) -> float | None:
    if not a or not b or a.get(key) is None or not b.get(key):
        return None
    return float(a[key]) / float(b[key])


def _arm_summary(name: str, rows: list[dict[str, Any]], contract_type: str, info: Mapping[str, Any]) -> dict:
    first = rows[0]
    arm: dict[str, Any] = {
        "name": name,
        "kind": info.get("kind") or first.get("kind") or _kind(name),
        "constrained": bool(info.get("constrained", first.get("constrained", False))),
        # free | scored (labels ranked by likelihood) | constrained (schema-constrained decoding)
        "variant": info.get("variant") or first.get("variant") or _variant(name),
        "n": len(rows),
        "accuracy": _rate([r["correct"] for r in rows]),
        "accuracy_lenient": _rate([r["correct_lenient"] for r in rows]),
        "format_compliance": _rate([r["format_ok"] for r in rows]),
        "consistency": _rate([r["consistent"] for r in rows]),
        "consistency_structure": _rate([r["consistent_structure"] for r in rows]),
        "consistency_answer": _rate([r["consistent_answer"] for r in rows]),
        # A heuristic, not a judge of facts: see tunewise.evaluate.unsupported.
        "unsupported_rate": _rate([r["unsupported"] for r in rows]),
        "macro_f1": None,
        "field_f1": None,
        "latency_ms": _latency(r.get("latency_ms") for r in rows),
        "prompt_tokens": _mean(r.get("prompt_tokens") for r in rows),
        "completion_tokens": _mean(r.get("completion_tokens") for r in rows),
        "cost_per_query": None,
    }
    if contract_type != "text":
        # The wrong answers split by kind, for the verdict's "what to fix first": a format violation is never
        # strictly correct; one whose lenient parse is right only lacks the form.
        wrong = [r for r in rows if not r["correct"]]
        malformed = [r for r in wrong if r["format_ok"] is False]
        arm["errors"] = {
            "wrong": len(wrong),
            "format": len(malformed),
            "format_right_answer": sum(1 for r in malformed if r["correct_lenient"]),
            "content": len(wrong) - len(malformed),
        }
    if contract_type == "text":
        # Short answers: SQuAD-normalised exact match (Wilson) and token F1 (bootstrap), best over the answers.
        arm["exact_match"] = _rate([r["exact_match"] for r in rows])
        arm["token_f1"] = _bootstrap(r["token_f1"] for r in rows)
        # Prose answers: ROUGE-L F1 and chrF against the reference (bootstrap), beside exact match.
        arm["rouge_l"] = _bootstrap(r["rouge_l"] for r in rows)
        arm["chrf"] = _bootstrap(r["text_chrf"] for r in rows)
    if any("passages" in r for r in rows):
        # The rag arms: is the answer in the passages (lexical, see evaluate/knowledge.py), did retrieval find
        # the gold document among the k passages (recall@k), and how high (MRR).
        arm["grounded_rate"] = _rate([r["grounded"] for r in rows])
        arm["recall_at_k"] = _rate([r["retrieval_hit"] for r in rows])
        arm["mrr"] = _bootstrap(r["retrieval_rr"] for r in rows)
        arm["k"] = max(len(r.get("passages") or []) for r in rows)
        arm["retrieval_latency_ms"] = _latency(r.get("retrieval_ms") for r in rows)
    for key in ("retrieval", "trained_with_retrieval"):  # which index, retriever and k (evaluate/run.py)
        if info.get(key):
            arm[key] = info[key]
    if contract_type == "label":
        metrics = label_metrics(
            [r["reference"].strip() for r in rows], [r["answer"] for r in rows], info.get("labels")
        )
        lenient = label_metrics(
            [r["reference"].strip() for r in rows], [r["answer_lenient"] for r in rows], info.get("labels")
        )
        arm.update(
            macro_f1=metrics["macro_f1"],
            macro_f1_lenient=lenient["macro_f1"],
            confusion=metrics["confusion"],
            confusion_lenient=lenient["confusion"],
        )
    if contract_type == "json":
        tp = sum(r["field_tp"] for r in rows)
        predicted = sum(r["field_predicted"] for r in rows)
        reference = sum(r["field_reference"] for r in rows)
        # Micro-averaged over all leaves of the set: 2TP / (predicted + reference leaves).
        arm["field_f1"] = 2 * tp / (predicted + reference) if predicted + reference else None
        arm["field_precision"] = tp / predicted if predicted else None
        arm["field_recall"] = tp / reference if reference else None
        arm["field_f1_mean"] = bootstrap_mean([r["field_f1"] for r in rows]).as_dict()
        # The contract's free-text fields (text_fields): mean ROUGE-L F1 against the reference, with its interval.
        texts = [r["text_similarity"] for r in rows if r.get("text_similarity") is not None]
        arm["text_similarity"] = bootstrap_mean(texts).as_dict() if texts else None
        chrfs = [r["text_chrf"] for r in rows if r.get("text_chrf") is not None]
        arm["text_chrf"] = bootstrap_mean(chrfs).as_dict() if chrfs else None
        # How often the JSON guard (evaluate/loopguard.py) changed a greedy answer: took it back from a
        # repetition, or refused a token (a mismatched bracket, a "," in a sealed container).
        arm["json_guard"] = bool(info.get("json_guard", False))
        arm["guarded_answers"] = sum(1 for r in rows if r.get("guard_rewinds") or r.get("guard_refusals"))
    # What else the caller knows about the arm (its training run, an endpoint's model and pricing entry, ...).
    arm.update({k: v for k, v in info.items() if k not in arm and k != "labels"})
    return arm


def build_summary(
    records: Iterable[Mapping[str, Any]],
    contract: Any,
    task: str,
    arm_info: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
) -> EvalSummary:
    """Aggregate per-example records of every arm into the evaluation summary.

    Its JSON (`model_dump()`; extra keys allowed, these are fixed):

        {"task", "n_examples", "contract",
         "arms": [{"name", "kind", "constrained", "accuracy": {"value", "low", "high"}, "accuracy_lenient",
                   "format_compliance", "consistency", "unsupported_rate", "macro_f1", "field_f1",
                   "latency_ms": {"p50", "p95"}, "prompt_tokens", "completion_tokens", "cost_per_query"}],
         "paired": [{"a", "b", "metric": "accuracy", "diff", "low", "high", "mcnemar_p"}]}

    Rates are None where they cannot be measured (format compliance of a text contract, consistency without
    samples). `paired` holds every *ordered* pair of arms (A vs B and B vs A), so a reader can look up any
    pair in the direction it wants; `diff` is strict accuracy of `a` minus `b` on the examples both arms
    answered (`n`), with a paired bootstrap interval (seeded) and the exact McNemar p-value;
    `text_similarity_diff` the same for the mean ROUGE-L of the contract's free-text fields (None without
    them). Extra keys
    `latency_p50_ratio` and `prompt_tokens_ratio` give a's median latency and mean prompt length over b's
    (0.6 = 40% shorter), None where either is unmeasured.
    Arms keep the order in which they first appear in the records.

    >>> recs = [{"id": i, "input": "q", "reference": "yes", "arm": arm, "output": out}
    ...         for arm, outs in [("few-shot", ["yes", "no"]), ("fine-tuned", ["yes", "yes"])]
    ...         for i, out in enumerate(outs)]
    >>> s = build_summary(recs, {"type": "label", "labels": ["yes", "no"]}, task="t")
    >>> [(a.name, a.accuracy.value) for a in s.arms]
    [('few-shot', 0.5), ('fine-tuned', 1.0)]
    >>> s.paired[0].a, s.paired[0].b, s.paired[0].diff, s.paired[0].mcnemar_p
    ('few-shot', 'fine-tuned', -0.5, 1.0)
    """
    c = as_contract(contract)
    scored = score_records(records, c)
    if not scored:
        raise TunewiseError(
            "no evaluation records to summarize", hint="run the arms on the held-out split first"
        )
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for row in scored:
        by_arm.setdefault(str(row["arm"]), []).append(row)
    for name, rows in by_arm.items():
        ids = [r["id"] for r in rows]
        if len(set(ids)) != len(ids):
            dupes = sorted({str(i) for i in ids if ids.count(i) > 1})[:5]
            raise TunewiseError(f"arm {name!r} has several records for example(s) {', '.join(dupes)}")
    info = dict(arm_info or {})
    arms = [
        _arm_summary(name, rows, c.type, {"labels": list(c.labels), **info.get(name, {})})
        for name, rows in by_arm.items()
    ]
    correct = {name: {r["id"]: r["correct"] for r in rows} for name, rows in by_arm.items()}
    similarity = {
        name: {r["id"]: r["text_similarity"] for r in rows if r.get("text_similarity") is not None}
        for name, rows in by_arm.items()
    }
    em = {name: {r["id"]: r["exact_match"] for r in rows} for name, rows in by_arm.items()}
    f1 = {name: {r["id"]: r["token_f1"] for r in rows} for name, rows in by_arm.items()}
    by_name = {arm["name"]: arm for arm in arms}
    paired = []
    for a, b in itertools.permutations(by_arm, 2):
        common = [i for i in correct[a] if i in correct[b]]
        if not common:
            continue
        xa = [float(correct[a][i]) for i in common]
        xb = [float(correct[b][i]) for i in common]
        diff = bootstrap_paired_difference(xa, xb, seed=seed)
        both = [i for i in similarity[a] if i in similarity[b]]
        text_diff = (
            bootstrap_paired_difference(
                [similarity[a][i] for i in both], [similarity[b][i] for i in both], seed=seed
            ).as_dict()
            if both
            else None
        )
        knowledge: dict[str, Any] = {}
        if c.type == "text":
            ea, eb = [float(em[a][i]) for i in common], [float(em[b][i]) for i in common]
            knowledge = {
                # Exact match and token F1 of a minus b, paired bootstrap; McNemar on exact match.
                "exact_match_diff": bootstrap_paired_difference(ea, eb, seed=seed).as_dict(),
                "exact_match_mcnemar_p": mcnemar_exact(ea, eb),
                "token_f1_diff": bootstrap_paired_difference(
                    [f1[a][i] for i in common], [f1[b][i] for i in common], seed=seed
                ).as_dict(),
            }
        paired.append(
            {
                **knowledge,
                "a": a,
                "b": b,
                "metric": "accuracy",
                "n": len(common),
                "diff": diff.value,
                "low": diff.low,
                "high": diff.high,
                "mcnemar_p": mcnemar_exact(xa, xb),
                # The guide's "latency reduction" and the prompt-length saving: a's measure over b's.
                "latency_p50_ratio": _ratio(by_name[a]["latency_ms"], by_name[b]["latency_ms"], "p50"),
                "prompt_tokens_ratio": _ratio(by_name[a], by_name[b], "prompt_tokens"),
                # json contracts with text_fields: mean ROUGE-L of a minus b, paired bootstrap interval.
                "text_similarity_diff": text_diff,
            }
        )
    return EvalSummary.model_validate(
        {
            "task": task,
            "n_examples": len({r["id"] for r in scored}),
            "contract": c.type,
            "arms": arms,
            "paired": paired,
        }
    )
