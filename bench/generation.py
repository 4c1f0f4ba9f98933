"""The local engine vs transformers' own batched `model.generate`, on the demo's prompt shapes, embedded model.

    .venv/bin/python bench/generation.py [--n 16] [--reps 2] [--threads T] [--json out.json]
                          [--cases zero-shot,few-shot,samples,constrained,short,no-system] [--levers | --arms]

Both sides answer the same prompts through the same interface: `LocalEngine.generate` (evaluate/engine.py:
shared-prefix KV cache, in-place cache, its own decode loop) and `GenerateEngine.generate` (evaluate/batched.py:
`model.generate` over left-padded batches of similar length, the grammar and the JSON loop guard as logits
processors). Prompts come from the demo data generator (no dataset needed): the demo spec's system prompt and
its held-out tickets, built by the same prompters evaluation uses, with `max_new_tokens` chosen as the demo's
`auto` does. The first four cases are those a demo evaluation runs; all run in fp32 on the CPU:

- zero-shot:   system prompt + ticket, greedy, JSON loop guard on (the demo's contract is JSON);
- few-shot:    system prompt + 3 worked examples (a long shared prefix) + ticket, greedy, guard on;
- samples:     the zero-shot prompts, 3 seeded samples each at temperature 0.7 (the consistency samples), guard on;
- constrained: the few-shot prompts decoded under the contract's JSON Schema (few-shot+constrained), greedy;
- short:       a one-sentence system prompt + ticket, greedy, no guard (little to share);
- no-system:   the ticket alone, greedy, guard on: the fine-tuned arm's prompts (nothing to share).
The last two are run only when named in --cases.

Each case runs the two engines interleaved in one process, A B then B A (`--reps` rounds), so a machine shared
with other work slows both alike. Prints per case each side's times, completion tokens/s (of its best time) and
whether the greedy outputs are identical token for token (samples come from different random streams, so they
are compared by speed only), each round's time ratio, and a verdict from the best times: "engine faster by X%"
or "engine slower by X%" (X: how much longer the slower side took, relative to the faster one). On a machine
shared with other work, `--threads 1` keeps the figures steady: two OpenMP threads per process spin-wait
against the other work, and one run can then take many times as long as the next.
Narration on stderr, results on stdout.

With `--levers` (and `--cases` naming zero-shot, few-shot or both), it measures instead the engine's three levers on one prompted arm's evaluation workload (the
greedy answer and 3 samples at temperature 0.7 per prompt, JSON loop guard on), for the zero-shot and the
few-shot prompts: each lever alone, all together, the engine as it was before the levers (shared prefix and
duplicate prompts merged within a static batch, greedy and samples in two calls), transformers' batched
`generate` (greedy, then the samples), and the compute bound: the time the forward passes alone would take
with every prompt prefilled once and every decode step full (`max_batch_size` rows), measured on the model
itself (a prefill forward of the prompts, and a decode forward of a full batch at the mean context length
times the decode steps the completion tokens need). The levers:

- prefix:      the prefix shared by all prompts (system prompt, few-shot block) computed once;
- one-prefill: each prompt prefilled once for its greedy row and its samples (`generate_with_samples`);
- continuous:  a finished row's slot refilled at once with the next prompt (evaluate/continuous.py).

Greedy outputs are compared token for token with the engine before the levers.

With `--arms` it measures the baseline stage's generated arms instead: the zero-shot and few-shot prompts, each
free (JSON loop guard on) and constrained to the demo contract's JSON Schema, greedy + 3 samples at temperature
0.7 per prompt, answered three ways: "before" (static batches, greedy and samples in two calls, a call per arm),
"per arm" (the levers, a `generate_with_samples` call per arm) and "together" (`generate_arms`: the arms that
share their prefix in one continuously refilled batch, each distinct prompt prefilled once, up to
`arm_rows` rows). Greedy outputs are compared token for token with "before", samples with "per arm".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHORT_SYSTEM = (
    "Triage the support ticket: reply with one line of JSON (category, priority, reference, reply)."
)
CASES = ("zero-shot", "few-shot", "samples", "constrained", "short", "no-system")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="held-out demo tickets per case")
    parser.add_argument("--reps", type=int, default=2, help="interleaved rounds (A B per round)")
    parser.add_argument(
        "--cases", default=",".join(CASES[:4]), help=f"comma-separated, of {', '.join(CASES)}"
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="rows per batch, both sides")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--levers", action="store_true", help="measure each engine lever (see above)")
    parser.add_argument(
        "--arms", action="store_true", help="measure the prompted arms answered together (see above)"
    )
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        print(f"error: unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}", file=sys.stderr)
        return 1

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.data.demo import DEMO_SPEC_YAML, demo_examples
    from tunewise.data.formats import completion
    from tunewise.evaluate.arms import build_prompters
    from tunewise.evaluate.batched import GenerateEngine
    from tunewise.evaluate.constrain import constraint_for_contract
    from tunewise.evaluate.engine import LocalEngine
    from tunewise.evaluate.run import auto_max_new_tokens
    from tunewise.models.embedded import model_dir
    from tunewise.spec import parse_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = model_dir()
    print(f"loading {folder} (fp32, {torch.get_num_threads()} threads)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    # The demo project's split: 300 training tickets (the few-shot examples come from them), then held-out ones.
    spec = parse_spec(DEMO_SPEC_YAML)
    examples = demo_examples(300 + args.n, seed=0)
    train, held_out = examples[:300], examples[300:]

    def count_tokens(messages: list[dict]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompters = build_prompters(spec, train, count_tokens, seed=0)
    max_new = auto_max_new_tokens(
        [completion(ex["messages"]) or "" for ex in train],
        lambda xs: [len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in xs],
    )
    zero = [prompters["zero-shot"].messages(ex) for ex in held_out]
    short = [[{"role": "system", "content": SHORT_SYSTEM}, *p[1:]] for p in zero]
    bare = [p[1:] for p in zero]
    few = [prompters["few-shot"].messages(ex) for ex in held_out]
    constraint = constraint_for_contract(spec.contract)
    engines = {
        # Batches capped by rows only, on both sides: a token cap counts the whole prompt for generate but only
        # the unshared part for the engine, and would cut generate's batches smaller.
        "engine": LocalEngine(model, tokenizer, max_batch_size=args.max_batch_size, max_batch_tokens=1 << 30),
        "generate": GenerateEngine(
            model, tokenizer, max_batch_size=args.max_batch_size, max_batch_tokens=1 << 30
        ),
    }

    def run_case(case: str, engine: LocalEngine) -> list:
        if case == "zero-shot":
            return engine.generate(zero, max_new_tokens=max_new, json_guard=True)
        if case == "few-shot":
            return engine.generate(few, max_new_tokens=max_new, json_guard=True)
        if case == "short":
            return engine.generate(short, max_new_tokens=max_new)
        if case == "no-system":
            return engine.generate(bare, max_new_tokens=max_new, json_guard=True)
        if case == "samples":
            rows = engine.sample(zero, 3, temperature=0.7, seed=0, max_new_tokens=max_new, json_guard=True)
            return [g for row in rows for g in row]
        return engine.generate(few, max_new_tokens=max_new, constraint=constraint)

    # Warm both paths up (one-off kernel set-up, grammar compiling) outside the timed runs.
    for engine in engines.values():
        engine.generate(zero[:2], max_new_tokens=2, constraint=constraint)

    if args.arms:
        return measure_arms(model, tokenizer, zero, few, constraint, max_new, args.reps, args.json)
    if args.levers:
        shapes = {"zero-shot": zero, "few-shot": few}
        named = [c for c in cases if c in shapes] if args.cases != ",".join(CASES[:4]) else list(shapes)
        return measure_levers(
            model, tokenizer, {c: shapes[c] for c in named}, max_new, args.max_batch_size, args.reps,
            args.json,
        )  # fmt: skip
    shapes = {"zero-shot": zero, "few-shot": few, "short": short, "no-system": bare}
    encoder = engines["engine"]
    print(
        f"# {len(held_out)} demo tickets per case, max_new_tokens {max_new} (the demo's auto), fp32, "
        f"{torch.get_num_threads()} threads, batches of at most {args.max_batch_size} rows (no token cap) on both sides; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(
        "# mean prompt tokens (shared prefix): "
        + ", ".join(
            f"{name} {sum(len(encoder.encode(p)) for p in ps) / len(ps):.0f} "
            f"({len(os.path.commonprefix([encoder.encode(p) for p in ps]))})"
            for name, ps in shapes.items()
        )
    )
    print(
        f"# engines interleaved in one process, A B then B A ({args.reps} rounds): this machine may be shared "
        "with other work (load average at start: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + "), "
        "which then slows both sides alike; verdict from each side's best time"
    )
    results: dict[str, dict] = {}
    for case in cases:
        times: dict[str, list[float]] = {name: [] for name in engines}
        outputs: dict[str, list] = {}
        for rep in range(args.reps):
            # A B, then B A: a load that rises or falls during the case weighs on both sides alike.
            for name in list(engines) if rep % 2 == 0 else list(engines)[::-1]:
                print(f"{case}: {name}, round {rep + 1}/{args.reps}...", file=sys.stderr)
                start = time.perf_counter()
                outputs[name] = run_case(case, engines[name])
                times[name].append(time.perf_counter() - start)
        greedy = case != "samples"
        mismatched = (
            [
                i
                for i, (a, b) in enumerate(zip(outputs["engine"], outputs["generate"], strict=True))
                if a.token_ids != b.token_ids
            ]
            if greedy
            else None
        )
        row: dict = {"case": case, "rows": len(outputs["engine"])}
        for name in engines:
            tokens = sum(g.completion_tokens for g in outputs[name])
            best = min(times[name])
            row[name] = {
                "seconds": times[name],
                "best_s": best,
                "tokens": tokens,
                "tokens_per_s": tokens / best,
                "rewinds": sum(g.rewinds for g in outputs[name]),
                "finish_length": sum(g.finish_reason == "length" for g in outputs[name]),
            }
        # The verdict compares each side's best time: load from other work only ever adds time, so the fastest
        # run is the closest to the machine's own speed. Each round's ratio is printed too.
        ratio = row["engine"]["best_s"] / row["generate"]["best_s"]
        row["engine_over_generate"] = ratio
        row["verdict"] = (
            f"engine faster by {100 * (1 / ratio - 1):.0f}%"
            if ratio <= 1
            else f"engine slower by {100 * (ratio - 1):.0f}%"
        )
        row["identical"] = None if mismatched is None else not mismatched
        row["mismatched_rows"] = mismatched
        results[case] = row
        same = (
            "n/a (sampled)" if mismatched is None else ("yes" if not mismatched else f"NO, rows {mismatched}")
        )
        print(f"{case}: {row['rows']} rows")
        for name in engines:
            r = row[name]
            runs = ", ".join(f"{s:.1f}" for s in r["seconds"])
            print(f"  {name:9s} best {r['best_s']:6.1f} s (runs {runs})  {r['tokens']} tokens = "
                  f"{r['tokens_per_s']:.1f} tokens/s, {r['rewinds']} rewinds, {r['finish_length']} cut at the limit")  # fmt: skip
        print(f"  identical greedy outputs: {same}")
        print(
            "  engine time / generate time per round: "
            + ", ".join(f"{a / b:.2f}" for a, b in zip(times["engine"], times["generate"], strict=True))
        )
        print(f"  verdict: {row['verdict']}")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(
            json.dumps({"max_new_tokens": max_new, "n": len(held_out), "cases": results}, indent=2)
        )
    return 0


# Each configuration: (shared prefix, merge duplicate prompts in a batch, one prefill for greedy + samples,
# continuous batching). "before" is the engine as it was before the last two levers.
LEVERS = {
    "none": (False, False, False, False),
    "prefix": (True, False, False, False),
    "one-prefill": (False, True, True, False),
    "continuous": (False, False, False, True),
    "before": (True, True, False, False),
    "all": (True, True, True, True),
}
SAMPLES, TEMPERATURE = 3, 0.7


def measure_levers(
    model, tokenizer, shapes: dict, max_new: int, batch: int, reps: int, out: Path | None
) -> int:
    """Each lever alone and together, transformers' batched generate, and the compute bound (module docstring)."""
    from tunewise.evaluate.batched import GenerateEngine
    from tunewise.evaluate.engine import LocalEngine

    def engine_for(levers: tuple) -> LocalEngine:
        prefix, merge, one, continuous = levers
        engine = LocalEngine(
            model, tokenizer, max_batch_size=batch, max_batch_tokens=1 << 30,
            min_shared_prefix=16 if prefix else 1 << 30,
        )  # fmt: skip
        engine._merge_duplicates, engine.one_prefill, engine.continuous = merge, one, continuous
        return engine

    engines = {name: engine_for(levers) for name, levers in LEVERS.items()}
    reference = GenerateEngine(model, tokenizer, max_batch_size=batch, max_batch_tokens=1 << 30)

    def run(name: str, prompts: list) -> tuple[list, list]:
        if name == "generate":
            greedy = reference.generate(prompts, max_new_tokens=max_new, json_guard=True)
            drawn = reference.sample(
                prompts, SAMPLES, temperature=TEMPERATURE, max_new_tokens=max_new, json_guard=True
            )
            return greedy, drawn
        return engines[name].generate_with_samples(
            prompts, SAMPLES, temperature=TEMPERATURE, max_new_tokens=max_new, json_guard=True
        )

    print(
        f"# levers: greedy + {SAMPLES} samples (temperature {TEMPERATURE}) per prompt, JSON loop guard on, "
        f"max_new_tokens {max_new}, batches of at most {batch} rows, fp32, {torch_threads()} threads; "
        "load average at start: " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    results: dict = {}
    for shape, prompts in shapes.items():
        names = [*LEVERS, "generate"]
        times: dict[str, list[float]] = {n: [] for n in names}
        outputs: dict[str, tuple] = {}
        for rep in range(reps):
            for name in names if rep % 2 == 0 else names[::-1]:
                print(f"{shape}: {name}, round {rep + 1}/{reps}...", file=sys.stderr)
                start = time.perf_counter()
                outputs[name] = run(name, prompts)
                times[name].append(time.perf_counter() - start)
        bound = compute_bound(model, engines["all"], prompts, outputs["all"], batch)
        rows = {}
        print(f"{shape}: {len(prompts)} prompts x (1 greedy + {SAMPLES} samples)")
        for name in names:
            greedy, drawn = outputs[name]
            tokens = sum(g.completion_tokens for g in greedy) + sum(
                g.completion_tokens for r in drawn for g in r
            )
            best = min(times[name])
            same = [a.token_ids == b.token_ids for a, b in zip(greedy, outputs["before"][0], strict=True)]
            rows[name] = {
                "seconds": times[name], "best_s": best, "tokens": tokens, "tokens_per_s": tokens / best,
                "greedy_identical_to_before": sum(same), "rows": len(same),
            }  # fmt: skip
            print(
                f"  {name:12s} best {best:6.1f} s (runs {', '.join(f'{t:.1f}' for t in times[name])})  "
                f"{tokens} tokens = {tokens / best:6.1f} tokens/s  greedy = before's: {sum(same)}/{len(same)}  "
                f"x{min(times['before']) / best:.2f} vs before, x{min(times['generate']) / best:.2f} vs generate"
            )
        print(
            f"  {'bound':12s} {bound['seconds']:6.1f} s (prefill {bound['prefill_s']:.1f} s + "
            f"{bound['decode_steps']} full decode steps x {1000 * bound['step_s']:.0f} ms)  "
            f"= {rows['all']['tokens'] / bound['seconds']:6.1f} tokens/s; all levers reach "
            f"{bound['seconds'] / rows['all']['best_s']:.0%} of it"
        )
        sys.stdout.flush()
        results[shape] = {"configs": rows, "bound": bound}
    if out:
        out.write_text(json.dumps({"max_new_tokens": max_new, "levers": results}, indent=2))
    return 0


def measure_arms(
    model, tokenizer, zero: list, few: list, constraint, max_new: int, reps: int, out: Path | None
) -> int:
    """The baseline stage's generated arms three ways (module docstring), interleaved `reps` rounds."""
    from tunewise.evaluate.engine import ArmRequest, LocalEngine

    arms = {
        "zero-shot": ArmRequest(zero, json_guard=True),
        "zero-shot+constrained": ArmRequest(zero, constraint=constraint),
        "few-shot": ArmRequest(few, json_guard=True),
        "few-shot+constrained": ArmRequest(few, constraint=constraint),
    }
    ways = {"before": (False, False, False), "per arm": (True, True, False), "together": (True, True, True)}

    def run(way: str) -> list:
        engine = LocalEngine(model, tokenizer)  # evaluation's engine, with its default limits
        engine.continuous, engine.one_prefill, engine.merge_arms = ways[way]
        return engine.generate_arms(
            list(arms.values()), SAMPLES, temperature=TEMPERATURE, seed=0, max_new_tokens=max_new
        )

    print(
        f"# arms: {', '.join(arms)}; {len(zero)} prompts each, greedy + {SAMPLES} samples (temperature "
        f"{TEMPERATURE}), max_new_tokens {max_new}, fp32, {torch_threads()} threads; load average at start: "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    times: dict[str, list[float]] = {way: [] for way in ways}
    outputs: dict[str, list] = {}
    for rep in range(reps):
        for way in list(ways) if rep % 2 == 0 else list(ways)[::-1]:
            print(f"arms: {way}, round {rep + 1}/{reps}...", file=sys.stderr)
            start = time.perf_counter()
            outputs[way] = run(way)
            times[way].append(time.perf_counter() - start)
    rows = {}
    for way in ways:
        greedy = [g for answers, _ in outputs[way] for g in answers]
        drawn = [g for _, samples in outputs[way] for row in samples for g in row]
        before = [g for answers, _ in outputs["before"] for g in answers]
        per_arm = [g for _, samples in outputs["per arm"] for row in samples for g in row]
        tokens = sum(g.completion_tokens for g in greedy + drawn)
        best = min(times[way])
        same = sum(a.token_ids == b.token_ids for a, b in zip(greedy, before, strict=True))
        same_samples = sum(a.token_ids == b.token_ids for a, b in zip(drawn, per_arm, strict=True))
        rows[way] = {
            "seconds": times[way], "best_s": best, "tokens": tokens, "tokens_per_s": tokens / best,
            "greedy_identical_to_before": same, "samples_identical_to_per_arm": same_samples,
            "greedy": len(greedy), "samples": len(drawn),
        }  # fmt: skip
        print(
            f"  {way:9s} best {best:6.1f} s (runs {', '.join(f'{t:.1f}' for t in times[way])})  {tokens} tokens "
            f"= {tokens / best:6.1f} tokens/s  greedy = before's: {same}/{len(greedy)}  samples = per arm's: "
            f"{same_samples}/{len(drawn)}  x{min(times['before']) / best:.2f} vs before"
        )
    if out:
        out.write_text(json.dumps({"max_new_tokens": max_new, "arms": rows}, indent=2))
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def compute_bound(model, engine, prompts: list, outputs: tuple, batch: int) -> dict:
    """Forward passes alone: every prompt prefilled once (the shared prefix once), then the completion tokens
    in full decode steps of `batch` rows (or of all the workload's rows, when fewer) at the mean context length;
    the best of 3 timings of each."""
    import torch

    greedy, drawn = outputs
    tokens = sum(g.completion_tokens for g in greedy) + sum(g.completion_tokens for r in drawn for g in r)
    batch = min(batch, len(greedy) + sum(len(r) for r in drawn))  # a full step: every row of the workload
    steps = -(-tokens // batch)
    with torch.inference_mode():
        prefill = min(_timed(lambda: engine.generate(prompts, max_new_tokens=1)) for _ in range(3))
        context = sum(g.prompt_tokens + g.completion_tokens / 2 for g in greedy) / len(greedy)
        cache = engine._new_cache(capacity=int(context) + 8)
        x = torch.randint(0, 1000, (batch, int(context)))
        model(input_ids=x, use_cache=True, **{engine._cache_arg: cache})
        one = torch.randint(0, 1000, (batch, 1))

        def step() -> None:
            model(input_ids=one, use_cache=True, **{engine._cache_arg: cache}, logits_to_keep=1)
            for layer in cache.layers:  # stay at the same context length
                layer.length -= 1
                layer._expose()

        step_s = min(_timed(step) for _ in range(5))
    return {
        "seconds": prefill + steps * step_s,
        "prefill_s": prefill,
        "decode_steps": steps,
        "step_s": step_s,
    }


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
