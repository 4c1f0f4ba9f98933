"""Where an fp32 LoRA step's distance to the compute bound comes from: one worker alone against two at once.

    .venv/bin/python bench/worker_scaling.py [--examples 12] [--repeats 3] [--json out.json]

`bench/train_throughput.py` measures the whole run against the matrix-multiply peak of all cores. This script
takes that figure apart on the same data (the first N rows of ../shared/datasets/bitext_reply) and the same
LoRA (rank 8, alpha 16, all linear layers, fp32), timing the gradient of all N examples, one example per
micro-batch (256-token micro-batches), as a training step computes it (`MicroBatchWorkers.gradient`):

- one worker alone: one process, one thread, the other core idle; against the one-thread peak;
- two workers, one process: what `tunewise train` does in fp32 (two threads, one micro-batch each);
- two processes at once, one thread each: the same two cores busy, but nothing shared inside a process;
- two workers, heap trimmed: as the second, with the heap handed back to the OS before a pass, as every training
  step's end did until training trimmed only when resident memory grows (train/heap.py). Passes after a trim
  alternate with passes after none in the same process, and the trim's cost is their difference.

Each arm runs in fresh subprocesses, best of `--repeats` passes (of each kind). Each prints tokens per second,
and its fraction of the compute bound (4 x parameters FLOPs per token, as in train_throughput.py) against the
peak measured in the same process for its thread count.
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

ARMS = {
    # name: (processes, workers per process, trim the heap between passes)
    "one worker alone": (1, 1, False),
    "two workers, one process": (1, 2, False),
    "two processes": (2, 1, False),
    "two workers, heap trimmed": (1, 2, True),
}


def measure(data: Path, workers: int, trim: bool, repeats: int, barrier: Path | None) -> dict:
    """Time the gradient of every example in `data`, in this process, with `workers` threads."""
    import torch
    from train_throughput import matmul_peak  # bench/ is this script's folder, first on sys.path

    from tunewise.train import loop
    from tunewise.train.config import TrainConfig, auto_hyperparameters
    from tunewise.train.data import micro_batches
    from tunewise.train.heap import release_free_heap
    from tunewise.train.model import build_model, loss_of, trainable_params
    from tunewise.train.workers import MicroBatchWorkers

    torch.set_num_threads(workers)
    config = TrainConfig(
        data=[str(data)], lora_rank=8, lora_alpha=16.0, lora_dropout=0.0, precision="float32",
        micro_batch_tokens=256,
    )  # fmt: skip
    prepared = loop.prepare(config)
    examples = prepared.train.examples
    resolved = auto_hyperparameters(
        config, len(examples), loop.param_count_hint(config), 1000, prepared.context_length
    )
    model = build_model(config, resolved, prepared.tokenizer)
    model.train()
    params = trainable_params(model)
    for p in params:
        p.grad = torch.zeros_like(p)
    lengths = [len(e) for e in examples]
    groups = micro_batches(lengths, list(range(len(examples))), 256)
    step_loss = loss_of(model, examples, None)
    pool = MicroBatchWorkers()
    pool.configure(workers, workers)
    pool.gradient(step_loss, groups[:2], params, 1.0)  # warm up: kernels, heap
    if barrier is not None:  # the two processes start timing together
        barrier.mkdir(exist_ok=True)
        (barrier / str(os.getpid())).touch()
        while len(list(barrier.iterdir())) < 2:
            time.sleep(0.01)
    # With `trim`, passes after a trim and passes after none alternate (trim, keep, keep, trim, ...), so that the
    # machine's drift over the passes falls on both alike; the record is the trimmed passes', with the others'
    # under "kept".
    order = [True, False, False, True] if trim else [False]
    passes: dict[bool, list[tuple[float, int, float]]] = {True: [], False: []}
    for i in range(repeats * len(order)):
        trimmed = order[i % len(order)]
        if trimmed:
            release_free_heap()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        pool.gradient(step_loss, groups, params, 1.0)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        passes[trimmed].append((seconds, after.ru_minflt - usage.ru_minflt, after.ru_stime - usage.ru_stime))
    pool.close()
    peak = matmul_peak(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())

    def summary(runs: list[tuple[float, int, float]]) -> dict:
        return {"seconds": min(r[0] for r in runs), "page_faults": sum(r[1] for r in runs) / len(runs),
                "system_s": sum(r[2] for r in runs) / len(runs)}  # fmt: skip

    record = {"tokens": sum(lengths), "peak_gflops": peak, "params": n_params, **summary(passes[trim])}
    if trim:
        record["kept"] = summary(passes[False])
    return record


def run_arm(name: str, data: Path, repeats: int, scratch: Path) -> dict:
    processes, workers, trim = ARMS[name]
    barrier = scratch / f"barrier-{workers}-{processes}-{time.monotonic_ns()}" if processes > 1 else None
    cmd = [sys.executable, __file__, "--child", str(data), "--workers", str(workers), "--repeats", str(repeats)]  # fmt: skip
    cmd += ["--trim-heap"] if trim else []
    cmd += ["--barrier", str(barrier)] if barrier else []
    children = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    records = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            sys.exit(f"{name}: a measuring process failed (exit {child.returncode})")
        records.append(json.loads(out.strip().splitlines()[-1]))
    tokens = sum(r["tokens"] for r in records)
    # Processes run side by side: together they did all their tokens in the time of the slower one.
    seconds = max(r["seconds"] for r in records)
    # The bound is for the cores the arm used: the peak at its thread count, times its processes.
    peak = max(r["peak_gflops"] for r in records) * processes
    tokens_per_s = tokens / seconds
    bound = peak * 1e9 / (4 * records[0]["params"])
    extra = {"kept_tokens_per_s": tokens / records[0]["kept"]["seconds"]} if trim else {}
    return {
        **extra, "cores": processes * workers, "tokens_per_s": tokens_per_s, "per_core": tokens_per_s / (processes * workers),
        "peak_gflops": peak, "fraction_of_bound": tokens_per_s / bound,
        # Per pass, all processes together: the kernel's share of the time (page faults, returned memory).
        "page_faults": sum(r["page_faults"] for r in records), "system_s": sum(r["system_s"] for r in records),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--trim-heap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--barrier", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        barrier = Path(args.barrier) if args.barrier else None
        print(json.dumps(measure(Path(args.child), args.workers, args.trim_heap, args.repeats, barrier)))
        return
    if (os.cpu_count() or 1) < 2:
        sys.exit("this comparison needs two cores")
    from train_throughput import write_data  # bench/ is this script's folder, first on sys.path

    results = {}
    with tempfile.TemporaryDirectory(prefix="tunewise-scaling-") as tmp:
        scratch = Path(tmp)
        data, _ = write_data(scratch, args.examples, 0)  # the training bench's data, no held-out slice
        print(f"{args.examples} bitext_reply examples, fp32 LoRA rank 8, best of {args.repeats} passes")
        print(
            f"{'arm':28} {'cores':>5} {'tokens/s':>9} {'per core':>9} {'peak GF/s':>10} {'of bound':>9} {'faults':>8} {'sys s':>6}"
        )
        for name in ARMS:
            r = results[name] = run_arm(name, data, args.repeats, scratch)
            print(
                f"{name:28} {r['cores']:5d} {r['tokens_per_s']:9.1f} {r['per_core']:9.1f} "
                f"{r['peak_gflops']:10.0f} {r['fraction_of_bound']:9.1%} {r['page_faults']:8.0f} {r['system_s']:6.2f}"
            )
    alone = results["one worker alone"]["per_core"]
    for name in ("two workers, one process", "two processes"):
        print(f"{name}: {results[name]['per_core'] / alone:.3f} of one worker alone, per core")
    trimmed = results["two workers, heap trimmed"]
    print(f"a heap trim before a pass costs {1 - trimmed['tokens_per_s'] / trimmed['kept_tokens_per_s']:.1%} of it "
          f"({trimmed['tokens_per_s']:.1f} against {trimmed['kept_tokens_per_s']:.1f} tokens/s, passes alternating "
          "in one process)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
