"""Quality on real data nobody here wrote: the whole pipeline with default settings on the small files of
`../shared/datasets`, one table for all of them.

    .venv/bin/python bench/quality.py                       # all six datasets (about an hour on 2 cores)
    .venv/bin/python bench/quality.py --datasets sst2,restaurant8k --limit 50
    .venv/bin/python bench/quality.py --datasets restaurant8k --limit 20 --until baseline --levers off

`--until baseline` runs the stages up to the baseline only (the prompted arms), each forced to run again;
`--levers off` evaluates with the generation engine as it was before its last three levers (static batches,
the greedy answers and the consistency samples in two calls, a call per arm), to measure the baseline stage
before and after.

For each dataset it writes a project under bench/out/quality/<name>/ (the spec, with the instruction the
dataset's SOURCE.md suggests as the system prompt), runs `tunewise run` on it, and prints every arm's strict and
lenient accuracy, format compliance and consistency with their 95% intervals, and the seconds each stage took.
A second invocation reuses the stages whose inputs did not change (pass --fresh to start over).

Targets for the fine-tuned arm with defaults: on every label dataset accuracy >= 85% and format
compliance >= 99%; on every JSON dataset format compliance >= 95%; on every dataset a significant gain over
the best prompted arm where that arm is below the bar (McNemar p < 0.05 and a paired interval above 0). On
bitext_reply the `reply` is prose, declared as a text field of the contract: accuracy there is the exact match
of category, entities and intent, the reply is scored by ROUGE-L, and a gain counts when it is significant on
either measure and neither is significantly worse. The reference is a plain PyTorch loop measured
earlier on this kind of machine (LoRA r=16, lr 2e-4, 3 epochs, batch 8, the label list in every training
prompt): its figures are printed beside ours.
Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from tunewise.data.demo import DEMO_PRICES_YAML

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "bench" / "out" / "quality"

# The plain loop of the issue: (exact accuracy, format compliance, training seconds) on the small files.
REFERENCE = {"sst2": (0.84, 1.00, 395.0), "banking77": (0.78, 0.99, 912.0)}

LABEL_BAR, LABEL_FORMAT_BAR, JSON_FORMAT_BAR = 0.85, 0.99, 0.95

_STRING = {"type": "string"}
TASKS: dict[str, dict] = {
    "sst2": {
        "target": "Given a movie-review sentence, answer with its sentiment: positive or negative.",
        "system": "Is the sentiment of this movie-review sentence positive or negative? Reply with one word: "
        "positive or negative.",
    },
    "banking77": {
        "target": "Given a customer's banking message, answer with its intent label.",
        "system": "Classify the customer's banking message into exactly one intent from this list: {labels}. "
        "Reply with the intent name only.",
    },
    "bitext_intent": {
        "target": "Given a customer-service message, answer with its intent label.",
        "system": "Classify the customer's message into exactly one intent from this list: {labels}. Reply with "
        "the intent name only.",
    },
    "restaurant8k": {
        "target": "Given a customer's answer to a booking assistant, extract the slots they gave as JSON.",
        "system": "A restaurant booking assistant asked the customer for the requested slots. Extract the values "
        "the customer gave for date, time, people, first_name and last_name, copying the exact words. Reply "
        "with JSON only (an empty object if there are none).",
        "schema": {
            "type": "object",
            "properties": {k: _STRING for k in ("date", "time", "people", "first_name", "last_name")},
            "additionalProperties": False,
        },
    },
    "bitext_reply": {
        "target": "Given a customer-support message, reply with JSON holding category, entities, intent and reply.",
        "system": "You are a customer-support assistant. For the customer's message reply with JSON only, with "
        "the keys category, entities (entity type -> text copied from the message, {} if none), intent and "
        "reply (a short, polite answer; use placeholders like {{Order Number}} for details you do not know).",
        "schema": {
            "type": "object",
            "properties": {
                "category": _STRING,
                "entities": {"type": "object", "additionalProperties": _STRING},
                "intent": _STRING,
                "reply": _STRING,
            },
            "required": ["category", "entities", "intent", "reply"],
            "additionalProperties": False,
        },
        # The reply is prose: scored by ROUGE-L, not by exact match (scorers.py, text_fields).
        "text_fields": ["reply"],
    },
    "bfcl": {
        "target": "Given a list of functions and a query, answer with the JSON list of function calls to make.",
        "system": "You can call the functions listed in the message. Answer the query with JSON only: a list of "
        'calls [{"name": function_name, "arguments": {...}}], using only arguments defined for the function.',
        "schema": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": _STRING, "arguments": {"type": "object"}},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            },
        },
    },
}


def _parse_value(text: str):
    """A --set value as YAML would read it: numbers, booleans, lists."""
    return yaml.safe_load(text)


def apply_overrides(spec: dict, overrides: list[str]) -> dict:
    """`hyperparameters.learning_rate=0.001` style overrides, to compare a setting against the defaults.

    >>> apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[x, y]"])
    {'a': {'b': 2, 'c': ['x', 'y']}}
    """
    for item in overrides:
        path, _, value = item.partition("=")
        *parents, leaf = path.strip().split(".")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = _parse_value(value)
    return spec


def write_project(
    name: str, folder: Path, limit: int | None, samples: int | None, overrides: list[str] = ()
) -> None:
    source = DATASETS / name
    task = TASKS[name]
    labels_file = source / "labels-small.json"
    if labels_file.is_file():
        labels = json.loads(labels_file.read_text())
        contract = {"type": "label", "labels": labels}
        system = task["system"].replace("{labels}", ", ".join(labels))
    else:
        contract = {"type": "json", "schema": task["schema"]}
        if task.get("text_fields"):
            contract["text_fields"] = task["text_fields"]
        system = task["system"]
    evaluation: dict = {}
    if limit:
        evaluation["limit"] = limit
    if samples:
        evaluation["consistency_samples"] = samples
    spec = {
        "task": {"name": name, "target": task["target"]},
        "contract": contract,
        "system_prompt": system,
        "data": {
            "train": str(source / "train-small.jsonl"),
            "eval": str(source / "test-small.jsonl"),
        },
        **({"evaluation": evaluation} if evaluation else {}),
        # The demo's prices (labelled assumptions, not quotes), so the economics and verdict stages can run.
        "economics": {"platforms": ["together"], "pricing_file": "prices.yaml"},
    }
    apply_overrides(spec, list(overrides))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tunewise.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    (folder / "prices.yaml").write_text(DEMO_PRICES_YAML)


def run_one(name: str, folder: Path, until: str | None = None) -> dict:
    from rich.console import Console

    from tunewise.pipeline.progress import PlainProgress
    from tunewise.pipeline.run import Pipeline, PipelineResult
    from tunewise.project import Project
    from tunewise.spec import load_spec

    project = Project(folder.resolve())
    project.runs_dir.mkdir(parents=True, exist_ok=True)
    spec = load_spec(folder / "tunewise.yaml")

    def say(message: str) -> None:
        print(f"  [{name}] {message}", file=sys.stderr, flush=True)

    # Plain progress lines (at most every 30 s) for the long stages: training steps, evaluation calls.
    progress = PlainProgress(Console(stderr=True, soft_wrap=True, highlight=False))
    pipeline = Pipeline(project, spec, narrate=say, progress=progress)
    started = time.perf_counter()
    if until is not None:
        # Each stage up to `until` forced to run again, the later ones not run at all.
        from tunewise.pipeline.run import STAGES

        outcomes = []
        for stage in STAGES[: STAGES.index(until) + 1]:
            outcomes += pipeline.run(only=stage).outcomes
        result = PipelineResult(outcomes)
        baseline = pipeline.outputs.get("baseline")
        path = baseline.records_path.parent / "summary.json" if baseline and baseline.records_path else None
        summary_dict = json.loads(path.read_text()) if path else {}
        return {
            "dataset": name,
            "contract": spec.contract.type,
            "seconds": time.perf_counter() - started,
            "stages": {o.stage: {"status": o.status, "seconds": o.seconds} for o in result.outcomes},
            "summary": summary_dict,
            "verdict": None,
        }
    result = pipeline.run()
    evaluate = pipeline.outputs.get("evaluate")
    summary = evaluate.summary() if evaluate is not None else None
    verdict = pipeline.outputs.get("verdict")
    return {
        "dataset": name,
        "contract": spec.contract.type,
        "seconds": time.perf_counter() - started,
        "stages": {o.stage: {"status": o.status, "seconds": o.seconds} for o in result.outcomes},
        "summary": summary.model_dump() if summary is not None else {},
        "verdict": verdict.recommendation if verdict is not None else None,
    }


def _pct(metric: dict | None) -> str:
    if not metric or metric.get("value") is None:
        return "-"
    return f"{metric['value']:.0%} [{metric['low']:.0%},{metric['high']:.0%}]"


def check_targets(row: dict) -> list[str]:
    """The targets for the fine-tuned arm (the module docstring); returns what was missed."""
    summary = row["summary"]
    arms = {a["name"]: a for a in summary.get("arms", [])}
    tuned = arms.get("fine-tuned")
    if tuned is None:
        return [f"{row['dataset']}: no fine-tuned arm was evaluated"]
    missed = []
    acc, fmt = tuned["accuracy"]["value"], tuned["format_compliance"]["value"]
    if row["contract"] == "label":
        if acc < LABEL_BAR:
            missed.append(f"{row['dataset']}: fine-tuned accuracy {acc:.0%} < {LABEL_BAR:.0%}")
        if fmt < LABEL_FORMAT_BAR:
            missed.append(f"{row['dataset']}: fine-tuned format {fmt:.0%} < {LABEL_FORMAT_BAR:.0%}")
    elif fmt < JSON_FORMAT_BAR:
        missed.append(f"{row['dataset']}: fine-tuned format {fmt:.0%} < {JSON_FORMAT_BAR:.0%}")
    prompted = [a for a in arms.values() if a["kind"] != "fine-tuned"]
    if prompted:
        best = max(prompted, key=lambda a: (a["accuracy"]["value"], a["accuracy_lenient"]["value"]))
        bar = LABEL_BAR if row["contract"] == "label" else 0.0
        if best["accuracy"]["value"] < max(bar, 1e-9) or row["contract"] != "label":
            paired = next(
                (p for p in summary.get("paired", []) if p["a"] == "fine-tuned" and p["b"] == best["name"]),
                None,
            )
            significant = paired is not None and paired["low"] > 0 and (paired.get("mcnemar_p") or 1) < 0.05
            text = (paired or {}).get("text_similarity_diff")
            if text is not None:
                # Free-text fields too: a significant gain on either measure, and no significant loss on the other.
                worse = text["high"] < 0 or (paired["high"] < 0 and (paired.get("mcnemar_p") or 1) < 0.05)
                significant = (significant or text["low"] > 0) and not worse
            if not significant:
                missed.append(f"{row['dataset']}: no significant gain over {best['name']}")
    return missed


def render(rows: list[dict]) -> None:
    print()
    print(
        f"{'dataset':<14} {'arm':<22} {'strict':>17} {'lenient':>17} {'format':>17} {'consistency':>17} "
        f"{'field F1':>17} {'text ROUGE-L':>17}"
    )
    for row in rows:
        for arm in row["summary"].get("arms", []):
            print(
                f"{row['dataset']:<14} {arm['name']:<22} {_pct(arm['accuracy']):>17} "
                f"{_pct(arm.get('accuracy_lenient')):>17} {_pct(arm.get('format_compliance')):>17} "
                f"{_pct(arm.get('consistency')):>17} {_pct(arm.get('field_f1_mean')):>17} "
                f"{_pct(arm.get('text_similarity')):>17}"
            )
        ref = REFERENCE.get(row["dataset"])
        if ref:
            print(
                f"{row['dataset']:<14} {'reference plain loop':<22} {ref[0]:>17.0%} {'':>17} {ref[1]:>17.0%} "
                f"{'':>17}   (training {ref[2]:.0f} s)"
            )
    print()
    print(
        f"{'dataset':<14} "
        + " ".join(f"{s:>9}" for s in ("data", "split", "baseline", "train", "evaluate"))
        + "      total  verdict"
    )
    for row in rows:
        stages = row["stages"]
        shown = {"skipped": "reused", "not needed": "-"}  # skipped: inputs unchanged since an earlier run
        cells = " ".join(
            f"{stages[s]['seconds']:>8.0f}s"
            if stages.get(s, {}).get("status") == "ran"
            else f"{shown.get(stages.get(s, {}).get('status'), '-'):>9}"
            for s in ("data", "split", "baseline", "train", "evaluate")
        )
        print(f"{row['dataset']:<14} {cells} {row['seconds']:>9.0f}s  {row['verdict']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(TASKS), help="comma-separated names")
    parser.add_argument(
        "--limit", type=int, default=None, help="held-out examples per dataset (default all 100)"
    )
    parser.add_argument("--samples", type=int, default=None, help="consistency samples (default: the spec's)")
    parser.add_argument("--fresh", action="store_true", help="delete earlier state and start over")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--until", choices=("baseline",), help="stop after this stage (no targets checked)")
    parser.add_argument(
        "--levers",
        choices=("on", "off"),
        default="on",
        help="the engine's continuous batching, one prefill and arms answered together",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec value, e.g. --set hyperparameters.learning_rate=0.001 (repeatable)",
    )
    args = parser.parse_args()
    if not DATASETS.is_dir():
        print(f"../shared/datasets is absent ({DATASETS}): nothing to measure", file=sys.stderr)
        return 2
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        print(f"unknown dataset(s): {', '.join(unknown)}; known: {', '.join(TASKS)}", file=sys.stderr)
        return 2
    if args.levers == "off":
        from tunewise.evaluate.engine import LocalEngine

        LocalEngine.continuous = LocalEngine.one_prefill = LocalEngine.merge_arms = False
    rows = []
    for name in names:
        folder = args.out / name
        if args.fresh and folder.exists():
            shutil.rmtree(folder)
        write_project(name, folder, args.limit, args.samples, args.set)
        print(f"== {name}", file=sys.stderr, flush=True)
        rows.append(run_one(name, folder, args.until))
        (args.out / "results.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    render(rows)
    if args.until:
        return 0
    missed = [m for row in rows for m in check_targets(row)]
    print()
    for m in missed:
        print(f"target missed: {m}")
    if not missed:
        print("every target met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
