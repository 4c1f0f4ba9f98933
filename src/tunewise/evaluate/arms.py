"""The prompted arms: how each option phrases the same held-out query.

Every arm gets a fair chance, or the verdict is worthless:
- the output contract (label set, JSON Schema or regex) is stated in the system prompt unless the spec's prompt
  already names it;
- few-shot examples are balanced across labels (one per label first, round-robin), chosen deterministically,
  and bounded by a token budget; by default 5 to 10 of them (`few_shot_k`);
- retrieved examples are the k training inputs nearest to the query by BM25, never the query itself.
The fine-tuned arm is prompted exactly as its training examples were: no long instructions.
The rag arms are the zero-shot and fine-tuned prompts with the retrieved passages put in the question's
message (`evaluate.knowledge.with_passages`).
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.data.formats import completion
from tunewise.spec import JsonContract, LabelContract, RegexContract, Spec

PROMPTED_ARMS = ("zero-shot", "few-shot", "retrieved", "rag")
TUNED_ARM = "fine-tuned"
RAG_TUNED_ARM = "rag+fine-tuned"  # the fine-tuned model with retrieved passages in its prompt


def base_arm(name: str) -> str:
    """An arm name without its variant and training run: `rag+fine-tuned+scored:RUN` -> `rag+fine-tuned`.

    >>> base_arm("few-shot+scored"), base_arm("fine-tuned:train-1"), base_arm("rag+fine-tuned:train-2")
    ('few-shot', 'fine-tuned', 'rag+fine-tuned')
    """
    from tunewise.spec import split_arm_name

    return split_arm_name(name.split(":", 1)[0])[0]


def is_tuned_arm(name: str) -> bool:
    """Whether an arm name means a fine-tuned model: `fine-tuned` or `rag+fine-tuned`, a variant of either
    (`fine-tuned+scored`), either naming its training run (`fine-tuned:RUN`). An endpoint called
    `fine-tuned-gpt` is not one.

    >>> [is_tuned_arm(a) for a in ("fine-tuned", "fine-tuned+scored", "fine-tuned+scored:train-1", "rag+fine-tuned")]
    [True, True, True, True]
    >>> [is_tuned_arm(a) for a in ("few-shot", "few-shot+scored", "fine-tuned-gpt", "my-fine-tuned", "rag")]
    [False, False, False, False, False]
    """
    return base_arm(name) in (TUNED_ARM, RAG_TUNED_ARM)


def is_rag_arm(name: str) -> bool:
    """Whether an arm puts retrieved passages in its prompt: `rag`, `rag+fine-tuned` and their variants.

    >>> [is_rag_arm(a) for a in ("rag", "rag+scored", "rag+fine-tuned:train-1", "retrieved", "fine-tuned")]
    [True, True, True, False, False]
    """
    return base_arm(name) in ("rag", RAG_TUNED_ARM)


def contract_instruction(spec: Spec) -> str:
    """One sentence stating the output contract, for the prompted arms.

    >>> from tunewise.spec import parse_spec
    >>> s = parse_spec("task: {name: t, target: Classify a review by its sentiment.}\\ncontract: {type: label, labels: [pos, neg]}\\ndata: {train: x}")
    >>> contract_instruction(s)
    'Answer with exactly one of these labels and nothing else: pos, neg.'
    """
    contract = spec.contract
    if isinstance(contract, LabelContract):
        return f"Answer with exactly one of these labels and nothing else: {', '.join(contract.labels)}."
    if isinstance(contract, JsonContract):
        schema = json.dumps(contract.json_schema, separators=(",", ":")) if contract.json_schema else "{}"
        return f"Answer with a single JSON value and nothing else. It must match this JSON Schema: {schema}"
    if isinstance(contract, RegexContract):
        return f"Answer with text matching this regular expression and nothing else: {contract.pattern}"
    return ""


def system_prompt(spec: Spec) -> str:
    """The spec's system prompt, with the contract appended unless the prompt already states it."""
    base = spec.system_prompt.strip()
    contract = spec.contract
    if isinstance(contract, LabelContract) and all(label in base for label in contract.labels):
        return base
    extra = contract_instruction(spec)
    return f"{base}\n\n{extra}".strip() if extra else base


