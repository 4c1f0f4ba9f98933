"""Training throughput: tunewise's loop vs TRL's SFTTrainer, LoRA on the embedded SmolLM2-135M, in one run.

    .venv/bin/python bench/train_throughput.py [--examples 256] [--heldout 32] [--epochs 1] [--batch-size 8]
                                               [--only tunewise,tunewise-fp32,trl-a,trl-b] [--json out.json]

Data: ../shared/datasets/bitext_reply (customer-support replies as JSON, so lengths spread like real chat
data): the first N rows of train.jsonl for training, the first M rows of test-small.jsonl held out.

All four arms train the same LoRA (rank 8, alpha 16, all linear layers, no dropout) with the same epochs,
global batch, learning rate (2e-4) and schedule, on assistant tokens only (TRL: prompt-completion format, whose
default `completion_only_loss` trains the completion and its end-of-turn token):

- tunewise: its defaults (padding-free packing, vocabulary projection only at trained positions, chunked
            cross-entropy, fused LoRA forward, precision chosen by measurement: bf16 where it is faster);
- tunewise-fp32: the same with precision fixed to fp32, the arithmetic TRL's two configurations use;
- trl-a:    SFTTrainer with TRL's defaults and only `bf16=False` (its bf16 default assumes fast bf16);
- trl-b:    trl-a plus `gradient_checkpointing=False`, the fastest TRL configuration found on this CPU.

Each arm runs in its own subprocess so that peak RSS is its own. For each: wall time of the training call,
real (non-padding) tokens per second, peak RSS, and the held-out loss on assistant tokens of its adapter,
measured by the same function (tunewise.train.loop.evaluate) for all. Then the ratios, and tunewise's
fraction of the compute bound: 4 x parameters FLOPs per token for LoRA (forward 2N, backward through the
activations 2N; no weight gradients for frozen weights) against the matrix-multiply peak of the precision the arm
computed in, measured in the arm's process at two shapes (`PEAK_SHAPES`) just before and just after its training
call (the highest reading counts).

Targets, printed as met or MISSED (exit status 1 when one is missed): >= 2.5x faster than trl-a and
>= 2x faster than trl-b with held-out loss no worse; >= 60% of the compute bound; peak RSS under 2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bitext_reply"
RANK, ALPHA, LR = 8, 16.0, 2e-4


def write_data(folder: Path, n_train: int, n_heldout: int) -> tuple[Path, Path]:
    if not DATASET.is_dir():
        sys.exit(f"{DATASET} is absent: the public datasets live in ../shared beside the repository")
    train_rows = (DATASET / "train.jsonl").read_text().splitlines()[:n_train]
    held_rows = (DATASET / "test-small.jsonl").read_text().splitlines()[:n_heldout]
    train, held = folder / "train.jsonl", folder / "heldout.jsonl"
    train.write_text("\n".join(train_rows) + "\n")
    held.write_text("\n".join(held_rows) + "\n")
    return train, held


def arm_tunewise(train: Path, out: Path, args: argparse.Namespace, precision: str) -> dict:
    from tunewise.project import Project
    from tunewise.train import TrainConfig, run

    config = TrainConfig(
        data=[str(train)], epochs=args.epochs, batch_size=args.batch_size, learning_rate=LR, lora_rank=RANK,
        lora_alpha=ALPHA, precision=precision, eval_every=10**9, checkpoint_every=10**9, progress=False,
    )  # fmt: skip
    started = time.perf_counter()
    result = run(config, Project(out))
    wall = time.perf_counter() - started
    chosen = json.loads((Path(result.run_dir) / "environment.json").read_text())["precision"]
    # train_s is the whole call: tokenizing, loading the model and measuring the precision count against it.
    return {"wall_s": wall, "train_s": wall, "loop_s": result.wall_s, "adapter": result.output,
            "precision": chosen["dtype"], "precision_reason": chosen["reason"]}  # fmt: skip


def arm_trl(train: Path, out: Path, args: argparse.Namespace, checkpointing: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunewise.models.loading import load_model, load_tokenizer

    rows = [json.loads(x) for x in train.read_text().splitlines() if x.strip()]
    # Prompt-completion format: TRL trains the completion (and its end-of-turn token) only.
    dataset = Dataset.from_list(
        [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    )
    tokenizer = load_tokenizer("embedded:smollm2-135m-instruct")
    model = load_model("embedded:smollm2-135m-instruct")
    config = SFTConfig(
        output_dir=str(out / "trl"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0.1, bf16=False,
        gradient_checkpointing=checkpointing, save_strategy="no", report_to="none", logging_steps=10, seed=0,
    )  # fmt: skip
    lora = LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    trainer.model.save_pretrained(out / "adapter")
    return {"wall_s": wall, "train_s": wall, "adapter": str(out / "adapter")}


def child(args: argparse.Namespace) -> None:
    """Run one arm in this process and print its record as JSON on the last line of stdout."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    train = Path(args.train)
    if args.child in ("tunewise", "tunewise-fp32"):
        # The matmul peak just before and just after the training call, in the same process: the bound must
        # be measured while the machine runs as it did for the arm (the same 2-vCPU VM measured 262-364 fp32
        # GFLOP/s over one day, so a peak taken at the end of a 30-minute bench can be off by a third).
        before = matmul_peaks()
        record = arm_tunewise(train, out, args, "auto" if args.child == "tunewise" else "float32")
        after = matmul_peaks()
        record["matmul_peak_gflops"] = {
            "before": before[record["precision"]],
            "after": after[record["precision"]],
        }
    else:
        record = arm_trl(train, out, args, checkpointing=args.child == "trl-a")
    record["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    print(json.dumps(record))


def matmul_peaks() -> dict[str, float]:
    """The matrix-multiply peak in GFLOP/s per precision, with all threads (`matmul_peak`)."""
    import torch

    return {
        name: matmul_peak(dtype) for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
    }


# A LoRA-forward-like shape (a 512-token micro-batch through an MLP projection) and a large square product.
PEAK_SHAPES = ((512, 576, 1536), (2048, 2048, 2048))


def matmul_peak(dtype) -> float:
    """The higher of the rates at `PEAK_SHAPES` (2 s each). On a shared 2-vCPU VM a single reading can come
    out far low (the AMD EPYC read 80 and 145 fp32 GFLOP/s at the first shape minutes apart), and a low peak
    flatters the fraction of the bound, so the higher reading counts."""
    from tunewise.models.loading import measure_matmul_gflops

    return max(measure_matmul_gflops(dtype, n=n, k=k, m=m, seconds=2.0) for n, k, m in PEAK_SHAPES)


def heldout_loss(adapter: str, heldout: Path) -> float:
    """Mean loss over the assistant tokens of the held-out set, the same way for every adapter."""
    from peft import PeftModel

    from tunewise.models.loading import load_model, load_tokenizer
    from tunewise.train.data import read_jsonl, tokenize_records
    from tunewise.train.loop import evaluate

    tokenizer = load_tokenizer("embedded:smollm2-135m-instruct")
    data = tokenize_records(tokenizer, read_jsonl(heldout))
    model = PeftModel.from_pretrained(load_model("embedded:smollm2-135m-instruct"), adapter)
    return evaluate(model, data, 1024, None)["eval_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--only", default="tunewise,tunewise-fp32,trl-a,trl-b")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for every arm (default: torch's); on a CPU shared "
        "with other busy processes use 1: oversubscribed OpenMP threads can run 10x slower"
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    from tunewise.models.loading import load_tokenizer
    from tunewise.train.data import read_jsonl, tokenize_records

    work = Path(tempfile.mkdtemp(prefix="tunewise-bench-"))
    train, held = write_data(work, args.examples, args.heldout)
    tokenizer = load_tokenizer("embedded:smollm2-135m-instruct")
    data = tokenize_records(tokenizer, read_jsonl(train))
    real_tokens = data.n_tokens * args.epochs  # every arm sees the same chat-templated tokens
    print(f"data: {len(data.examples)} examples, {data.n_tokens} tokens ({data.n_trained} trained) per epoch; "
          f"lengths {min(map(len, data.examples))}..{max(map(len, data.examples))}", file=sys.stderr)  # fmt: skip

    results: dict[str, dict] = {}
    for arm in args.only.split(","):
        print(f"running {arm} ...", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", arm, "--train", str(train), "--out", str(work / arm),
             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
            capture_output=True, text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            results[arm] = {"status": "failed", "error": proc.stderr.strip().splitlines()[-1:]}
            continue
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        record["tokens_per_s"] = real_tokens / record["train_s"]
        if args.threads:
            torch.set_num_threads(args.threads)
        record["heldout_loss"] = heldout_loss(record["adapter"], held)
        record["status"] = "succeeded"
        results[arm] = record

    # Compute bound: 4N FLOPs per token (N = base parameters) at the matmul peak of the precision the arm
    # computed in, the higher of the two measured around its training call (the stricter bound).
    n_params = 134_515_008
    summary: dict = {"arms": results}
    for name in ("tunewise", "tunewise-fp32"):
        tw = results.get(name, {})
        if tw.get("status") != "succeeded":
            continue
        tw["bound_tokens_per_s"] = max(tw["matmul_peak_gflops"].values()) * 1e9 / (4 * n_params)
        summary[f"{name}_fraction_of_bound"] = tw["tokens_per_s"] / tw["bound_tokens_per_s"]
        # The training loop alone (what an MFU figure usually counts), for scale; the target is judged on the
        # whole call above, which also pays for tokenizing, loading the model and writing the run.
        tw["loop_tokens_per_s"] = real_tokens / tw["loop_s"]
        summary[f"{name}_loop_fraction_of_bound"] = tw["loop_tokens_per_s"] / tw["bound_tokens_per_s"]
        for arm in ("trl-a", "trl-b"):
            if results.get(arm, {}).get("status") == "succeeded":
                summary[f"{name}_speedup_vs_{arm}"] = results[arm]["train_s"] / tw["train_s"]

    print(f"{'arm':14} {'precision':10} {'train s':>9} {'tokens/s':>9} {'peak GB':>8} {'held-out loss':>14}")
    for arm, r in results.items():
        if r.get("status") != "succeeded":
            print(f"{arm:14} failed: {r.get('error')}")
            continue
        print(
            f"{arm:14} {r.get('precision', 'float32'):10} {r['train_s']:9.1f} {r['tokens_per_s']:9.1f} "
            f"{r['peak_rss_gb']:8.2f} {r['heldout_loss']:14.4f}"
        )
    for name in ("tunewise", "tunewise-fp32"):
        if name in results and results[name].get("status") == "succeeded":
            print(f"{name} precision: {results[name]['precision_reason']}")
    for key, value in summary.items():
        if "speedup" in key or "fraction" in key:
            print(f"{key}: {value:.2f}")
    for name in ("tunewise", "tunewise-fp32"):
        if results.get(name, {}).get("status") == "succeeded":
            r = results[name]
            peak = r["matmul_peak_gflops"]
            print(f"{name}: {r['precision']} matmul peak {peak['before']:.0f} GFLOP/s before its run, "
                  f"{peak['after']:.0f} after -> bound {r['bound_tokens_per_s']:.0f} tokens/s "
                  f"(4 x {n_params:,} FLOPs per token at the higher)")  # fmt: skip
            print(f"{name}: the training loop alone took {r['loop_s']:.1f} of {r['train_s']:.1f} s: "
                  f"{r['loop_tokens_per_s']:.1f} tokens/s, {r['loop_tokens_per_s'] / r['bound_tokens_per_s']:.0%} "
                  "of the bound (the rest: tokenizing, loading the model, measuring the precision, writing the run)")  # fmt: skip
    # A target whose arms did not run (--only) is not judged: neither met nor missed.
    checks = [
        ("tunewise >= 2.5x trl-a", "tunewise_speedup_vs_trl-a", 2.5),
        ("tunewise >= 2x trl-b", "tunewise_speedup_vs_trl-b", 2.0),
        ("tunewise-fp32 >= 60% of the fp32 bound", "tunewise-fp32_fraction_of_bound", 0.6),
    ]
    targets = [(label, summary[key] >= bar) for label, key, bar in checks if key in summary]
    for name in ("tunewise", "tunewise-fp32"):
        r = results.get(name, {})
        if r.get("status") == "succeeded":
            targets.append((f"{name} peak RSS < 2 GB", r["peak_rss_gb"] < 2.0))
            others = [
                results[a]["heldout_loss"]
                for a in ("trl-a", "trl-b")
                if results.get(a, {}).get("status") == "succeeded"
            ]
            if others:
                targets.append((f"{name} held-out loss <= TRL's", r["heldout_loss"] <= min(others) + 1e-3))
    for label, met in targets:
        print(f"target {label}: {'met' if met else 'MISSED'}")
    summary["targets"] = {label: met for label, met in targets}
    print(
        f"threads {torch.get_num_threads()}; {args.examples} examples, {args.epochs} epoch(s), batch {args.batch_size}"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))
    if not all(met for _, met in targets):
        sys.exit(1)


if __name__ == "__main__":
    main()
