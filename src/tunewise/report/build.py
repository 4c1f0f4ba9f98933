"""The report stage: one self-contained HTML page and the same content as JSON, from the pipeline's state dict.

    build_report(state, out_dir) -> (report.html, report.json)

The state is what earlier stages recorded (`tunewise.outputs.ReportState` as JSON); every section may be missing
or None, and the page then says plainly what has not run instead of failing. The HTML needs no network to be
viewed: CSS is inline, plots are SVG images embedded as `data:` URIs, no fonts or scripts are fetched. All text
goes through Jinja2 with autoescaping on, because model outputs, inputs and even arm names are untrusted text.

The page is built in two steps: `view(state)` turns the loosely typed state into display-ready rows (numbers
formatted, bars judged, plots drawn), then the template lays them out. Keeping the judgement in Python keeps it
testable and the template free of logic.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

from tunewise.errors import TunewiseError

log = logging.getLogger(__name__)

# Held-out examples x arms on the page (and in report.json, `pipeline.state`): past it the page would weigh tens
# of megabytes; the first ones are shown and the page says where the rest are.
MAX_EXAMPLE_CELLS = 5000
TEMPLATE = "report_template.html"

SECTIONS = (
    "task",
    "data",
    "training",
    "evaluation",
    "economics",
    "verdict",
    "examples",
    "stage_times",
)
# What the page says when a section is absent: the stage that would have produced it.
MISSING = {
    "task": "no task card: the task spec was not recorded",
    "data": "the data check has not run",
    "training": "training has not run",
    "evaluation": "evaluation has not run",
    "economics": "economics has not run: no cost per query or break-even volume",
    "verdict": "no verdict yet",
    "examples": "no per-example outputs recorded",
    "stage_times": "no stage times recorded",
}


# --- formatting -------------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    """A finite float, or None for anything missing or not a number.

    >>> _num(0.5), _num(None), _num("0.5"), _num(float("nan")), _num(True)
    (0.5, None, None, None, None)
    """
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def pct(x: Any, places: int = 1) -> str:
    """A rate in [0, 1] as a percentage.

    >>> pct(0.8512), pct(None), pct(1)
    ('85.1%', '—', '100.0%')
    """
    v = _num(x)
    return "—" if v is None else f"{100 * v:.{places}f}%"


def usd(x: Any) -> str:
    """Dollars: cents for monthly figures, three significant digits for sub-cent per-query costs.

    >>> usd(1224), usd(0.08), usd(0.000123456), usd(0), usd(None)
    ('$1,224.00', '$0.0800', '$0.000123', '$0', '—')
    """
    v = _num(x)
    if v is None:
        return "—"
    if v == 0:
        return "$0"
    if abs(v) >= 1:
        return f"${v:,.2f}"
    # Per-query costs are often fractions of a cent: keep three significant digits, at least four places.
    places = max(4, 2 - math.floor(math.log10(abs(v))))
    return f"${v:.{places}f}"


def seconds(x: Any) -> str:
    """A duration for people.

    >>> seconds(1.234), seconds(300), seconds(4000), seconds(None)
    ('1.2 s', '5 min 00 s', '1 h 06 min', '—')
    """
    v = _num(x)
    if v is None:
        return "—"
    if v < 60:
        return f"{v:.1f} s"
    if v < 3600:
        return f"{int(v // 60)} min {int(v % 60):02d} s"
    return f"{int(v // 3600)} h {int(v % 3600 // 60):02d} min"


def number(x: Any, places: int = 1) -> str:
    """A plain number with thousands separators; integers stay integers.

    >>> number(49329), number(12.345), number(2e-4), number(None)
    ('49,329', '12.3', '0.0002', '—')
    """
    v = _num(x)
    if v is None:
        return "—" if x is None else str(x)
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    if abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:,.{places}f}"


def _interval(iv: Any) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of a rate given as {"value", "low", "high"} or as a bare number."""
    if isinstance(iv, Mapping):
        return _num(iv.get("value")), _num(iv.get("low")), _num(iv.get("high"))
    return _num(iv), None, None


def _kept_text(kept_step: Any, steps_run: Any, check: Any) -> str:
    """Which weights training output, and the comparison that chose them.

    >>> _kept_text(None, 102, {"best_step": 78, "diff": 0.0018, "se": 0.0041, "earlier_is_better": False})
    'the last step (step 78 was lower by 0.0018, within the noise: standard error 0.0041)'
    >>> _kept_text(52, 102, {"best_step": 52, "diff": 0.02, "se": 0.004, "earlier_is_better": True})
    'step 52 of 102 (lower than the last step by 0.0200, standard error 0.0040)'
    """
    check = check if isinstance(check, Mapping) else {}
    diff, se = _num(check.get("diff")), _num(check.get("se"))
    noise = "" if se is None else f"standard error {se:.4f}"
    if kept_step is None:
        if diff is None or check.get("earlier_is_better"):
            return "the last step"
        return f"the last step (step {check.get('best_step')} was lower by {diff:.4f}, within the noise" + (
            f": {noise})" if noise else ")"
        )
    text = f"step {kept_step} of {steps_run}"
    if diff is None:
        return text
    return f"{text} (lower than the last step by {diff:.4f}" + (f", {noise})" if noise else ")")


def _value_text(x: Any) -> str:
    """A hyperparameter or metric value as text (nested values as compact JSON)."""
    if isinstance(x, (dict, list)):
        return json.dumps(x, ensure_ascii=False, default=str)
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, (int, float)):
        return number(x, 4)
    return "—" if x is None else str(x)


# --- the view model -----------------------------------------------------------------------------------------


def _section(state: Mapping[str, Any], name: str, kind: type) -> Any:
    """A section of the state, None when missing; a section of the wrong type is an error naming it."""
    value = state.get(name)
    if value is None:
        return None
    if not isinstance(value, kind):
        raise TunewiseError(
            f"report state: section '{name}' must be {'a list' if kind is list else 'an object'} or null "
            f"(got {type(value).__name__})",
            hint="rebuild the state with `tunewise run`, or fix that section of the state file",
        )
    return value


def _rate_cell(iv: Any, bar: float | None = None, higher_is_better: bool = True) -> dict[str, Any]:
    """One table cell: the value, its interval, and whether it meets a bar (None: no bar applies)."""
    value, low, high = _interval(iv)
    cell: dict[str, Any] = {
        "text": pct(value),
        "interval": f"{pct(low)} – {pct(high)}" if low is not None and high is not None else "",
        "mark": None,
        "title": "",
    }
    if bar is not None and value is not None:
        ok = value >= bar if higher_is_better else value <= bar
        cell["mark"] = "pass" if ok else "fail"
        op = (">=" if ok else "<") if higher_is_better else ("<=" if ok else ">")
        cell["title"] = f"{pct(value)} {op} {pct(bar)}"
        # The interval straddles the bar: the point estimate decides, but the evidence does not settle it.
        if low is not None and high is not None and low < bar <= high:
            cell["mark"] += " unsure"
            cell["title"] += "; the 95% interval crosses the bar"
    return cell


