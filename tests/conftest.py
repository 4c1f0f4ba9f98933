"""Shared fixtures. Tests are offline and isolate every user folder: the cache is shared (converted models are
expensive), but each test's project lives in tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASETS = SHARED / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(
            f"../shared/datasets is absent ({DATASETS}): the public datasets live beside the repository"
        )
    return DATASETS


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the real CLI entry point in-process; returns (exit_code, stdout, stderr)."""

    def run(*args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        import sys

        from tunewise.cli import main

        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["tunewise", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="module")
def tiny():
    """A tiny random Llama with the real SmolLM2 tokenizer (generation tests); skips without the tokenizer."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunewise.errors import TunewiseError
    from tunewise.models.embedded import tokenizer_dir

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    except TunewiseError as exc:
        pytest.skip(f"the embedded SmolLM2 tokenizer is unavailable: {exc.message}")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        # A wide init makes the random model's greedy choices differ between prompts and steps (at the default
        # 0.02 it prints the same token forever, which would make "outputs are equal" a weak check).
        initializer_range=1.0,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


TICKET_TEXTS = {
    "billing": "my invoice shows a wrong charge",
    "delivery": "the parcel did not arrive yet",
    "refund": "please return my money",
    "other": "how do I change my avatar",
}


def tiny_label_project(root: Path, examples: int, samples: int, evaluation: str = ""):
    """A scaffolded project on the tiny random model: `examples` labelled tickets (seeded), the zero-shot and
    fine-tuned arms, `samples` consistency samples, 1 epoch; `evaluation` adds lines to the evaluation section."""
    import json
    import random

    from tunewise.scaffold import scaffold

    project = scaffold(root)
    rng = random.Random(0)
    rows = []
    for i in range(examples):
        label = rng.choice(sorted(TICKET_TEXTS))
        messages = [
            {"role": "user", "content": f"{TICKET_TEXTS[label]} #{i}"},
            {"role": "assistant", "content": label},
        ]
        rows.append({"messages": messages})
    (project.root / "data" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = project.spec_path.read_text()
    spec = spec.replace("base: embedded:smollm2-135m-instruct", 'base: "tiny:random"')
    spec = spec.replace(
        "arms: [zero-shot, few-shot, retrieved, fine-tuned]",
        "arms: [zero-shot, fine-tuned]\n  max_new_tokens: 4" + evaluation,
    )
    spec = spec.replace("consistency_samples: 5", f"consistency_samples: {samples}")
    project.spec_path.write_text(spec.replace("epochs: auto", "epochs: 1"))
    return project
