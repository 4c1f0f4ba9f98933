"""Benchmark: retrieval over covidqa's 92 papers for its 100 test-small questions, BM25 vs dense vs hybrid.

For each retriever: recall@1 and recall@5 of the gold document (95% Wilson intervals), MRR over the top 20
passages, the index build time (embedding included; a reused index reports the time recorded when it was
built) and query latency p50/p95 over the 100 questions (one query at a time, after one warm-up query).
Defaults as a spec gets them: 256-token chunks, 32 tokens of overlap, RRF with k = 60.

    .venv/bin/python bench/retrieval.py [--state FOLDER] [--chunk-tokens 256] [--overlap 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COVIDQA = HERE.parent.parent / "shared" / "datasets" / "covidqa"
DEPTH = 20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--state", type=Path, default=None, help="state folder (default: a temporary one)")
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--split", default="test-small")
    args = parser.parse_args()

    from tunewise.rag.index import build_index
    from tunewise.rag.metrics import score_retrieval
    from tunewise.spec import KnowledgeSpec

    questions = [
        json.loads(line)["messages"][0]["content"]
        for line in (COVIDQA / f"{args.split}.jsonl").read_text().splitlines()
    ]
    gold = [
        json.loads(line)["doc"] for line in (COVIDQA / f"{args.split}.meta.jsonl").read_text().splitlines()
    ]
    state = args.state or Path(tempfile.mkdtemp(prefix="tunewise-retrieval-"))
    print(f"load average {os.getloadavg()[0]:.2f}; state folder {state}")
    rows = []
    for mode in ("bm25", "dense", "hybrid"):
        knowledge = KnowledgeSpec(
            docs=["docs"], chunk_tokens=args.chunk_tokens, overlap=args.overlap, retriever=mode
        )
        started = time.perf_counter()
        retriever, _ = build_index(knowledge, COVIDQA, state_dir=state)
        opened = time.perf_counter() - started
        info = retriever.info
        retriever.retrieve(questions[0], DEPTH)  # warm-up: first-call allocations are not a query's cost
        ranked, latencies = [], []
        for q in questions:
            t0 = time.perf_counter()
            passages = retriever.retrieve(q, DEPTH)
            latencies.append((time.perf_counter() - t0) * 1000)
            ranked.append([p.doc for p in passages])
        scores = score_retrieval(ranked, gold, ks=(1, 5))
        q = statistics.quantiles(latencies, n=20)  # q[9] = p50, q[18] = p95
        rows.append(
            {
                "retriever": mode,
                "version": info.version[:16],
                "documents": info.documents,
                "chunks": info.chunks,
                "build_s": info.seconds,
                "built_now": info.built,
                "open_s": round(opened, 2),
                **{f"recall@{k}": iv.as_dict() for k, iv in scores.recall.items()},
                "mrr": scores.mrr,
                "p50_ms": q[9],
                "p95_ms": q[18],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print()
    print("| retriever | recall@1 | recall@5 | MRR@20 | index build | query p50 | query p95 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        iv1, iv5 = r["recall@1"], r["recall@5"]
        print(
            f"| {r['retriever']} | {iv1['value']:.0%} [{iv1['low']:.1%}, {iv1['high']:.1%}] "
            f"| {iv5['value']:.0%} [{iv5['low']:.1%}, {iv5['high']:.1%}] | {r['mrr']:.3f} "
            f"| {r['build_s']:.1f} s ({r['chunks']:,} chunks) | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms |"
        )


if __name__ == "__main__":
    main()