def query_messages(example: dict) -> list[dict]:
    """The conversation up to (not including) the final assistant reply, without a system message."""
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return [{"role": m["role"], "content": m["content"]} for m in messages[:last] if m["role"] != "system"]


def _pair(example: dict) -> list[dict]:
    return [*query_messages(example), {"role": "assistant", "content": completion(example["messages"]) or ""}]


FEW_SHOT_MIN, FEW_SHOT_MAX = 5, 10  # "a structured system prompt with 5 to 10 few-shot examples"
FEW_CLASSES = 10  # "fewer than 10 classification categories": few-shot often matches fine-tuning


def few_shot_k(setting: int | str, n_labels: int | None) -> int:
    """How many examples the few-shot prompt holds. `auto` follows the guide's 5 to 10, balanced across labels:
    with up to 10 labels, the smallest multiple of the label count that is at least 5 (every label equally often,
    at least once); with more labels, one per label; without labels, 5. A number is taken as given, raised to one
    per label (a label never shown is a label the prompt cannot teach). The token budget may still cut it.

    >>> [few_shot_k("auto", n) for n in (None, 1, 2, 3, 4, 5, 7, 10, 12)]
    [5, 5, 6, 6, 8, 5, 7, 10, 12]
    >>> few_shot_k(4, 2), few_shot_k(4, 6)
    (4, 6)
    """
    n = n_labels or 0
    if setting == "auto":
        if not n:
            return FEW_SHOT_MIN
        if n > FEW_SHOT_MAX:
            return n
        return -(-FEW_SHOT_MIN // n) * n  # ceil(5 / n) x n
    return max(int(setting), n)


def balanced_examples(train: list[dict], k: int, labels: list[str] | None, seed: int = 0) -> list[dict]:
    """k training examples, round-robin across labels (every label once before any twice).

    >>> ex = [{"messages": [{"role": "user", "content": str(i)}, {"role": "assistant", "content": "aab"[i % 3]}]} for i in range(9)]
    >>> [e["messages"][1]["content"] for e in balanced_examples(ex, 3, ["a", "b"])]
    ['a', 'b', 'a']
    """
    rng = random.Random(seed)
    if not labels:
        pool = list(train)
        rng.shuffle(pool)
        return pool[:k]
    by_label: dict[str, list[dict]] = defaultdict(list)
    for ex in train:
        by_label[completion(ex["messages"]) or ""].append(ex)
    for members in by_label.values():
        rng.shuffle(members)
    chosen: list[dict] = []
    depth = 0
    while len(chosen) < k and any(len(by_label[lab]) > depth for lab in labels):
        for label in labels:
            if len(chosen) < k and len(by_label[label]) > depth:
                chosen.append(by_label[label][depth])
        depth += 1
    return chosen


@dataclass
class ArmPrompter:
    """Builds the messages an arm sends for each held-out query."""

    name: str
    system: str | None
    shots: list[dict]  # fixed examples (few-shot), as alternating user/assistant messages
    retriever: Callable[[dict], list[dict]] | None = None  # per-query examples (retrieved)

    def messages(self, example: dict) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        shots = (
            self.shots if self.retriever is None else [m for ex in self.retriever(example) for m in _pair(ex)]
        )
        return [*head, *shots, *query_messages(example)]


class BM25Retriever:
    """The k training examples whose inputs are nearest to the query's input (BM25 over word tokens)."""

    def __init__(self, train: list[dict], k: int):
        # BM25+ (idf = log((N+1)/n)): Okapi's idf is zero or negative for a word in half the examples or more,
        # which on a small training set erases exactly the words that separate two classes.
        from rank_bm25 import BM25Plus

        self.train = train
        self.k = k
        self.texts = [_input_text(ex) for ex in train]
        self.index = BM25Plus([_words(t) or ["_"] for t in self.texts])

    def __call__(self, example: dict) -> list[dict]:
        query = _input_text(example)
        scores = self.index.get_scores(_words(query) or ["_"])
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        picked = [self.train[i] for i in order if self.texts[i] != query][: self.k]
        return picked[::-1]  # nearest last, closest to the query


def _input_text(example: dict) -> str:
    return "\n".join(m["content"] for m in query_messages(example))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def build_prompters(
    spec: Spec, train: list[dict], count_tokens: Callable[[list[dict]], int] | None = None, seed: int = 0
) -> dict[str, ArmPrompter]:
    """The prompted arms of a spec, plus the fine-tuned arm's prompt (the training examples' own form)."""
    system = system_prompt(spec)
    labels = spec.contract.labels if isinstance(spec.contract, LabelContract) else None
    k = few_shot_k(spec.evaluation.few_shot_k, len(labels) if labels else None)
    shots: list[dict] = []
    for ex in balanced_examples(train, k, labels, seed):
        candidate = shots + _pair(ex)
        if count_tokens is not None and count_tokens(candidate) > spec.evaluation.few_shot_token_budget:
            break
        shots = candidate
    # The nearest examples, not one per label: as many as the guide's few-shot prompt holds, at most 10.
    retrieve_k = min(k, FEW_SHOT_MAX) if spec.evaluation.few_shot_k == "auto" else spec.evaluation.few_shot_k
    prompters = {
        "zero-shot": ArmPrompter("zero-shot", system, []),
        "few-shot": ArmPrompter("few-shot", system, shots),
        "retrieved": ArmPrompter(
            "retrieved", system, [], BM25Retriever(train, retrieve_k) if train else None
        ),
        # The fine-tuned model saw no system prompt in training: ask it the same way.
        "fine-tuned": ArmPrompter("fine-tuned", None, []),
        # The rag arms: these messages with the question's passages put in (`knowledge.with_passages`).
        "rag": ArmPrompter("rag", system, []),
        RAG_TUNED_ARM: ArmPrompter(RAG_TUNED_ARM, None, []),
    }
    return prompters


# --- the fine-tuned arm's model --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FineTuned:
    """Where a fine-tuned model comes from: a tunewise training run, or a PEFT adapter folder trained anywhere.

    `kind` "adapter": LoRA weights in `folder` over `base`; "full": a whole model in `folder`, fine-tuned from
    `base` (whose tokenizer it keeps)."""

    name: str  # the run id, or the adapter folder's path
    kind: str
    folder: Path
    base: str | None
    run_dir: Path | None = None
    trust_remote_code: bool = False
    seed: int = 0  # tiny:random draws its weights from the seed the run used


def find_fine_tuned(project: Any, ref: str, base: str | None = None) -> FineTuned:
    """The fine-tuned model `ref` names: a PEFT adapter folder (adapter_config.json + adapter_model.safetensors,
    its base from its own config or else `base`, the spec's model.base or `--base`), or a finished training
    run (an id, an id prefix or a run folder, on the base it was trained on)."""
    from tunewise.errors import TunewiseError
    from tunewise.models.loading import adapter_base, is_adapter_folder
    from tunewise.train.records import find_run_dir, read_json

    path = Path(ref).expanduser()
    if is_adapter_folder(path):
        return FineTuned(str(path.resolve()), "adapter", path.resolve(), adapter_base(path, base))
    if path.is_dir() and not (path / "config.json").is_file():
        raise TunewiseError(
            f"{path} is neither a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) nor a "
            "training run",
            hint="give a folder written by PEFT's save_pretrained, or a training run's id",
        )
    run_dir = find_run_dir(project, ref)
    config = read_json(run_dir / "config.json")
    result = read_json(run_dir / "result.json") if (run_dir / "result.json").is_file() else {}
    if result.get("status") not in (None, "succeeded"):
        raise TunewiseError(
            f"training run {run_dir.name} did not succeed ({result.get('status')})",
            hint="resume it with `tunewise train --resume RUN` or train again",
        )
    asked = config.get("config", config)
    remote, seed = bool(asked.get("trust_remote_code", False)), int(asked.get("seed", 0))
    if (run_dir / "adapter").is_dir():
        return FineTuned(
            run_dir.name, "adapter", run_dir / "adapter", asked.get("base"), run_dir, remote, seed
        )
    if (run_dir / "model").is_dir():
        return FineTuned(run_dir.name, "full", run_dir / "model", asked.get("base"), run_dir, remote, seed)
    raise TunewiseError(f"training run {run_dir.name} has no adapter/ or model/ folder", hint="train again")