def _plain_cell(text: str, mark: str | None = None, title: str = "") -> dict[str, Any]:
    return {"text": text, "interval": "", "mark": mark, "title": title}


def reference_arm(arms: Sequence[Mapping[str, Any]], named: str | None = None) -> Mapping[str, Any] | None:
    """The prompted arm the fine-tuned arms are held against: the one the verdict named, else (no verdict yet)
    the best by the verdict's own rule, `tunewise.decide.verdict.best_prompted_arm`.

    >>> reference_arm([{"name": "a", "kind": "prompted", "accuracy": {"value": 0.4}},
    ...                {"name": "b", "kind": "prompted", "accuracy": {"value": 0.6}},
    ...                {"name": "ft", "kind": "fine-tuned", "accuracy": {"value": 0.9}}])["name"]
    'b'
    """
    from tunewise.decide.verdict import best_prompted_arm

    prompted = [a for a in arms if a.get("kind") != "fine-tuned"]
    for a in prompted:
        if named is not None and a.get("name") == named:
            return a
    return best_prompted_arm(prompted)


def bars(verdict: Mapping[str, Any] | None) -> dict[str, float]:
    """The quality bars the arms are judged by: those the verdict recorded, else the verdict's defaults.

    >>> bars({"bars": {"accuracy": 0.9, "consistency": 0.95, "format": 0.99}})["accuracy"], bars(None)["accuracy"]
    (0.9, 0.85)
    """
    from tunewise.decide.verdict import BARS

    recorded = verdict.get("bars") if isinstance(verdict, Mapping) else None
    chosen = BARS.model_dump()
    if isinstance(recorded, Mapping):
        chosen.update({k: float(v) for k, v in recorded.items() if k in chosen and _num(v) is not None})
    return chosen


def priced_arms(arms: Sequence[Any], options: Sequence[Any]) -> list[Any]:
    """Arms with a cost per query: where the evaluation left it null (it measures tokens, not dollars), take
    the economics stage's option for that arm, named "<arm> @ <platform>", on its cheapest platform.

    >>> a = priced_arms([{"name": "ft", "cost_per_query": None}],
    ...                 [{"name": "ft @ together", "per_query": 0.002}, {"name": "ft @ azure", "per_query": 0.003}])
    >>> a[0]["cost_per_query"], a[0]["cost_source"]
    (0.002, 'together')
    """
    out = []
    for arm in arms:
        if not isinstance(arm, Mapping) or _num(arm.get("cost_per_query")) is not None:
            out.append(arm)
            continue
        name = str(arm.get("name"))
        candidates = []
        for o in options:
            if not isinstance(o, Mapping) or _num(o.get("per_query")) is None:
                continue
            oname = str(o.get("name"))
            if oname == name:
                candidates.append((float(o["per_query"]), "economics"))
            elif oname.startswith(name + " @ "):
                candidates.append((float(o["per_query"]), oname[len(name) + 3 :]))
        if candidates:
            cost, source = min(candidates)
            out.append(dict(arm, cost_per_query=cost, cost_source=source))
        else:
            out.append(arm)
    return out


def _arms_view(
    evaluation: Mapping[str, Any], reference_name: str | None, bar: Mapping[str, float]
) -> dict[str, Any]:
    arms = [a for a in evaluation.get("arms") or [] if isinstance(a, Mapping)]
    ref = reference_arm(arms, reference_name)
    ref_unsupported = _interval(ref.get("unsupported_rate"))[0] if ref else None
    ref_cost = _num(ref.get("cost_per_query")) if ref else None
    show_macro = any(_num(a.get("macro_f1")) is not None for a in arms)
    show_field = any(_num(a.get("field_f1")) is not None for a in arms)
    show_text = any(isinstance(a.get("text_similarity"), Mapping) for a in arms)
    # Knowledge tasks (a text contract with short answers): exact match and token F1 for every arm; the
    # retrieval measures only where some arm retrieved.
    show_em = any(isinstance(a.get("exact_match"), Mapping) for a in arms)
    show_retrieval = any(isinstance(a.get("recall_at_k"), Mapping) for a in arms)
    rows = []
    for arm in arms:
        tuned = arm.get("kind") == "fine-tuned"
        is_ref = ref is not None and arm is ref
        # Unsupported content and cost are judged against the reference arm, and only for fine-tuned arms: the
        # guide's bars are "not above the base model's" and "lower than the long-prompt cost".
        if is_ref:
            unsupported = _rate_cell(arm.get("unsupported_rate"))
            unsupported["mark"], unsupported["title"] = "ref", "the reference (best prompted) arm"
        else:
            unsupported = _rate_cell(
                arm.get("unsupported_rate"),
                ref_unsupported if tuned and ref_unsupported is not None else None,
                higher_is_better=False,
            )
        cost = _num(arm.get("cost_per_query"))
        cost_cell = _plain_cell(usd(cost))
        if arm.get("cost_source"):
            cost_cell["interval"] = f"on {arm['cost_source']}"
        if is_ref and cost is not None:
            cost_cell.update(mark="ref", title="the reference (best prompted) arm")
        elif tuned and cost is not None and ref_cost is not None:
            ok = cost < ref_cost
            cost_cell.update(
                mark="pass" if ok else "fail",
                title=f"{usd(cost)} {'<' if ok else '>='} {usd(ref_cost)} of {ref.get('name')}",  # type: ignore[union-attr]
            )
        latency = arm.get("latency_ms") if isinstance(arm.get("latency_ms"), Mapping) else {}
        cells = {
            "accuracy": _rate_cell(arm.get("accuracy"), bar["accuracy"]),
            "accuracy_lenient": _rate_cell(arm.get("accuracy_lenient")),
            "format_compliance": _rate_cell(arm.get("format_compliance"), bar["format"]),
            "consistency": _rate_cell(arm.get("consistency"), bar["consistency"]),
            "unsupported_rate": unsupported,
            "macro_f1": _plain_cell(pct(arm.get("macro_f1"))),
            "field_f1": _plain_cell(pct(arm.get("field_f1"))),
            "text_similarity": _rate_cell(arm.get("text_similarity")),
            "exact_match": _rate_cell(arm.get("exact_match")),
            "token_f1": _rate_cell(arm.get("token_f1")),
            "grounded_rate": _rate_cell(arm.get("grounded_rate")),
            "recall_at_k": _rate_cell(arm.get("recall_at_k")),
            "mrr": _rate_cell(arm.get("mrr")),
            "latency": _plain_cell(f"{number(latency.get('p50'), 0)} / {number(latency.get('p95'), 0)}"),
            "prompt_tokens": _plain_cell(number(arm.get("prompt_tokens"))),
            "completion_tokens": _plain_cell(number(arm.get("completion_tokens"))),
            "cost_per_query": cost_cell,
        }
        rows.append(
            {
                "name": str(arm.get("name")),
                "kind": str(arm.get("kind") or "?"),
                "constrained": bool(arm.get("constrained")),
                "reference": is_ref,
                "n": arm.get("n"),
                "cells": cells,
            }
        )
    columns = [
        ("accuracy", "Accuracy", f"strict; bar {pct(bar['accuracy'], 0)}"),
        ("accuracy_lenient", "Accuracy (lenient)", "answer found in the output"),
        ("format_compliance", "Format", f"contract compliance; bar {pct(bar['format'], 0)}"),
        (
            "consistency",
            "Consistency",
            f"same structure and answer across samples; bar {pct(bar['consistency'], 0)}",
        ),
        (
            "unsupported_rate",
            "Unsupported",
            "content not in the input or reference; bar: not above the reference arm",
        ),
    ]
    if show_macro:
        columns.append(("macro_f1", "Macro-F1", "label contract"))
    if show_field:
        columns.append(("field_f1", "Field-F1", "JSON contract, micro over leaves"))
    if show_text:
        columns.append(("text_similarity", "Text ROUGE-L", "free-text fields against the reference, mean F1"))
    if show_em:
        columns += [
            ("exact_match", "Exact match", "normalised answer equals an acceptable answer (SQuAD rules)"),
            ("token_f1", "Token F1", "token overlap with the best acceptable answer, mean"),
        ]
    if show_retrieval:
        columns += [
            ("grounded_rate", "Grounded", "the answer's content words are in the retrieved passages"),
            ("recall_at_k", "Recall@k", "the gold document is among the k passages"),
            ("mrr", "MRR", "mean reciprocal rank of the gold document"),
        ]
    columns += [
        ("latency", "Latency ms", "p50 / p95"),
        ("prompt_tokens", "Prompt tok", "mean per query"),
        ("completion_tokens", "Completion tok", "mean per query"),
        ("cost_per_query", "Cost / query", "bar: below the reference arm"),
    ]
    return {"rows": rows, "columns": columns, "reference": ref.get("name") if ref else None}


