"""`tunewise init`: a project folder with a commented spec to fill in."""

from __future__ import annotations

from pathlib import Path

from tunewise.errors import TunewiseError
from tunewise.fileio import atomic_write_text
from tunewise.project import Project

TEMPLATE = """\
# tunewise task spec. Reference: docs/spec.md.
task:
  name: {name}
  # One sentence: the input, the output and its form. Vague targets give noisy data and no verdict.
  target: Given a customer message, reply with the intent label that a support agent would file it under.

# The output contract: label (with labels), json (with schema), regex (with pattern), or text.
contract:
  type: label
  labels: [billing, delivery, refund, other]

# The system prompt of the prompted arms (zero-shot, few-shot, retrieved).
system_prompt: >-
  Classify the customer's message. Answer with exactly one of: billing, delivery, refund, other.

data:
  train: data/train.jsonl   # chat JSONL, prompt/completion, Alpaca, ShareGPT or CSV
  # eval: data/eval.jsonl   # a held-out file; without one, a stratified split of train
  eval_fraction: 0.2

model:
  base: embedded:smollm2-135m-instruct   # or a local Hugging Face folder

method: lora          # lora, qlora (4-bit base, CUDA) or full
hyperparameters:      # every value defaults to auto (rules in docs/training.md)
  epochs: auto
  learning_rate: auto

evaluation:
  arms: [zero-shot, few-shot, retrieved, fine-tuned]
  consistency_samples: 5

economics:
  queries_per_day: 500
  # Priced from the catalog (`tunewise pricing`); add azure-openai, together, vertex or self-hosted once their
  # missing figures are in a pricing file (`tunewise pricing update FILE`, economics.pricing_file).
  platforms: [hf-endpoints]
  data_preparation_cost: 3000   # dollars to collect, label and review the training data (a default: set yours)
"""


def scaffold(path: Path, force: bool = False) -> Project:
    project = Project(path.resolve())
    if project.spec_path.exists() and not force:
        raise TunewiseError(f"{project.spec_path} already exists", hint="pass --force to overwrite it")
    name = project.root.name.replace(" ", "-") or "my-task"
    atomic_write_text(project.spec_path, TEMPLATE.format(name=name))
    (project.root / "data").mkdir(exist_ok=True)
    project.runs_dir.mkdir(parents=True, exist_ok=True)
    project.datasets_dir.mkdir(parents=True, exist_ok=True)
    project.registry().close()
    return project
