"""Assemble the report's input (one JSON-serializable dict) from what the stages recorded."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunewise import __version__
from tunewise.spec import JsonContract, LabelContract, RegexContract


def _read(path: str | None) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8")) if path and Path(path).is_file() else None


def _task(pipeline) -> dict[str, Any]:
    s = pipeline.spec
    contract: dict[str, Any] = {"type": s.contract.type}
    if isinstance(s.contract, LabelContract):
        contract["labels"] = s.contract.labels
    elif isinstance(s.contract, JsonContract):
        contract["schema"] = s.contract.json_schema
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
    train = pipeline.outputs.get("train") or {}
    if not train.get("run_dir"):
        return None
    run_dir = Path(train["run_dir"])
    metrics = []
    metrics_path = run_dir / "metrics.jsonl"
    if metrics_path.is_file():
        metrics = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    config = _read(str(run_dir / "config.json")) or {}
    result = train.get("result") or {}
    return {
        "run_id": train["run_id"],
        "method": pipeline.spec.method,
        "resolved": config.get("resolved", {}),
        "metrics": metrics,
        "wall_s": result.get("wall_s"),
        "tokens_per_s": result.get("tokens_per_s"),
        "eval_before": result.get("eval_before"),
        "eval_after": result.get("eval_after"),
        "kept_step": (result.get("extra") or {}).get("kept_step"),
        "best_check": (result.get("extra") or {}).get("best_check"),
        "steps_run": result.get("steps"),
        "fit_examples": (train.get("fit") or {}).get("examples"),
        "validation_examples": (train.get("validation") or {}).get("examples"),
    }


def _economics(pipeline) -> dict[str, Any] | None:
    out = pipeline.outputs.get("economics") or {}
    if out.get("error"):
        return {"error": out["error"], "hint": out.get("hint")}
    payload = _read(out.get("economics_path"))
    if payload is None:
        return None
    monthly = {m["option"]: m for m in payload["monthly"]}
    options = [
        {
            "name": o["name"],
            "per_query": o["per_query"],
            "hosting_per_month": monthly[o["name"]]["hosting"],
            "training_per_month": monthly[o["name"]]["training"],
            "total_per_month": monthly[o["name"]]["total"],
        }
        for o in payload["options"]
    ]
    breaks = [
        {
            "a": b["a"],
            "b": b["b"],
            "volume": b["volume"],
            "formula": b["formula"],
            "notes": b.get("notes", []),
        }
        for b in payload["break_even"]
    ]
    return {
        "queries_per_day": payload["queries_per_day"],
        "options": options,
        "break_even": breaks,
        "sweep_png": out.get("sweep_png_path"),
        "notes": payload.get("notes", []),
        "skipped": payload.get("skipped", []),
    }


def _verdict(pipeline) -> dict[str, Any] | None:
    # The report reads the verdict as `decide` writes it: rules with their numbers and the guide's words.
    verdict = _read((pipeline.outputs.get("verdict") or {}).get("verdict_path"))
    if verdict is not None:
        lead = "Fine-tune" if verdict["recommendation"] == "fine-tune" else "Keep prompting"
        reasons = verdict.get("reasons") or []
        verdict["headline"] = f"{lead}: {reasons[0]}" if reasons else f"{lead}."
    return verdict


def _disagreements(pipeline, limit: int = 12) -> list[dict[str, Any]]:
    path = (pipeline.outputs.get("evaluate") or {}).get("records_path")
    if not path or not Path(path).is_file():
        return []
    from tunewise.evaluate.summary import score_records

    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    scored = score_records(records, pipeline.spec.contract.model_dump(by_alias=True))
    by_id: dict[str, dict[str, Any]] = {}
    for r in scored:
        entry = by_id.setdefault(
            str(r["id"]),
            {
                "id": str(r["id"]),
                "input": r["input"],
                "reference": r["reference"],
                "outputs": {},
                "correct": {},
            },
        )
        entry["outputs"][r["arm"]] = r["output"]
        entry["correct"][r["arm"]] = bool(r["correct"])
    split = [e for e in by_id.values() if len(set(e["correct"].values())) > 1]
    return split[:limit]


def assemble_state(pipeline) -> dict[str, Any]:
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tunewise_version": __version__,
        "project": pipeline.spec.task.name,  # the page's title
        "project_path": str(pipeline.project.root),
        "task": _task(pipeline),
        "data": _read((pipeline.outputs.get("data") or {}).get("report_path")),
        "training": _training(pipeline),
        "evaluation": _read((pipeline.outputs.get("evaluate") or {}).get("summary_path")),
        "economics": _economics(pipeline),
        "verdict": _verdict(pipeline),
        "disagreements": _disagreements(pipeline),
        "stage_times": {k: round(v, 2) for k, v in pipeline.seconds.items()},
    }
