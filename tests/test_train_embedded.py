"""A short real run: LoRA on the embedded SmolLM2-135M with 40 SST-2 examples beats the base model on held-out
prompts by exact label match. Slower (about two minutes on 2 cores); CI runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.project import Project

# The instruction SOURCE.md suggests for prompted baselines; base and fine-tuned model get the same prompt.
INSTRUCTION = "Is the sentiment of this movie-review sentence positive or negative? Reply with one word: positive or negative."


def balanced(path: Path, per_label: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["messages"][-1]["content"], []).append(row)
    picked = [r for label in sorted(by_label) for r in by_label[label][:per_label]]
    for row in picked:
        row["messages"].insert(0, {"role": "system", "content": INSTRUCTION})
    return picked


def exact_matches(model, tokenizer, rows: list[dict]) -> int:
    """Greedy answers (batched, left-padded) that equal the label exactly after stripping whitespace."""
    import torch

    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        for r in rows
    ]
    model.eval()
    correct = 0
    for start in range(0, len(prompts), 20):
        batch = tokenizer(
            prompts[start : start + 20], return_tensors="pt", padding=True, add_special_tokens=False
        )
        with torch.no_grad():
            out = model.generate(
                **batch, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += sum(
            a.strip() == r["messages"][-1]["content"]
            for a, r in zip(answers, rows[start : start + 20], strict=True)
        )
    return correct


@pytest.mark.embedded
def test_lora_on_sst2_beats_the_base_model(tmp_path, shared_datasets):
    import torch
    from peft import PeftModel

    from tunewise.models.loading import load_model, load_tokenizer
    from tunewise.train import TrainConfig, run

    train_rows = balanced(shared_datasets / "sst2" / "train-small.jsonl", 20)
    test_rows = balanced(shared_datasets / "sst2" / "test-small.jsonl", 20)
    train_path, test_path = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    test_path.write_text("".join(json.dumps(r) + "\n" for r in test_rows))

    # Everything auto: 40 examples -> 3 epochs, batch 4, lr 2e-4, rank 8 (30 steps).
    # float32 explicitly: the precision rule has its own tests, and this test's duration should not depend on
    # a measurement taken while other processes share the CPU.
    # One thread: on a CPU shared with other busy processes, two OpenMP threads per op were measured 10x
    # slower than one (oversubscribed barriers); alone on 2 cores, one thread costs well under 2x.
    config = TrainConfig(
        data=[str(train_path)],
        eval_data=[str(test_path)],
        eval_every=1000,
        precision="float32",
        threads=1,
        progress=False,
    )
    result = run(config, Project(tmp_path / "proj"))
    assert result.status == "succeeded" and result.steps == 30
    assert result.eval_after["eval_loss"] < result.eval_before["eval_loss"]

    tokenizer = load_tokenizer("embedded:smollm2-135m-instruct")
    base = load_model("embedded:smollm2-135m-instruct")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base_correct = exact_matches(base, tokenizer, test_rows)
        tuned = PeftModel.from_pretrained(base, result.output)
        tuned_correct = exact_matches(tuned, tokenizer, test_rows)
    finally:
        torch.set_num_threads(threads)
    print(f"exact label: base {base_correct}/40, fine-tuned {tuned_correct}/40")
    assert tuned_correct > base_correct
