"""Fair prompted arms: free generation against label scoring and schema-constrained decoding, with the
embedded SmolLM2-135M-Instruct, on the small files of `../shared/datasets`.

    .venv/bin/python bench/constrained.py                          # the five datasets below, 100 examples each
    .venv/bin/python bench/constrained.py --datasets sst2 --limit 50
    .venv/bin/python bench/constrained.py --demo      # extra `tunewise eval` time on the demo project
    .venv/bin/python bench/constrained.py --demo --limit 10   # the same on its first 10 held-out examples

Label datasets (sst2, banking77, bitext_intent): zero-shot and few-shot, free vs `+scored`, strict and lenient
accuracy and format compliance with 95% Wilson intervals, and the paired accuracy difference scored - free with
its bootstrap interval. JSON datasets (restaurant8k, bfcl): format compliance free vs `+constrained`, accuracy,
field F1, and the latency cost: p50 and mean per-example model time (each example's fair share of the batched
compute, evaluate/engine.py), constrained over free. Consistency samples are off (one greedy answer per example)
to keep it short. Each dataset's project (the spec, with the instruction from bench/quality.py) and eval run are
kept under bench/out/constrained/<name>/; the table and the raw figures go to bench/out/constrained/results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import DATASETS, write_project  # noqa: E402  (the same tasks and instructions as bench/quality.py)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "constrained"
DEFAULT = ["sst2", "banking77", "bitext_intent", "restaurant8k", "bfcl"]


def run_one(name: str, limit: int, arms: list[str]) -> dict:
    from tunewise.data.load import load_spec_split
    from tunewise.evaluate.run import run_evaluation
    from tunewise.project import Project
    from tunewise.spec import load_spec

    folder = OUT / name
    write_project(name, folder, limit, samples=1)
    project = Project(folder.resolve())
    project.runs_dir.mkdir(parents=True, exist_ok=True)
    spec = load_spec(folder / "tunewise.yaml")
    train, held, _ = load_spec_split(project.root, spec)
    started = time.perf_counter()
    result = run_evaluation(
        spec,
        project,
        train,
        held,
        arms,
        narrate=lambda m: print(f"  [{name}] {m}", file=sys.stderr, flush=True),
        seed=spec.data.seed,
    )
    latency: dict[str, list[float]] = {}
    for r in result.records:
        latency.setdefault(r["arm"], []).append(float(r["latency_ms"]))
    return {
        "dataset": name,
        "contract": spec.contract.type,
        "seconds": time.perf_counter() - started,
        "run_dir": str(result.run_dir),
        "summary": result.summary,
        "mean_latency_ms": {a: float(np.mean(v)) for a, v in latency.items()},
    }


def demo_cost(limit: int | None = None) -> dict:
    """The extra time constrained arms add to `tunewise eval` on the demo project (its json contract, its
    prompted arms and settings): the same evaluation with `evaluation.constrained` false, then auto; `limit`
    evaluates only the first N held-out examples (the demo has 50)."""
    from tunewise.data.demo import write_demo_project
    from tunewise.data.load import load_spec_split
    from tunewise.evaluate.run import run_evaluation
    from tunewise.project import Project
    from tunewise.spec import load_spec

    folder = OUT / "demo"
    if not (folder / "tunewise.yaml").is_file():
        write_demo_project(folder)
    project = Project(folder.resolve())
    project.runs_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for mode in (False, "auto"):
        spec = load_spec(folder / "tunewise.yaml")
        spec.evaluation.constrained = mode
        spec.evaluation.limit = limit
        arms = [a for a in spec.evaluation.arms if a != "fine-tuned"]
        train, held, _ = load_spec_split(project.root, spec)
        marks: list[tuple[float, str]] = []  # (when, narration): each arm's start

        def narrate(message: str, marks: list = marks) -> None:
            marks.append((time.perf_counter(), message.split(":")[0]))
            print(f"  [demo] {message}", file=sys.stderr, flush=True)

        started = time.perf_counter()
        result = run_evaluation(spec, project, train, held, arms, narrate=narrate)
        ended = time.perf_counter()
        ends = [t for t, _ in marks[1:]] + [ended]
        out[str(mode)] = {
            "seconds": ended - started,
            # Each arm's wall time, to its next arm's start (the last one includes the summary).
            "arm_seconds": {name: end - t for (t, name), end in zip(marks, ends)},
            "arms": {
                a["name"]: {
                    "accuracy": a["accuracy"]["value"],
                    "format": a["format_compliance"]["value"],
                    "consistency": (a.get("consistency") or {}).get("value"),
                    "p50_ms": (a.get("latency_ms") or {}).get("p50"),
                }
                for a in result.summary["arms"]
            },
        }
        print(f"  [demo] constrained={mode}: {out[str(mode)]['seconds']:.0f} s", file=sys.stderr, flush=True)
    out["extra_seconds"] = out["auto"]["seconds"] - out["False"]["seconds"]
    return out


def _pct(metric: dict | None) -> str:
    if not metric or metric.get("value") is None:
        return "-"
    return f"{metric['value']:.0%} [{metric['low']:.0%},{metric['high']:.0%}]"


def table(rows: list[dict]) -> str:
    lines = [
        "| dataset | arm | accuracy | lenient | format | field F1 | p50 ms | mean ms | vs free: accuracy diff [95%] | latency p50 x |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        s = row["summary"]
        arms = {a["name"]: a for a in s["arms"]}
        paired = {(p["a"], p["b"]): p for p in s["paired"]}
        for a in s["arms"]:
            free = a["name"].partition("+")[0]
            diff, ratio = "", ""
            if free != a["name"] and free in arms:
                p = paired.get((a["name"], free))
                if p:
                    diff = f"{100 * p['diff']:+.0f} [{100 * p['low']:+.0f},{100 * p['high']:+.0f}]"
                    ratio = f"{p['latency_p50_ratio']:.2f}" if p.get("latency_p50_ratio") else ""
            f1 = a.get("field_f1")
            lat = (a.get("latency_ms") or {}).get("p50")
            lines.append(
                f"| {row['dataset']} | {a['name']} | {_pct(a['accuracy'])} | {_pct(a.get('accuracy_lenient'))} | "
                f"{_pct(a.get('format_compliance'))} | {'-' if f1 is None else f'{f1:.2f}'} | "
                f"{'-' if lat is None else f'{lat:.0f}'} | {row['mean_latency_ms'][a['name']]:.0f} | {diff} | {ratio} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT))
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument(
        "--arms", default="zero-shot,few-shot", help="free arms; their variants run beside them"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="only time `tunewise eval` on the demo project, constrained off vs auto",
    )
    args = parser.parse_args(argv)
    if args.demo:
        result = demo_cost(args.limit)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0
    rows = []
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        if not (DATASETS / name).is_dir():
            print(f"skipping {name}: no {DATASETS / name}", file=sys.stderr)
            continue
        rows.append(run_one(name, args.limit, args.arms.split(",")))
        print(f"  [{name}] {rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    previous = json.loads((OUT / "results.json").read_text()) if (OUT / "results.json").is_file() else {}
    previous.update({r["dataset"]: r for r in rows})
    (OUT / "results.json").write_text(json.dumps(previous, indent=2, ensure_ascii=False) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
