"""Assemble the report's input (`tunewise.outputs.ReportState`) from the stages' outputs."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunewise import __version__
from tunewise.outputs import ReportState, TrainOutput, Verdict
from tunewise.spec import JsonContract, LabelContract, RegexContract


def _read(path: str | Path | None) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8")) if path and Path(path).is_file() else None


def _task(pipeline) -> dict[str, Any]:
    s = pipeline.spec
    contract: dict[str, Any] = {"type": s.contract.type}
    if isinstance(s.contract, LabelContract):
        contract["labels"] = s.contract.labels
    elif isinstance(s.contract, JsonContract):
        contract["schema"] = s.contract.json_schema
        contract["text_fields"] = list(getattr(s.contract, "text_fields", ()) or ())
    elif isinstance(s.contract, RegexContract):
        contract["pattern"] = s.contract.pattern
    return {
        "name": s.task.name,
        "target": s.task.target,
        "contract": contract,
        "system_prompt": s.system_prompt,
        "base_model": s.model.base,
        "method": s.method,
    }


def _training(pipeline) -> dict[str, Any] | None:
    train: TrainOutput | None = pipeline.outputs.get("train")
    if train is None or train.run_dir is None:
        return None
    run_dir = train.run_dir
    metrics = []
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    config = _read(run_dir / "config.json") or {}
    result = train.result
    return {
        "run_id": train.run_id,
        "method": pipeline.spec.method,
        "resolved": config.get("resolved", {}),
        "metrics": metrics,
        "wall_s": result.wall_s if result else None,
        "tokens_per_s": result.tokens_per_s if result else None,
        "eval_before": result.eval_before if result else None,
        "eval_after": result.eval_after if result else None,
        "kept_step": result.extra.get("kept_step") if result else None,
        "best_check": result.extra.get("best_check") if result else None,
        "steps_run": result.steps if result else None,
        "fit_examples": train.fit.examples if train.fit else None,
        "validation_examples": train.validation.examples if train.validation else None,
    }


def _economics(pipeline) -> dict[str, Any] | None:
    out = pipeline.outputs.get("economics")
    if out is None:
        return None
    if out.error:
        return {"error": out.error, "hint": out.hint}
    costs = out.costs()
    if costs is None:
        return None
    monthly = {m.option: m for m in costs.monthly}
    options = [
        {
            "name": o.name,
            "per_query": o.per_query,
            "hosting_per_month": monthly[o.name].hosting,
            "training_per_month": monthly[o.name].training,
            "total_per_month": monthly[o.name].total,
        }
        for o in costs.options
    ]
    breaks = [
        {"a": b.a, "b": b.b, "volume": b.volume, "formula": b.formula, "notes": b.notes}
        | {k: getattr(b, k, None) for k in ("all_in_volume", "payback")}
        for b in costs.break_even
    ]
    return {
        "queries_per_day": costs.queries_per_day,
        "options": options,
        "break_even": breaks,
        "sweep_png": str(out.sweep_png_path) if out.sweep_png_path else None,
        "notes": costs.notes,
        "skipped": costs.skipped,
        # The all-in cost per query by component and the catalog figures used, with their sources.
        "all_in": getattr(costs, "all_in", None) or [],
        "prices": getattr(costs, "prices", None) or [],
    }


def _learning_curve(pipeline) -> dict[str, Any] | None:
    """The curve, its reading in plain words, and the data preparation cost it was read with."""
    from tunewise.evaluate.curve import read_curve

    out = pipeline.outputs.get("curve")
    if out is None or out.curve is None:
        return None
    cost = pipeline._economics().data_preparation_cost
    reading = read_curve(out.curve, cost)
    return {
        **out.curve.model_dump(mode="json"),
        "data_preparation_cost": cost,
        "trend": reading.trend,
        "slope_per_100": reading.slope_per_100,
        "cost_per_100": reading.cost_per_100,
        "reading": list(reading.sentences),
        "png": str(out.plot_png_path) if out.plot_png_path else None,
    }


def _verdict(pipeline) -> Verdict | None:
    # The report reads the verdict as `decide` made it: rules with their numbers, its bars, its best prompted arm.
    out = pipeline.outputs.get("verdict")
    return out.verdict() if out is not None else None


def _json_fields(value: Any, text_fields: tuple[str, ...]) -> dict[str, str] | None:
    """Top-level fields of a JSON object -> canonical JSON of their values, the free-text fields left out (they
    are compared by ROUGE-L, not exactly); None for anything that is not an object."""
    from tunewise.evaluate.scorers import canonical_json, split_text_fields

    if not isinstance(value, dict):
        return None
    structured = split_text_fields(value, text_fields)[0]
    return {str(k): canonical_json(v) for k, v in structured.items()}


def wrong_fields(answer: Any, found: bool, reference: Any, text_fields: tuple[str, ...] = ()) -> list[str]:
    """The top-level fields where an answer differs from the reference: a value that differs, a field the answer
    lacks or one it added. No JSON found: every field of the reference.

    >>> wrong_fields({"a": 1.0, "b": "x", "c": 3}, True, {"a": 1, "b": "y", "d": None})
    ['b', 'd', 'c']
    >>> wrong_fields(None, False, {"a": 1, "reply": "hi"}, ("reply",))
    ['a']
    """
    ref = _json_fields(reference, text_fields)
    if ref is None:
        return []
    got = _json_fields(answer, text_fields) if found else {}
    if got is None:  # an array or a scalar where the reference is an object: every field is wrong
        got = {}
    missing = object()
    wrong = [k for k, v in ref.items() if got.get(k, missing) != v]
    return wrong + [k for k in got if k not in ref]


def examples_from_scored(scored: list[dict[str, Any]], contract: Any) -> list[dict[str, Any]]:
    """One entry per held-out example, in the records' order, every arm side by side:

        {"id", "input", "reference", "outputs": {arm: text}, "correct": {arm: bool},
         "format_ok": {arm: bool | None}, "similarity": {arm: ROUGE-L or None},
         "fields": [the reference's top-level fields], "wrong_fields": {arm: [field, ...]}}   # the last two: json

    `scored` is `tunewise.evaluate.summary.score_records`'s output; the report lays these out.
    """
    from tunewise.evaluate.scorers import as_contract, parse_json_strict

    c = as_contract(contract)
    by_id: dict[str, dict[str, Any]] = {}
    for r in scored:
        entry = by_id.get(str(r["id"]))
        if entry is None:
            entry = by_id[str(r["id"])] = {
                "id": str(r["id"]),
                "input": r["input"],
                "reference": r["reference"],
                "outputs": {},
                "correct": {},
                "format_ok": {},
                "similarity": {},
            }
            if c.type == "json":
                ref = parse_json_strict(r["reference"])[1]
                entry["fields"] = list(_json_fields(ref, c.text_fields) or {})
                entry["wrong_fields"] = {}
                entry["_ref"] = ref
        arm = str(r["arm"])
        entry["outputs"][arm] = r["output"]
        entry["correct"][arm] = bool(r["correct"])
        entry["format_ok"][arm] = r.get("format_ok")
        sim = r.get("rouge_l") if r.get("rouge_l") is not None else r.get("text_similarity")
        entry["similarity"][arm] = None if sim is None else round(float(sim), 4)
        if c.type == "json":
            answer = r.get("answer_lenient")
            entry["wrong_fields"][arm] = wrong_fields(
                answer, answer is not None, entry["_ref"], c.text_fields
            )
    for entry in by_id.values():
        entry.pop("_ref", None)
    return list(by_id.values())


def _examples(pipeline) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """(the examples report.json keeps, how many the evaluation holds, the records file): all of them up to
    `tunewise.report.build.MAX_EXAMPLE_CELLS` examples x arms, else the first ones."""
    out = pipeline.outputs.get("evaluate")
    path = out.records_path if out is not None else None
    if path is None or not path.is_file():
        return [], None, None
    from tunewise.evaluate.summary import score_records
    from tunewise.report.build import MAX_EXAMPLE_CELLS

    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    contract = pipeline.spec.contract.model_dump(by_alias=True)
    examples = examples_from_scored(score_records(records, contract), contract)
    arms = max((len(e["outputs"]) for e in examples), default=1)
    return examples[: max(1, MAX_EXAMPLE_CELLS // arms)], len(examples), str(path)


def assemble_state(pipeline) -> ReportState:
    data = pipeline.outputs.get("data")
    evaluate = pipeline.outputs.get("evaluate")
    examples, examples_total, examples_records = _examples(pipeline)
    return ReportState(
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tunewise_version=__version__,
        project=pipeline.spec.task.name,  # the page's title
        project_path=str(pipeline.project.root),
        task=_task(pipeline),
        data=_read(data.report_path) if data is not None else None,
        training=_training(pipeline),
        evaluation=evaluate.summary() if evaluate is not None else None,
        economics=_economics(pipeline),
        learning_curve=_learning_curve(pipeline),
        verdict=_verdict(pipeline),
        examples=examples,
        examples_total=examples_total,
        examples_records=examples_records,
        stage_times={k: round(v, 2) for k, v in pipeline.seconds.items()},
    )
