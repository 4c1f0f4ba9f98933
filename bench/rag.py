"""Prompting, fine-tuning, RAG and RAG + fine-tuning on the same held-out questions: COVID-QA's small files.

    .venv/bin/python bench/rag.py                              # defaults: 270 training, 100 held-out questions
    .venv/bin/python bench/rag.py --limit 20 --train-limit 60 --epochs 1 --samples 1   # a quick look on 2 cores

It writes a project under bench/out/rag/ (train-small.jsonl as the training data, test-small.jsonl and its
`.meta.jsonl` sidecar as the held-out set, the 92 papers of docs/ as the knowledge documents, the spec's defaults
otherwise), builds the index (timed), measures retrieval alone on the held-out questions (recall@5, MRR and the
query latency p50/p95), then runs `tunewise run` with the arms zero-shot, fine-tuned (closed-book), rag and
rag+fine-tuned (trained with the passages in its prompts). It prints one table: per arm exact match, token F1,
groundedness and recall@k (k = knowledge.top_k) with 95% intervals, the prompt tokens and the cost per query from
the economics stage; then the verdict. A second invocation reuses the stages whose inputs did not change (pass
--fresh to start over). The results are also written to bench/out/rag/result.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from tunewise.data.demo import DEMO_PRICES_YAML

ROOT = Path(__file__).resolve().parents[1]
COVIDQA = ROOT.parent / "shared" / "datasets" / "covidqa"
OUT = ROOT / "bench" / "out" / "rag"
ARMS = ["zero-shot", "fine-tuned", "rag", "rag+fine-tuned"]


def write_project(folder: Path, args: argparse.Namespace) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    train_lines = (COVIDQA / "train-small.jsonl").read_text().splitlines()
    meta_lines = (COVIDQA / "train-small.meta.jsonl").read_text().splitlines()
    n = args.train_limit or len(train_lines)
    (folder / "data" / "train.jsonl").write_text("\n".join(train_lines[:n]) + "\n")
    (folder / "data" / "train.meta.jsonl").write_text("\n".join(meta_lines[:n]) + "\n")
    evaluation: dict = {"arms": args.arms.split(",")}
    if args.limit:
        evaluation["limit"] = args.limit
    if args.samples:
        evaluation["consistency_samples"] = args.samples
    spec = {
        "task": {
            "name": "covidqa",
            "target": "Given a question about COVID-19 research papers, answer with a short span of a paper.",
        },
        "system_prompt": "Answer the question with a short phrase from the literature, nothing else.",
        "data": {"train": "data/train.jsonl", "eval": str(COVIDQA / "test-small.jsonl")},
        "knowledge": {
            "docs": str(COVIDQA / "docs"),
            **({"retriever": args.retriever} if args.retriever else {}),
        },
        "evaluation": evaluation,
        **({"hyperparameters": {"epochs": args.epochs}} if args.epochs else {}),
        # The demo's prices (labelled assumptions, not quotes), so the economics and verdict stages can run.
        "economics": {"platforms": ["together"], "pricing_file": "prices.yaml"},
    }
    (folder / "tunewise.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    (folder / "prices.yaml").write_text(DEMO_PRICES_YAML)


def measure_retrieval(project, spec, held: list[dict], metas: list[dict]) -> dict:
    """Index build (or load) time, then recall@5, MRR and latency over the held-out questions."""
    from tunewise.evaluate.knowledge import open_knowledge, question_of, reciprocal_rank
    from tunewise.evaluate.stats import bootstrap_mean, wilson

    started = time.perf_counter()
    retriever = open_knowledge(spec, project.root, project.state_dir)
    build_s = time.perf_counter() - started
    hits, ranks, latencies = [], [], []
    for ex, meta in zip(held, metas, strict=True):
        t = time.perf_counter()
        docs = [p.doc for p in retriever.retrieve(question_of(ex["messages"]), 5)]
        latencies.append((time.perf_counter() - t) * 1000)
        if meta.get("gold_doc"):
            hits.append(meta["gold_doc"] in docs)
            ranks.append(reciprocal_rank(docs, meta["gold_doc"]))
    p50, p95 = np.percentile(latencies, [50, 95])
    return {
        "index_version": getattr(retriever, "version", None),
        "index_seconds": build_s,
        "questions": len(held),
        "recall_at_5": wilson(sum(hits), len(hits)).as_dict() if hits else None,
        "mrr_at_5": bootstrap_mean(ranks).as_dict() if ranks else None,
        "query_ms": {"p50": float(p50), "p95": float(p95)},
    }


def _iv(m: dict | None, pct: bool = True) -> str:
    if not m or m.get("value") is None:
        return "-"
    if pct:
        return f"{m['value']:.1%} [{m['low']:.0%}, {m['high']:.0%}]"
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, help="Held-out questions (default: all 100).")
    parser.add_argument("--train-limit", type=int, help="Training examples (default: all 270).")
    parser.add_argument("--epochs", type=int, help="Training epochs (default: the spec's auto).")
    parser.add_argument("--samples", type=int, help="Consistency samples per prompt (default: the spec's).")
    parser.add_argument("--retriever", choices=["hybrid", "bm25", "dense"], help="Default: the spec's.")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--fresh", action="store_true", help="Delete the project folder first.")
    args = parser.parse_args()
    if not COVIDQA.is_dir():
        print(f"covidqa is absent ({COVIDQA})", file=sys.stderr)
        return 2
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    write_project(args.out, args)

    from rich.console import Console

    from tunewise.data.load import load_examples
    from tunewise.evaluate.knowledge import meta_for
    from tunewise.pipeline.progress import PlainProgress
    from tunewise.pipeline.run import Pipeline
    from tunewise.project import Project
    from tunewise.spec import load_spec

    project = Project(args.out.resolve())
    project.runs_dir.mkdir(parents=True, exist_ok=True)
    spec = load_spec(args.out / "tunewise.yaml")
    held = load_examples(COVIDQA / "test-small.jsonl")[: args.limit or None]
    retrieval = measure_retrieval(project, spec, held, meta_for(held, [COVIDQA / "test-small.jsonl"]))
    print(
        f"index {retrieval['index_version']}: built or loaded in {retrieval['index_seconds']:.1f} s; "
        f"recall@5 {_iv(retrieval['recall_at_5'])}, MRR@5 {_iv(retrieval['mrr_at_5'], False)}, query "
        f"p50 {retrieval['query_ms']['p50']:.1f} ms, p95 {retrieval['query_ms']['p95']:.1f} ms "
        f"({retrieval['questions']} questions)",
        flush=True,
    )

    def say(message: str) -> None:
        print(f"  [rag] {message}", file=sys.stderr, flush=True)

    progress = PlainProgress(Console(stderr=True, soft_wrap=True, highlight=False))
    pipeline = Pipeline(project, spec, narrate=say, progress=progress)
    started = time.perf_counter()
    result = pipeline.run()
    seconds = time.perf_counter() - started
    evaluate = pipeline.outputs.get("evaluate")
    summary = evaluate.summary().model_dump() if evaluate is not None and evaluate.summary() else {}
    econ = pipeline.outputs.get("economics")
    per_query: dict[str, float] = {}
    if econ is not None and getattr(econ, "economics_path", None):
        report = json.loads(Path(econ.economics_path).read_text())
        for option in report.get("options", []):
            per_query.setdefault(option.get("arm") or option["name"], option["per_query"])
    verdict_out = pipeline.outputs.get("verdict")
    verdict = None
    if verdict_out is not None and getattr(verdict_out, "verdict_path", None):
        verdict = json.loads(Path(verdict_out.verdict_path).read_text())

    header = (
        f"{'arm':<16}{'exact match':>22}{'token F1':>22}{'grounded':>22}{'recall@k':>22}{'prompt tok':>12}"
    )
    print(f"\n{summary.get('n_examples', 0)} held-out questions, 95% intervals\n{header}{'$/query':>12}")
    for arm in summary.get("arms", []):
        cost = per_query.get(arm["name"])
        print(
            f"{arm['name']:<16}{_iv(arm.get('exact_match')):>22}{_iv(arm.get('token_f1'), False):>22}"
            f"{_iv(arm.get('grounded_rate')):>22}{_iv(arm.get('recall_at_k')):>22}"
            f"{arm.get('prompt_tokens') or 0:>12.0f}{(f'{cost:.6f}' if cost is not None else '-'):>12}"
        )
    stages = {o.stage: {"status": o.status, "seconds": round(o.seconds, 1)} for o in result.outcomes}
    print("stages: " + ", ".join(f"{k} {v['status']} {v['seconds']} s" for k, v in stages.items()))
    if verdict:
        print(f"verdict: {verdict.get('headline') or verdict.get('recommendation')}")
    else:
        print(f"verdict: none ({getattr(verdict_out, 'skipped', None)})")
    payload = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "retrieval": retrieval,
        "seconds": seconds,
        "stages": stages,
        "summary": summary,
        "cost_per_query": per_query,
        "verdict": verdict,
    }
    (args.out / "result.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