def _paired_view(evaluation: Mapping[str, Any], kinds: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each unordered pair once: the summary lists A-B and B-A; keep the direction with a fine-tuned arm first."""
    chosen: dict[tuple[str, frozenset[str]], Mapping[str, Any]] = {}
    entries: list[Mapping[str, Any]] = []
    for p in evaluation.get("paired") or []:
        if not isinstance(p, Mapping):
            continue
        entries.append(p)
        # Measures compared on the same examples beside accuracy: the free-text fields' ROUGE-L, and a knowledge
        # task's exact match (with its McNemar p) and token F1.
        for key, metric, p_key in (
            ("text_similarity_diff", "text ROUGE-L", None),
            ("exact_match_diff", "exact match", "exact_match_mcnemar_p"),
            ("token_f1_diff", "token F1", None),
        ):
            d = p.get(key)
            if isinstance(d, Mapping):
                entries.append(
                    {"a": p.get("a"), "b": p.get("b"), "metric": metric, "n": p.get("n"),
                     "diff": d.get("value"), "low": d.get("low"), "high": d.get("high"),
                     "mcnemar_p": p.get(p_key) if p_key else None}
                )  # fmt: skip
    for p in entries:
        key = (str(p.get("metric", "accuracy")), frozenset((str(p.get("a")), str(p.get("b")))))
        current = chosen.get(key)
        if current is None or (
            kinds.get(str(p.get("a"))) == "fine-tuned" and kinds.get(str(current.get("a"))) != "fine-tuned"
        ):
            chosen[key] = p
    rows = []
    for p in chosen.values():
        diff, low, high = _num(p.get("diff")), _num(p.get("low")), _num(p.get("high"))
        significant = low is not None and high is not None and (low > 0 or high < 0)
        rows.append(
            {
                "a": str(p.get("a")),
                "b": str(p.get("b")),
                "metric": str(p.get("metric", "accuracy")),
                "n": p.get("n"),
                "diff": "—" if diff is None else f"{100 * diff:+.1f} pts",
                "interval": "—" if low is None or high is None else f"{100 * low:+.1f} to {100 * high:+.1f}",
                "p": "—" if _num(p.get("mcnemar_p")) is None else f"{p['mcnemar_p']:.3g}",
                "significant": significant,
            }
        )
    return rows


def _verdict_view(verdict: Mapping[str, Any]) -> dict[str, Any]:
    recommend = verdict.get("recommend_fine_tuning")
    recommendation = verdict.get("recommendation")
    if not isinstance(recommendation, str):
        recommendation = (
            {True: "fine-tune", False: "keep prompting"}.get(recommend)
            if isinstance(recommend, bool)
            else None
        )
    if not isinstance(recommend, bool) and recommendation is not None:
        # `tunewise decide` writes {"recommendation": "fine-tune" | "keep prompting" | "not yet"}.
        recommend = (
            True if recommendation == "fine-tune" else False if recommendation == "keep prompting" else None
        )
    rules = []
    for r in verdict.get("rules") or []:
        if not isinstance(r, Mapping):
            continue
        passed = r.get("passed")
        numbers = r.get("numbers") if isinstance(r.get("numbers"), Mapping) else {}
        rules.append(
            {
                "rule": str(r.get("rule", "?")),
                "status": "pass" if passed is True else "fail" if passed is False else "na",
                "detail": str(r.get("detail") or ""),
                "guide": str(r.get("guide") or ""),
                "numbers": ", ".join(
                    f"{k} = {_value_text(v)}" for k, v in numbers.items() if v not in (None, [], {})
                ),
            }
        )
    be = verdict.get("break_even")
    # `tunewise decide` records break_even as {"between", "queries_per_day", "formula", "summary"}.
    if isinstance(be, Mapping):
        q = _num(be.get("queries_per_day"))
        be = (f"{q:,.1f} queries/day: " if q is not None else "") + str(
            be.get("summary") or be.get("formula") or ""
        )
    return {
        "recommend": recommend if isinstance(recommend, bool) else None,
        "recommendation": recommendation,
        "headline": str(verdict.get("headline") or ""),
        "rules": rules,
        "failed": sum(r["status"] == "fail" for r in rules),
        "cheapest_platform": verdict.get("cheapest_platform"),
        # the cheapest option among the arms that meet the bars, or why none is named
        "cheapest": verdict.get("cheapest") or None,
        "break_even": be,
        "weakest_point": verdict.get("weakest_point"),
        "reasons": [str(x) for x in verdict.get("reasons") or []],
        # the guide's common mistakes this verdict would make if followed blindly (decide/rag.py)
        "mistakes": [str(x) for x in verdict.get("mistakes") or [] if x],
        # the platform and team rules that fired (docs/rules.md), each with its source sentence and date
        "platform_rules": [
            {
                "head": f"{f.get('detail')}: {f.get('advice')}",
                "source": str(f.get("source") or ""),
                "as_of": str(f.get("as_of") or ""),
            }
            for f in verdict.get("platform_rules") or []
            if isinstance(f, Mapping) and f.get("fires")
        ],
    }


def _data_view(data: Mapping[str, Any]) -> dict[str, Any]:
    stats = data.get("stats") if isinstance(data.get("stats"), Mapping) else {}
    labels = stats.get("labels") if isinstance(stats.get("labels"), Mapping) else {}
    total = sum(v for v in labels.values() if _num(v) is not None) or 1
    top = max((v for v in labels.values() if _num(v) is not None), default=1) or 1
    tokens = stats.get("tokens") if isinstance(stats.get("tokens"), Mapping) else None
    token_rows = []
    if tokens:
        for part in ("prompt", "completion", "total"):
            t = tokens.get(part)
            if isinstance(t, Mapping):
                token_rows.append((part, number(t.get("p50")), number(t.get("p95")), number(t.get("max"))))
    return {
        "ok": data.get("ok"),
        "errors": data.get("errors", 0),
        "warnings": data.get("warnings", 0),
        "examples": number(stats.get("examples")),
        "eval_examples": number(stats.get("eval_examples")),
        "labels": [
            {"label": str(k), "count": v, "share": pct(v / total), "width": round(100 * v / top, 1)}
            for k, v in labels.items()
            if _num(v) is not None
        ],
        "tokens": tokens,
        "token_rows": token_rows,
        "token_facts": [
            (what, pct(tokens.get(k)) if k == "trained_share" else _value_text(tokens.get(k)))
            for k, what in (
                ("trained_share", "trained-token share"),
                ("estimated_training_tokens", "training tokens per epoch (est.)"),
                (
                    "estimated_training_tokens_x_epochs",
                    f"training tokens x {tokens.get('epochs_assumed', '?')} epochs",
                ),
                ("sampled", "examples tokenized"),
            )
            if k in tokens
        ]
        if tokens
        else [],
        "files": [f for f in data.get("files") or [] if isinstance(f, Mapping)],
        "problems": [p for p in data.get("problems") or [] if isinstance(p, Mapping)],
        "notes": [str(n) for n in data.get("notes") or []],
    }


def _loss(x: Any) -> str:
    """A loss with four decimals, always (4.0 is a loss, not a count)."""
    v = _num(x)
    return "—" if v is None else f"{v:.4f}"


def train_loss(m: Mapping[str, Any]) -> float | None:
    """A step's training loss: `train_loss` in the report state, `loss` as the trainer's metrics.jsonl logs it.

    >>> train_loss({"train_loss": 2.0}), train_loss({"loss": 1.5}), train_loss({"eval_loss": 3.0})
    (2.0, 1.5, None)
    """
    value = _num(m.get("train_loss"))
    return value if value is not None else _num(m.get("loss"))


def _training_view(training: Mapping[str, Any], plot_note: list[str]) -> dict[str, Any]:
    from tunewise.report import plots

    metrics = [m for m in training.get("metrics") or [] if isinstance(m, Mapping)]
    curves = None
    try:
        curves = plots.training_curves(metrics) if metrics else None
    except TunewiseError as exc:
        plot_note.append(exc.message)
    train_losses = [train_loss(m) for m in metrics]
    train_losses = [x for x in train_losses if x is not None]
    first_train = train_losses[0] if train_losses else None
    last_train = train_losses[-1] if train_losses else None
    last_eval = next(
        (m.get("eval_loss") for m in reversed(metrics) if _num(m.get("eval_loss")) is not None), None
    )
    resolved = training.get("resolved") if isinstance(training.get("resolved"), Mapping) else {}
    sources = resolved.get("sources") if isinstance(resolved.get("sources"), Mapping) else {}
    kept = training.get("eval_after")
    kept_loss = _num(kept.get("eval_loss")) if isinstance(kept, Mapping) else None
    kept_step = training.get("kept_step")
    evals = []
    for label, key in (("before training", "eval_before"), ("after training", "eval_after")):
        block = training.get(key)
        if isinstance(block, Mapping):
            evals.append((label, [(str(k), _value_text(v)) for k, v in block.items()]))
    return {
        "run_id": training.get("run_id"),
        "method": training.get("method"),
        # The trainer records where each value came from ({"sources": {"epochs": "user", ...}}): shown beside it.
        "resolved": [
            (str(k), _value_text(v), str(sources.get(k, "")))
            for k, v in resolved.items()
            if not (k == "sources" and isinstance(v, Mapping))
        ],
        "curves": curves,
        "steps": len(metrics),
        "first_train_loss": _loss(first_train),
        "last_train_loss": _loss(last_train),
        "last_eval_loss": _loss(last_eval),
        # The output is the last step's weights unless an earlier evaluation beat them beyond the noise.
        "kept_eval_loss": _loss(kept_loss),
        "kept": _kept_text(kept_step, training.get("steps_run"), training.get("best_check")),
        "fit_examples": training.get("fit_examples"),
        "validation_examples": training.get("validation_examples"),
        "wall": seconds(training.get("wall_s")),
        "tokens_per_s": number(training.get("tokens_per_s")),
        "evals": evals,
    }


def _economics_view(
    economics: Mapping[str, Any], plot_note: list[str], eligible: set[str] | None = None
) -> dict[str, Any]:
    """The cost section; `eligible` names the arms that meet the quality bars (None: not evaluated): only their
    options can be marked cheapest, an option that does not do the job is no saving."""
    from tunewise.report import plots

    options = [o for o in economics.get("options") or [] if isinstance(o, Mapping)]
    # The pipeline records {"error", "hint"} when no option could be priced; the page says why.
    failed = (
        str(economics["error"]) + (f" ({economics['hint']})" if economics.get("hint") else "")
        if economics.get("error")
        else None
    )
    break_evens = [b for b in economics.get("break_even") or [] if isinstance(b, Mapping)]
    q = _num(economics.get("queries_per_day"))
    totals = [_num(o.get("total_per_month")) for o in options]
    if q is not None and any(t is None for t in totals):
        # `tunewise cost --json` options carry no total: compute it from the same line the plot draws.
        from tunewise.economics.cost import monthly_cost

        try:
            lines = plots.cost_options(options)
            totals = [
                t if t is not None else monthly_cost(o, q).total for t, o in zip(totals, lines, strict=True)
            ]
        except TunewiseError as exc:
            plot_note.append(f"monthly cost: {exc.message}")
    known = [
        t
        for o, t in zip(options, totals, strict=True)
        if t is not None and (eligible is None or _option_arm(o) in eligible)
    ]
    cheapest = min(known) if known else None
    sweep = None
    try:
        sweep = (
            plots.monthly_cost_sweep(options, q, break_evens if "break_even" in economics else None)
            if options
            else None
        )
    except TunewiseError as exc:
        plot_note.append(f"monthly cost plot: {exc.message}")
    if sweep is None and economics.get("sweep_png"):
        sweep = _png_data_uri(economics["sweep_png"], plot_note)
    return {
        "queries_per_day": number(q),
        "options": [
            {
                "name": str(o.get("name")),
                "per_query": usd(o.get("per_query")),
                "hosting": usd(o.get("hosting_per_month")),
                "training": usd(o.get("training_per_month", _training_month(o))),
                "total": usd(t),
                "cheapest": t is not None
                and t == cheapest
                and (eligible is None or _option_arm(o) in eligible),
            }
            for o, t in zip(options, totals, strict=True)
        ],
        "cheapest_note": "no option meets the quality bars, so none is marked cheapest"
        if eligible is not None and not eligible and options
        else None,
        "break_even": [
            {
                "a": str(b.get("a")),
                "b": str(b.get("b")),
                "volume": "never (the lines do not cross)"
                if _num(b.get("volume")) is None
                else f"{b['volume']:,.1f} queries/day",
                "formula": str(b.get("formula") or ""),
                "notes": [str(n) for n in b.get("notes") or []],
            }
            for b in break_evens
        ],
        "sweep": sweep,
        "error": failed,
        "notes": [str(n) for n in economics.get("notes") or []]
        + _all_in_notes(economics)
        + [f"skipped: {x}" for x in economics.get("skipped") or []],
    }


def _all_in_notes(economics: Mapping[str, Any]) -> list[str]:
    """The all-in cost per query of each option by component, the payback of the one-off costs and the
    catalog figures used, each with its source, as lines of the cost section.

    >>> _all_in_notes({"all_in": [{"option": "ft @ x", "inference": 0.02, "hosting": 0.01, "training": 0.0,
    ...                            "data_preparation": 0.066, "total": 0.096}]})[0]
    'all-in cost per query of ft @ x: $0.0960 = inference $0.0200 + hosting $0.0100 + training $0 + data preparation $0.0660'
    """
    lines = []
    for a in economics.get("all_in") or []:
        if isinstance(a, Mapping):
            lines.append(
                f"all-in cost per query of {a.get('option')}: {usd(a.get('total'))} = inference "
                f"{usd(a.get('inference'))} + hosting {usd(a.get('hosting'))} + training {usd(a.get('training'))}"
                f" + data preparation {usd(a.get('data_preparation'))}"
            )
    for b in economics.get("break_even") or []:
        p = b.get("payback") if isinstance(b, Mapping) else None
        if isinstance(p, Mapping):
            months = _num(p.get("months"))
            shown = f"{months:,.1f} months" if months is not None else "never (no monthly saving)"
            lines.append(f"payback of {p.get('invest')}'s one-off costs against {p.get('baseline')}: {shown}")
        if isinstance(b, Mapping) and _num(b.get("all_in_volume")) is not None:
            lines.append(
                f"break-even {b.get('a')} vs {b.get('b')} with data preparation amortised: "
                f"{b['all_in_volume']:,.1f} queries/day"
            )
    for p in economics.get("prices") or []:
        if isinstance(p, Mapping):
            lines.append(
                f"price used: {p.get('entry')} {p.get('field')} {usd(p.get('value'))}, {p.get('source')} ({p.get('date')})"
            )
    return lines


def _training_month(option: Mapping[str, Any]) -> float | None:
    """Training per month of an option recorded as `tunewise cost --json` writes it (one-time cost, cadence)."""
    cost, days = _num(option.get("training_cost")), _num(option.get("retrain_every_days"))
    return cost * 30.0 / days if cost is not None and days else None


def _png_data_uri(path: Any, plot_note: list[str]) -> str | None:
    """An existing PNG (the economics stage's sweep plot) inlined, so the page stays self-contained."""
    import base64

    p = Path(str(path))
    if not p.is_file():
        plot_note.append(f"monthly cost plot: {p} not found")
        return None
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")


# --- every held-out example --------------------------------------------------------------------------------

_WORDS = re.compile(r"(\s*)(\S+)")
_DIFF_LIMIT = (
    4000  # words per side: difflib is quadratic in the worst case, and past this nobody reads a diff
)


def word_diff(output: str, reference: str) -> Markup:
    """The output against the reference, word by word: words only the reference has in <del>, words only the
    output has in <ins>, the rest as the output wrote it (its spacing kept); every piece escaped.

    >>> str(word_diff("the dog sat", "the cat sat"))
    'the <del>cat</del><ins>dog</ins> sat'
    >>> str(word_diff("sat  <b>", "the sat"))
    '<del>the</del> sat  <ins>&lt;b&gt;</ins>'
    """
    ref = [w for _, w in _WORDS.findall(reference)]
    out = _WORDS.findall(output)
    if len(ref) > _DIFF_LIMIT or len(out) > _DIFF_LIMIT:
        return escape(output)
    words = [w for _, w in out]
    parts: list[Markup] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ref, words, autojunk=False).get_opcodes():
        if tag == "equal":
            parts.extend(escape(space + word) for space, word in out[j1:j2])
            continue
        # The spacing before a changed run is the output's; a deletion alone takes one space.
        parts.append(escape(out[j1][0] if j2 > j1 else (" " if parts else "")))
        if i2 > i1:
            parts.append(Markup("<del>%s</del>") % " ".join(ref[i1:i2]))
            if j2 == j1 and not parts[:-2] and j1 < len(out) and not out[j1][0]:
                parts.append(Markup(" "))  # deleted at the very start, before a word with no space of its own
        if j2 > j1:
            inserted = out[j1][1] + "".join(space + word for space, word in out[j1 + 1 : j2])
            parts.append(Markup("<ins>%s</ins>") % inserted)
    parts.append(escape(output[len(output.rstrip()) :] if output.strip() else output))
    return Markup("").join(parts)


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def json_diff(output: str, reference: str) -> Markup | None:
    """A JSON answer against the reference, field by field (top-level fields, the reference's order, then the
    fields the answer added): an equal field plain, a changed one with the reference's value in <del> and the
    answer's in <ins> (two strings: word by word), a missing one in <del>, an added one in <ins>. None when the
    reference is not JSON; the answer as written when it holds no JSON; a word diff when either side is not an
    object.

    >>> str(json_diff('{"a": 1, "b": "x y", "c": 3}', '{"a": 1.0, "b": "x z", "d": 4}'))  # doctest: +NORMALIZE_WHITESPACE
    '<div class="f same"><span class="k">a</span>: 1</div><div class="f diff"><span class="k">b</span>: "x <del>z</del><ins>y</ins>"</div><div class="f miss"><span class="k">d</span>: <del>4</del> <span class="note">missing</span></div><div class="f add"><span class="k">c</span>: <ins>3</ins></div>'
    """
    from tunewise.evaluate.scorers import canonical_json, parse_json_lenient, parse_json_strict

    ref_ok, ref = parse_json_strict(reference)
    if not ref_ok:
        return None
    found, got = parse_json_lenient(output)
    if not found:
        # Nothing to set against the reference field by field: the answer as written, under a note.
        return Markup('<div class="f nojson"><span class="note">no JSON found</span></div>%s') % output
    if not isinstance(ref, dict) or not isinstance(got, dict):
        return word_diff(canonical_json(got), canonical_json(ref))
    line = Markup('<div class="f %s"><span class="k">%s</span>: %s</div>')
    parts = []
    for key, want in ref.items():
        if key not in got:
            body = Markup('<del>%s</del> <span class="note">missing</span>') % _json_text(want)
            parts.append(line % ("miss", key, body))
        elif canonical_json(got[key]) == canonical_json(want):
            parts.append(line % ("same", key, _json_text(got[key])))
        elif isinstance(got[key], str) and isinstance(want, str):
            parts.append(line % ("diff", key, Markup('"%s"') % word_diff(got[key], want)))
        else:
            body = Markup("<del>%s</del> <ins>%s</ins>") % (_json_text(want), _json_text(got[key]))
            parts.append(line % ("diff", key, body))
    for key in got:
        if key not in ref:
            parts.append(line % ("add", key, Markup("<ins>%s</ins>") % _json_text(got[key])))
    return Markup("").join(parts)


def _diff(contract: str | None, output: str, reference: str) -> Markup | None:
    """The diff view of one answer: per field for json, per word for text; None for labels and patterns."""
    if contract == "json":
        return json_diff(output, reference)
    if contract == "text":
        return word_diff(output, reference)
    return None


def _mapping(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _example_arms(items: Sequence[Any], arm_order: Sequence[str]) -> list[str]:
    """The arms in the evaluation's order, then any other arm an example names."""
    seen = dict.fromkeys(arm_order)
    for e in items:
        seen.update(dict.fromkeys(str(a) for a in _mapping(_mapping(e).get("outputs"))))
    return list(seen)


def field_accuracy(items: Sequence[Any], arms: Sequence[str]) -> list[dict[str, Any]]:
    """Per top-level field of a JSON contract, each arm's share of held-out examples where its value of the field
    equals the reference's (a field absent from both counts as equal), from the examples' `wrong_fields`.

    >>> rows = field_accuracy([{"fields": ["a", "b"], "outputs": {"x": ""}, "wrong_fields": {"x": ["b"]}},
    ...                        {"fields": ["a", "b"], "outputs": {"x": ""}, "wrong_fields": {"x": ["a", "b"]}}],
    ...                       ["x"])
    >>> [(r["field"], r["arms"][0]["right"], r["arms"][0]["n"], r["arms"][0]["text"]) for r in rows]
    [('a', 1, 2, '50.0%'), ('b', 0, 2, '0.0%')]
    """
    scored = [e for e in items if isinstance(e, Mapping) and isinstance(e.get("wrong_fields"), Mapping)]
    fields: dict[str, None] = {}
    for e in scored:
        fields.update(dict.fromkeys(str(f) for f in e.get("fields") or []))
        for wrong in e["wrong_fields"].values():
            fields.update(dict.fromkeys(str(f) for f in wrong or []))
    rows = []
    for f in fields:
        cells = []
        for arm in arms:
            answered = [e for e in scored if arm in _mapping(e.get("outputs")) and arm in e["wrong_fields"]]
            right = sum(1 for e in answered if f not in (e["wrong_fields"][arm] or []))
            n = len(answered)
            cells.append({"arm": arm, "right": right, "n": n, "text": pct(right / n) if n else "—"})
        rows.append({"field": f, "arms": cells})
    return rows


def _examples_view(
    items: Sequence[Any],
    contract: str | None,
    arm_order: Sequence[str],
    total: Any,
    records: Any,
    legacy: bool,
) -> dict[str, Any]:
    """The examples table: one row per held-out example, each arm's answer beside the reference with its mark,
    its diff and its wrong fields; the per-field accuracy; what the page leaves out and where to find it."""
    items = [e for e in items if isinstance(e, Mapping)]
    arms = _example_arms(items, arm_order)
    shown = items[: max(1, MAX_EXAMPLE_CELLS // max(1, len(arms)))]
    rows = []
    for i, e in enumerate(shown):
        outputs, correct = _mapping(e.get("outputs")), _mapping(e.get("correct"))
        fmt, sim, wrong = (
            _mapping(e.get("format_ok")),
            _mapping(e.get("similarity")),
            _mapping(e.get("wrong_fields")),
        )
        reference = str(e.get("reference", ""))
        cells = []
        for arm in arms:
            if arm not in outputs:
                cells.append({"arm": arm, "present": False, "correct": None, "sort": ""})
                continue
            text = "" if outputs[arm] is None else str(outputs[arm])
            ok = correct.get(arm) if isinstance(correct.get(arm), bool) else None
            similarity = _num(sim.get(arm))
            cells.append(
                {
                    "arm": arm,
                    "present": True,
                    "text": text,
                    "correct": ok,
                    "format_ok": fmt.get(arm) if isinstance(fmt.get(arm), bool) else None,
                    "similarity": None if similarity is None else f"{similarity:.2f}",
                    "diff": _diff(contract, text, reference),
                    "wrong_fields": [str(f) for f in wrong.get(arm) or []],
                    # Sorted by mark (wrong first), then by closeness to the reference.
                    "sort": f"{int(bool(ok)) + 0.5 * (similarity or 0):.4f}",
                }
            )
        marks = {c["correct"] for c in cells if c["present"]}
        rows.append(
            {
                "i": i,
                "id": str(e.get("id", "")),
                "input": str(e.get("input", "")),
                "reference": reference,
                "cells": cells,
                "disagree": len(marks) > 1,
            }
        )
    fields = (
        field_accuracy(items, arms) if contract == "json" or any("wrong_fields" in e for e in items) else []
    )
    n_total = total if isinstance(total, int) and total >= len(items) else len(items)
    return {
        "arms": arms,
        "rows": rows,
        "fields": fields,
        "field_names": [r["field"] for r in fields],
        "contract": contract,
        "shown": len(rows),
        "kept": len(items),
        "total": n_total,
        "records": str(records) if records and n_total > len(items) else None,
        "legacy": legacy,
    }


def _stage_times_view(times: Mapping[str, Any]) -> dict[str, Any]:
    rows = [(str(k), _num(v)) for k, v in times.items()]
    total = sum(v for _, v in rows if v is not None)
    return {
        "rows": [
            {
                "stage": k,
                "time": seconds(v),
                # Whole percent reads best, but a short stage should not show as "0%".
                "share": pct(v / total, 0 if v / total >= 0.1 else 1) if v is not None and total else "—",
                "width": round(100 * v / total, 1) if v is not None and total else 0,
            }
            for k, v in rows
        ],
        "total": seconds(total),
    }


def _contract_view(contract: Any) -> dict[str, Any]:
    if not isinstance(contract, Mapping):
        return {"type": str(contract) if contract else None}
    schema = contract.get("schema")
    return {
        "type": contract.get("type"),
        "labels": [str(x) for x in contract.get("labels") or []],
        "schema": json.dumps(schema, indent=2, ensure_ascii=False) if schema else None,
        "pattern": contract.get("pattern"),
    }


def _rate_text(iv: Any) -> str:
    """A rate with its interval: '62.0% [55.1%, 68.4%]', or '—'.

    >>> _rate_text({"value": 0.62, "low": 0.551, "high": 0.684}), _rate_text(None)
    ('62.0% [55.1%, 68.4%]', '—')
    """
    v, lo, hi = _interval(iv)
    if v is None:
        return "—"
    return pct(v) if lo is None or hi is None else f"{pct(v)} [{pct(lo)}, {pct(hi)}]"


def _preference_view(verdict: Mapping[str, Any] | None, evaluation: Mapping[str, Any] | None) -> dict | None:
    """The free-text section: the blind preference the verdict used (reviewers, judge or reference metrics), the
    judge's agreement with people and the items where they disagree, and each arm's reference metrics."""
    pref = (verdict or {}).get("preference")
    metrics = []
    for arm in (evaluation or {}).get("arms") or []:
        if not isinstance(arm, Mapping):
            continue
        row = {
            "arm": arm.get("name"),
            "exact_match": _rate_text(arm.get("exact_match") or arm.get("accuracy")),
            "rouge_l": _rate_text(arm.get("rouge_l") or arm.get("text_similarity")),
            "chrf": _rate_text(arm.get("chrf") or arm.get("text_chrf")),
        }
        if row["rouge_l"] != "—" or row["chrf"] != "—":
            metrics.append(row)
    if not isinstance(pref, Mapping) and not metrics:
        return None
    out: dict[str, Any] = {"metrics": metrics, "preference": None}
    if isinstance(pref, Mapping):
        judge = pref.get("judge") if isinstance(pref.get("judge"), Mapping) else None
        agree = (judge or {}).get("agreement_with_people")
        who, tuned, prompted = str(pref.get("source") or ""), pref.get("tuned"), pref.get("prompted")
        value = _interval(pref.get("win_rate"))[0]
        if pref.get("could_not_tell") or value is None:
            reading = f"{who} could not tell {tuned} and {prompted} apart: prompt engineering is sufficient"
        else:
            reading = f"{who} preferred {tuned if value > 0.5 else prompted}"
        out["preference"] = {
            "reading": reading[:1].upper() + reading[1:],
            "source": pref.get("source"),
            "tuned": pref.get("tuned"),
            "prompted": pref.get("prompted"),
            "win_rate": _rate_text(pref.get("win_rate")),
            "decisive": pref.get("decisive"),
            "ties": pref.get("ties"),
            "both_bad": pref.get("both_bad"),
            "could_not_tell": bool(pref.get("could_not_tell")),
            "measured_by": pref.get("measured_by"),
            "min_reviewed_items": pref.get("min_reviewed_items"),
            "judge_win_rate": _rate_text((judge or {}).get("preference", {}).get("win_rate"))
            if judge
            else None,
            "judge_names": ", ".join((judge or {}).get("judge") or []),
            "agreement": None
            if not agree
            else {
                "kappa": "—" if _num(agree.get("kappa")) is None else f"{agree['kappa']:.2f}",
                "reading": agree.get("reading"),
                "n_items": agree.get("items"),
                "low": bool(agree.get("low")),
            },
            "disagreements": list((judge or {}).get("disagreements") or []),
        }
    return out


def view(state: Mapping[str, Any]) -> dict[str, Any]:
    """The template's context: every section normalized, formatted and judged; absent sections are None."""
    if not isinstance(state, Mapping):
        raise TunewiseError(
            f"report state must be a JSON object (got {type(state).__name__})",
            hint="pass the state file `tunewise run` writes",
        )
    plot_notes: list[str] = []
    task = _section(state, "task", Mapping)
    data = _section(state, "data", Mapping)
    training = _section(state, "training", Mapping)
    evaluation = _section(state, "evaluation", Mapping)
    economics = _section(state, "economics", Mapping)
    verdict = _section(state, "verdict", Mapping)
    examples = _section(state, "examples", list)
    legacy = _section(state, "disagreements", list)
    stage_times = _section(state, "stage_times", Mapping)
    bar = bars(verdict)

    ctx: dict[str, Any] = {
        "project": state.get("project") or "(unnamed project)",
        "generated_at": state.get("generated_at") or "",
        "version": state.get("tunewise_version") or "",
        "missing": MISSING,
        "bars": {
            "accuracy": pct(bar["accuracy"], 0),
            "consistency": pct(bar["consistency"], 0),
            "format": pct(bar["format"], 0),
        },
        "verdict": _verdict_view(verdict) if verdict else None,
        "task": dict(task, contract_view=_contract_view(task.get("contract"))) if task else None,
        "data": _data_view(data) if data else None,
        "training": _training_view(training, plot_notes) if training else None,
        "economics": _economics_view(economics, plot_notes, _meeting_bars(evaluation)) if economics else None,
        # Older states kept only the examples where the arms disagreed, under `disagreements`.
        "examples": _examples_view(
            examples or legacy or [],
            (evaluation or {}).get("contract") or ((task or {}).get("contract") or {}).get("type"),
            [str(a.get("name")) for a in (evaluation or {}).get("arms") or [] if isinstance(a, Mapping)],
            state.get("examples_total"),
            state.get("examples_records"),
            legacy=not examples and bool(legacy),
        )
        if examples or legacy
        else None,
        "stage_times": _stage_times_view(stage_times) if stage_times else None,
        "free_text": _preference_view(verdict, evaluation)
        if (evaluation or {}).get("contract") in ("text", "json") or (verdict or {}).get("preference")
        else None,
        "learning_curve": _learning_curve_view(state.get("learning_curve"), bar["accuracy"], plot_notes),
        "evaluation": None,
        "paired": [],
        "retrieval": None,
        "quality_plot": None,
        "costs_from_economics": False,
    }
    if evaluation and evaluation.get("arms"):
        from tunewise.report import plots

        priced = priced_arms(evaluation["arms"], (economics or {}).get("options") or [])
        evaluation = dict(evaluation, arms=priced)
        ctx["costs_from_economics"] = any(a.get("cost_source") for a in priced if isinstance(a, Mapping))
        reference_name = verdict.get("best_prompted_arm") if verdict else None
        arms = _arms_view(evaluation, reference_name, bar)
        kinds = {str(a.get("name")): str(a.get("kind")) for a in evaluation["arms"] if isinstance(a, Mapping)}
        ctx["evaluation"] = dict(
            arms, n_examples=evaluation.get("n_examples"), contract=evaluation.get("contract")
        )
        ctx["paired"] = _paired_view(evaluation, kinds)
        ctx["retrieval"] = _retrieval_view(evaluation["arms"])
        try:
            ctx["quality_plot"] = plots.quality_vs_cost(evaluation["arms"], bar["accuracy"])
        except TunewiseError as exc:
            plot_notes.append(f"quality against cost plot: {exc.message}")
    ctx["retraining"] = _retraining(state)
    ctx["plot_notes"] = plot_notes
    ctx["headline"] = _headline(ctx)
    ctx["absent"] = [
        MISSING[s]
        for s in SECTIONS
        if state.get(s) in (None, [], {}) and not (s == "examples" and ctx["examples"])
    ]
    return ctx


# --- retrieval --------------------------------------------------------------------------------------------


def _retrieval_view(arms: Sequence[Any]) -> list[dict[str, Any]] | None:
    """One row per arm that retrieved passages: which index and retriever, how well it found the gold document,
    how often the answer stood in what it found, and what the retrieval cost in time."""
    rows = []
    for arm in arms:
        if not isinstance(arm, Mapping) or not isinstance(arm.get("recall_at_k"), Mapping):
            continue
        info = arm.get("retrieval") if isinstance(arm.get("retrieval"), Mapping) else {}
        latency = (
            arm.get("retrieval_latency_ms") if isinstance(arm.get("retrieval_latency_ms"), Mapping) else {}
        )
        rows.append(
            {
                "name": str(arm.get("name")),
                "retriever": str(info.get("retriever") or "?"),
                "index": str(info.get("index") or "?")[:12],
                "k": arm.get("k") or info.get("top_k"),
                "recall": _rate_cell(arm.get("recall_at_k")),
                "mrr": _rate_cell(arm.get("mrr")),
                "grounded": _rate_cell(arm.get("grounded_rate")),
                "latency": f"{number(latency.get('p50'), 0)} / {number(latency.get('p95'), 0)}",
            }
        )
    return rows or None


def _retraining(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """How often the served model is retrained and whether it is due (`lifecycle.cadence`): from the state's
    `retraining` when it carries one, else from the project's registry; None when there is neither."""
    if isinstance(state.get("retraining"), Mapping):
        return dict(state["retraining"])
    path = state.get("project_path")
    if not path or not Path(str(path)).is_dir():
        return None
    from tunewise.lifecycle.cadence import project_cadence

    try:
        return project_cadence(str(path))
    except TunewiseError:
        return None


# --- the learning curve -------------------------------------------------------------------------------------


def _learning_curve_view(curve: Any, accuracy_bar: float, plot_note: list[str]) -> dict[str, Any] | None:
    """The learning curve section: its plot, one row per point, and its reading in plain words (the pipeline's
    `evaluate.curve.read_curve`); None when no curve was asked for."""
    if not isinstance(curve, Mapping) or not curve.get("points"):
        return None
    from tunewise.report import plots

    rows = []
    for p in curve["points"]:
        if not isinstance(p, Mapping):
            continue
        value, low, high = _interval(p.get("accuracy"))
        gain = p.get("gain") if isinstance(p.get("gain"), Mapping) else None
        g, g_low, g_high = _interval(gain) if gain else (None, None, None)
        gain_text = "—"
        if g is not None:
            gain_text = f"{100 * g:+.1f} points"
            if g_low is not None and g_high is not None:
                gain_text += f" [{100 * g_low:+.1f}, {100 * g_high:+.1f}]"
        rows.append(
            {
                "fraction": f"{f:g}" if (f := _num(p.get("fraction"))) is not None else "—",
                "examples": number(p.get("examples"), 0),
                "accuracy": pct(value),
                "interval": f"[{pct(low)}, {pct(high)}]" if low is not None and high is not None else "—",
                "gain": gain_text,
                "run": p.get("train_run") or "—",
            }
        )
    plot = None
    try:
        plot = plots.learning_curve(curve, accuracy_bar)
    except TunewiseError as exc:
        plot_note.append(f"learning curve plot: {exc.message}")
    return {
        "arm": curve.get("arm") or "fine-tuned",
        "held_out": curve.get("held_out"),
        "stratified": any(isinstance(p, Mapping) and p.get("labels") for p in curve["points"]),
        "rows": rows,
        "plot": plot,
        "reading": [str(x) for x in curve.get("reading") or []],
        "notes": [str(x) for x in curve.get("notes") or []],
    }


def _option_arm(option: Mapping[str, Any]) -> str:
    """The arm a cost option serves: its `arm`, else its name before " @ " ("fine-tuned @ together")."""
    return str(option.get("arm") or str(option.get("name") or "").partition(" @ ")[0])


def _meeting_bars(evaluation: Mapping[str, Any] | None) -> set[str] | None:
    """The evaluated arms that meet the quality bars (`tunewise.decide.verdict.meets_bars`); None when nothing
    was evaluated."""
    from tunewise.decide.verdict import meets_bars

    arms = [a for a in (evaluation or {}).get("arms") or [] if isinstance(a, Mapping)]
    if not arms:
        return None
    passing = [a for a in arms if meets_bars(a)]
    names = {str(a.get("name")) for a in passing}
    # Options priced from given per-query costs are named for the kind of arm, not the arm.
    names |= {"fine-tuned" if a.get("kind") == "fine-tuned" else "prompted" for a in passing}
    return names


def _headline(ctx: Mapping[str, Any]) -> str:
    """The verdict's headline, or what stands between the project and a verdict."""
    if ctx["verdict"] and ctx["verdict"]["headline"]:
        return ctx["verdict"]["headline"]
    if ctx["verdict"]:
        rec = ctx["verdict"]["recommendation"]
        return f"{rec[0].upper()}{rec[1:]}." if rec else "Verdict recorded without a headline."
    for section, what in (
        ("data", "the data check"),
        ("evaluation", "evaluation"),
        ("economics", "economics"),
    ):
        if not ctx[section]:
            return f"No verdict yet: {what} has not run."
    return "No verdict yet: the decision stage has not run."


# --- rendering and writing ----------------------------------------------------------------------------------


def render_html(state: Mapping[str, Any]) -> str:
    """The report page as a string (autoescaped: every value from the state is text, never markup)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent)),
        autoescape=True,
        # A typo in the template fails the tests instead of silently rendering nothing.
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=pct, usd=usd, seconds=seconds, number=number)
    return env.get_template(TEMPLATE).render(**view(state))


def _write_atomic(path: Path, text: str) -> None:
    """Write beside the target, then rename over it: a reader never sees half a report, a crash leaves the old one."""
    from tunewise.fileio import atomic_write_text

    atomic_write_text(path, text)


def build_report(state: Mapping[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write `report.html` and `report.json` into `out_dir` (created if needed); return their paths.

    report.json is the state itself, so a script reads exactly the numbers the page shows.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TunewiseError(
            f"cannot create the report folder {out}: {exc.strerror}", hint="pick another --out"
        ) from None
    html = render_html(state)  # render first: a bad state leaves any previous report untouched
    payload = json.dumps(state, indent=2, ensure_ascii=False, default=str) + "\n"
    html_path, json_path = out / "report.html", out / "report.json"
    _write_atomic(json_path, payload)
    _write_atomic(html_path, html)
    log.info("report written to %s", html_path)
    return html_path, json_path


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a state file written by the pipeline; errors name the file and what to do."""
    p = Path(path)
    if not p.is_file():
        raise TunewiseError(f"no state file at {p}", hint="run `tunewise run` first, or check the path")
    try:
        state = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TunewiseError(f"{p}: line {exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(state, dict):
        raise TunewiseError(f"{p}: the state must be a JSON object (got {type(state).__name__})")
    return state


__all__ = ["bars", "build_report", "load_state", "priced_arms", "reference_arm", "render_html", "view"]
