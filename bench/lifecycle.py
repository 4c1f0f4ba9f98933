"""The loop after launch on real data: banking77's 10-intent set, a model trained on half of the intents, then
traffic that includes the other half.

    python bench/lifecycle.py OUT [--per-intent 12] [--traffic 80] [--threads 1]

1. Train the embedded SmolLM2-135M (LoRA, the spec's auto settings, float32, one micro-batch at a time) on
   `--per-intent` training examples of each of 5 of the 10 intents (`train-small.jsonl`); evaluate it on the held-out examples of those 5 (`test-small.jsonl`); promote it.
2. Serve it with capture on and send `--traffic` questions through the `openai` client, drawn from banking77's
   full training file (none of them in the small files), half from the old intents and half from the new.
3. Export the traffic, label it with banking77's gold labels (the script plays the labeller), import it.
4. `tunewise drift`, then `tunewise retrain` (the gate), then `tunewise lineage`.

Everything it prints goes to OUT/*.txt and OUT/summary.json as well.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "banking77"


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def label(row: dict) -> str:
    return row["messages"][-1]["content"]


def text(row: dict) -> str:
    return row["messages"][0]["content"]


def write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-intent", type=int, default=12)
    parser.add_argument("--traffic", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--resume", action="store_true", help="go on from the export (OUT already trained and served)"
    )
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict = {}

    def cli(*argv: str) -> str:
        """Run the real CLI in this process, keep its stdout in OUT/<command>.txt."""
        import contextlib
        import io

        from tunewise.cli import main as tunewise

        buf = io.StringIO()
        sys.argv = ["tunewise", *argv]
        with contextlib.redirect_stdout(buf):
            try:
                tunewise()
            except SystemExit as exc:
                if exc.code:
                    raise RuntimeError(f"tunewise {' '.join(argv)} exited {exc.code}") from None
        text_out = buf.getvalue()
        name = "-".join(a for a in argv[:2] if not a.startswith("-") and "/" not in a)
        (out / f"{name}{'-json' if '--json' in argv else ''}.txt").write_text(text_out)
        print(f"$ tunewise {' '.join(argv)}\n{text_out}", flush=True)
        return text_out

    labels = json.loads((DATA / "labels-small.json").read_text())
    old = sorted(labels)[::2]
    new = sorted(set(labels) - set(old))
    train = []
    for intent in old:
        train += [r for r in rows(DATA / "train-small.jsonl") if label(r) == intent][: args.per_intent]
    held = [r for r in rows(DATA / "test-small.jsonl") if label(r) in old]
    seen = {text(r) for r in rows(DATA / "train-small.jsonl") + rows(DATA / "test-small.jsonl")}
    pool = [r for r in rows(DATA / "train.jsonl") if label(r) in labels and text(r) not in seen]
    rng = random.Random(0)
    half = args.traffic // 2
    traffic = rng.sample([r for r in pool if label(r) in old], half) + rng.sample(
        [r for r in pool if label(r) in new], args.traffic - half
    )
    rng.shuffle(traffic)
    summary.update(
        old_intents=old, new_intents=new, train=len(train), held_out=len(held), traffic=len(traffic)
    )

    from tunewise.project import Project

    if args.resume:  # training and traffic are there: go on from the export
        project = Project(out / "banking")
        summary.update(json.loads((out / "summary-first.json").read_text()))
        loop(project, traffic, out, summary, cli, started)
        return
    from tunewise.scaffold import scaffold

    project = scaffold(out / "banking")
    write(project.root / "data" / "train.jsonl", train)
    write(project.root / "data" / "eval.jsonl", held)
    spec_text = project.spec_path.read_text()
    spec_text = spec_text.replace(
        "labels: [billing, delivery, refund, other]", f"labels: {json.dumps(labels)}"
    )
    spec_text = spec_text.replace("  # eval: data/eval.jsonl", "  eval: data/eval.jsonl")
    spec_text = spec_text.replace("arms: [zero-shot, few-shot, retrieved, fine-tuned]", "arms: [fine-tuned]")
    spec_text = spec_text.replace(
        "Answer with exactly one of: billing, delivery, refund, other.", "Answer with the intent label only."
    )
    project.spec_path.write_text(spec_text)
    from tunewise.data.versions import save_version
    from tunewise.evaluate.run import run_evaluation
    from tunewise.registry.aliases import promote
    from tunewise.spec import load_spec
    from tunewise.train.config import TrainConfig
    from tunewise.train.loop import run as train_run

    spec = load_spec(project.spec_path)
    model = spec.task.name
    train_v, train_path, _ = save_version(
        project, "train", train, ["data/train.jsonl"], {"examples": len(train)}
    )
    held_v, _, _ = save_version(project, "eval", held, ["data/eval.jsonl"], {"examples": len(held)})
    config = TrainConfig.from_spec(
        spec,
        data=[str(train_path)],
        dataset_version=train_v,
        threads=args.threads,
        precision="float32",
        micro_batch_workers=1,
        progress=False,
    )
    t0 = time.perf_counter()
    first = train_run(config, project, narrate=print)
    assert first.status == "succeeded", first.error
    summary["first_training_s"] = round(time.perf_counter() - t0, 1)
    evaluation = run_evaluation(
        spec, project, train, held, ["fine-tuned"], fine_tuned_run=first.run_id, dataset_version=held_v
    )
    arm = evaluation.summary["arms"][0]
    summary["first_held_out_accuracy"] = arm["accuracy"]["value"]
    registry = project.registry()
    promote(registry, model, first.run_id, by="bench")
    registry.close()

    # Serve with capture on; the openai client sends the traffic, 8 at a time.
    import openai

    from tunewise.lifecycle.capture import CaptureSettings
    from tunewise.serve.app import bind, make_server
    from tunewise.serve.inference import ServeSettings

    settings = ServeSettings(
        adapters={model: first.run_id}, preload=True, threads=args.threads, max_batch_size=8
    )
    sock = bind("127.0.0.1", 0)
    server = make_server(
        project, settings, sock, no_auth=True, start_worker=False, capture=CaptureSettings(models=(model,))
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="x", timeout=600)

    def ask(row: dict) -> str:
        messages = [
            {"role": "user", "content": text(row)}
        ]  # as the fine-tuned model was trained and evaluated
        got = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
        return got.choices[0].message.content or ""

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool_:
        answers = list(pool_.map(ask, traffic))
    summary["serve_s"] = round(time.perf_counter() - t0, 1)
    server.should_exit = True
    thread.join(30)
    sock.close()
    summary["served_exact_old"] = sum(
        a.strip() == label(r) for a, r in zip(answers, traffic, strict=True) if label(r) in old
    ) / max(1, sum(label(r) in old for r in traffic))
    summary["served_exact_new"] = sum(
        a.strip() == label(r) for a, r in zip(answers, traffic, strict=True) if label(r) in new
    ) / max(1, sum(label(r) in new for r in traffic))

    (out / "summary-first.json").write_text(json.dumps(summary, indent=2) + "\n")
    loop(project, traffic, out, summary, cli, started)


def loop(project, traffic: list[dict], out: Path, summary: dict, cli, started: float) -> None:
    """Export, label, import, drift, retrain, lineage."""
    import os

    os.chdir(project.root)
    exported = out / "to-label.jsonl"
    cli("traffic", "export", "--to", str(exported))
    gold = {text(r): label(r) for r in traffic}
    labelled = []
    for record in map(json.loads, exported.read_text().splitlines()):
        user = next(m["content"] for m in record["messages"] if m["role"] == "user")
        record["messages"][-1]["content"] = gold[user]
        labelled.append(record)
    write(out / "labelled.jsonl", labelled)
    cli("traffic", "import", str(out / "labelled.jsonl"))
    cli("drift")
    summary["drift"] = json.loads(cli("drift", "--json"))
    t0 = time.perf_counter()
    summary["retrain"] = json.loads(cli("retrain", "--json"))
    summary["retrain_s"] = round(time.perf_counter() - t0, 1)
    cli("lineage")
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("drift", "retrain")}, indent=2))


if __name__ == "__main__":
    main()
