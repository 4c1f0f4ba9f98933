"""Local engine vs a plain per-example `model.generate` loop, on the same prompts with the embedded model.

    .venv/bin/python bench/generation.py [--n 100] [--max-new-tokens 32] [--batch-size 32] [--threads T]
                                         [--json out.json]

Prompts: the first N rows of ../shared/datasets/banking77/test-small.jsonl, each as a chat with the
instruction SOURCE.md suggests for prompted baselines as the system prompt (so all prompts share that prefix,
as every prompt of an arm does). Both sides get the same token ids, greedy decoding, the same stop tokens and
the same max_new_tokens, in fp32 on the CPU.

Prints generated tokens/s of each side (completion tokens, end-of-turn token included, over wall time), the
ratio (issue 4's target: >= 4x) and whether every greedy output is identical. Narration on stderr, results on
stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="number of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--threads", type=int, help="torch threads for both sides (default: torch's choice, one per core)"
    )
    args = parser.parse_args()

    if not DATASET.is_dir():
        print(f"error: {DATASET} is absent: the public datasets live in ../shared beside the repository",
              file=sys.stderr)  # fmt: skip
        return 1
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.evaluate.engine import LocalEngine
    from tunewise.models.embedded import model_dir

    if args.threads:
        # On a shared or busy machine, fewer threads than cores avoids OpenMP spin-waiting against other
        # processes, which slows small per-token matmuls far more than it slows big batched ones.
        torch.set_num_threads(args.threads)

    labels = json.loads((DATASET / "labels-small.json").read_text())
    system = (
        "Classify the customer's banking message into exactly one intent from this list: "
        f"{', '.join(labels)}. Reply with the intent name only."
    )
    rows = [
        json.loads(line) for line in (DATASET / "test-small.jsonl").read_text().splitlines() if line.strip()
    ]
    chats = [[{"role": "system", "content": system}, r["messages"][0]] for r in rows[: args.n]]

    folder = model_dir()
    print(f"loading {folder} (fp32, {torch.get_num_threads()} threads)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    engine = LocalEngine(model, tokenizer, max_batch_size=args.batch_size)
    ids = [engine.encode(c) for c in chats]
    stop = sorted(engine.stop_token_ids)

    def per_example(prompt: list[int], max_new: int) -> list[int]:
        x = torch.tensor([prompt])
        with torch.inference_mode():
            out = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=engine.pad_token_id,
            )
        return out[0, len(prompt) :].tolist()

    # Warm both paths up (first calls pay one-off kernel set-up), outside the timed runs.
    per_example(ids[0], 2)
    engine.generate(chats[:2], max_new_tokens=2)

    print(f"per-example model.generate on {len(ids)} prompts...", file=sys.stderr)
    start = time.perf_counter()
    loop_out = [per_example(x, args.max_new_tokens) for x in ids]
    loop_s = time.perf_counter() - start

    print("local engine (batched, shared prefix)...", file=sys.stderr)
    start = time.perf_counter()
    gens = engine.generate(chats, max_new_tokens=args.max_new_tokens)
    engine_s = time.perf_counter() - start

    loop_tokens = sum(len(x) for x in loop_out)
    engine_tokens = sum(g.completion_tokens for g in gens)
    mismatches = [i for i, (a, g) in enumerate(zip(loop_out, gens, strict=True)) if a != list(g.token_ids)]
    prefix_len = engine._shared_prefix(ids)[0]
    result = {
        "prompts": len(ids),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "mean_prompt_tokens": sum(map(len, ids)) / len(ids),
        "shared_prefix_tokens": prefix_len,
        "per_example": {"seconds": loop_s, "tokens": loop_tokens, "tokens_per_s": loop_tokens / loop_s},
        "engine": {"seconds": engine_s, "tokens": engine_tokens, "tokens_per_s": engine_tokens / engine_s},
        "ratio": (engine_tokens / engine_s) / (loop_tokens / loop_s),
        "identical": not mismatches,
        "mismatched_prompts": mismatches,
        "finish_reasons": {r: sum(g.finish_reason == r for g in gens) for r in ("stop", "length")},
        "sample_outputs": [g.text for g in gens[:5]],
    }
    print(f"prompts: {len(ids)}, mean prompt tokens {result['mean_prompt_tokens']:.1f} "
          f"(shared prefix {prefix_len}), max_new_tokens {args.max_new_tokens}")  # fmt: skip
    print(
        f"per-example generate: {loop_tokens} tokens in {loop_s:.1f} s = {loop_tokens / loop_s:.1f} tokens/s"
    )
    print(
        f"local engine:         {engine_tokens} tokens in {engine_s:.1f} s = {engine_tokens / engine_s:.1f} tokens/s"
    )
    print(f"ratio: {result['ratio']:.2f}x (target >= 4x)")
    print(
        f"greedy outputs identical: {not mismatches}"
        + (f" (differ on prompts {mismatches})" if mismatches else "")
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
