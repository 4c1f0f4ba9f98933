"""The built-in demo data: deterministic, valid against its own contract, balanced, short, and not trivial."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from tunewise.data import demo
from tunewise.data.convert import PROVIDERS, from_provider, to_provider
from tunewise.data.demo import (
    CATEGORIES,
    DEMO_SCHEMA,
    DEMO_SPEC_YAML,
    DEMO_SYSTEM_PROMPT,
    PRIORITIES,
    demo_examples,
    demo_reply,
    write_demo_project,
)
from tunewise.project import cache_dir
from tunewise.spec import parse_spec

N = 350  # the default project size: 300 train + 50 eval


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return demo_examples(N, seed=0)


def parsed(example: dict) -> dict:
    return json.loads(example["messages"][1]["content"])


def ticket(example: dict) -> str:
    return example["messages"][0]["content"]


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path):
    a = write_demo_project(tmp_path / "a", seed=3)
    b = write_demo_project(tmp_path / "b", seed=3)
    c = write_demo_project(tmp_path / "c", seed=4)
    assert digest(a) == digest(b)
    assert set(digest(a)) == {"tunewise.yaml", "prices.yaml", "data/train.jsonl", "data/eval.jsonl"}
    assert digest(a)["data/train.jsonl"] != digest(c)["data/train.jsonl"]


def test_prefix_stable(examples):
    # Asking for more examples extends the list; it never reshuffles the ones already handed out.
    assert demo_examples(50, seed=0) == examples[:50]
    assert demo_examples(0, seed=0) == []


def test_shape_is_the_normalized_chat_form(examples):
    for ex in examples:
        assert list(ex) == ["messages"]
        assert [m["role"] for m in ex["messages"]] == ["user", "assistant"]
        assert all(set(m) == {"role", "content"} and m["content"].strip() for m in ex["messages"])


def test_every_completion_meets_the_schema_in_compact_sorted_form(examples):
    validator = jsonschema.Draft202012Validator(DEMO_SCHEMA)
    for ex in examples:
        content = ex["messages"][1]["content"]
        reply = json.loads(content)
        assert list(validator.iter_errors(reply)) == [], content
        assert content == json.dumps(reply, sort_keys=True, separators=(",", ":"))
        assert "\n" not in content


def test_schema_rejects_what_a_careless_model_writes():
    validator = jsonschema.Draft202012Validator(DEMO_SCHEMA)
    good = {
        "category": "refund",
        "priority": "low",
        "reference": "TCK-12345",
        "reply": demo_reply("refund", "low", "TCK-12345"),
    }
    assert validator.is_valid(good)
    assert not validator.is_valid({k: v for k, v in good.items() if k != "reference"})  # dropped reference
    assert not validator.is_valid(good | {"reference": "12345"})
    assert not validator.is_valid(good | {"category": "shipping"})
    assert not validator.is_valid(good | {"priority": "critical"})
    assert not validator.is_valid(good | {"note": "extra"})


def test_reference_comes_from_the_ticket(examples):
    references = []
    for ex in examples:
        reply = parsed(ex)
        # The ticket holds its reference exactly once and no other TCK number, so the answer is in the text.
        assert re.findall(r"TCK-[0-9]{5}", ticket(ex)) == [reply["reference"]]
        assert reply["reference"] in reply["reply"]
        references.append(reply["reference"])
    assert len(set(references)) == len(references)


def test_reply_is_the_brand_voice(examples):
    for ex in examples:
        reply = parsed(ex)
        assert reply["reply"] == demo_reply(reply["category"], reply["priority"], reply["reference"])
        assert 1 <= reply["reply"].count(". ") + 1 <= 2  # one or two sentences
        assert "!" not in reply["reply"]


def test_labels_are_balanced(examples):
    categories = Counter(parsed(ex)["category"] for ex in examples)
    priorities = Counter(parsed(ex)["priority"] for ex in examples)
    assert set(categories) == set(CATEGORIES) and set(priorities) == set(PRIORITIES)
    assert all(0.15 <= n / N <= 0.25 for n in categories.values()), categories
    assert all(0.15 <= n / N <= 0.35 for n in priorities.values()), priorities
    # Category and priority are not tied to each other: every pair occurs.
    pairs = Counter((parsed(ex)["category"], parsed(ex)["priority"]) for ex in examples)
    assert len(pairs) == len(CATEGORIES) * len(PRIORITIES)


def test_text_varies(examples):
    tickets = [ticket(ex) for ex in examples]
    assert len(set(tickets)) == N
    # The reference sits at the start, in the middle and at the end of tickets.
    starts = sum(t.lstrip("[").startswith(("TCK", "Ticket", "Re:", "Subject", "Ref")) for t in tickets)
    ends = sum(bool(re.search(r"TCK-[0-9]{5}\.?$", t)) for t in tickets)
    assert starts > N * 0.15 and ends > N * 0.15 and N - starts - ends > N * 0.15
    first_lines = Counter(t.splitlines()[0].split()[0] for t in tickets)
    assert len(first_lines) > 15


def test_labels_are_not_keyword_trivial(examples):
    """A keyword rule would be fooled: other categories' words appear, and 'urgent' appears in low tickets."""
    keywords = {"refund": "refund", "delivery": "deliver", "billing": "invoice", "account": "log"}
    misleading = sum(
        any(word in ticket(ex).lower() for cat, word in keywords.items() if cat != parsed(ex)["category"])
        for ex in examples
    )
    assert misleading > N * 0.15
    low = [ex for ex in examples if parsed(ex)["priority"] == "low"]
    assert any("urgent" in ticket(ex).lower() for ex in low)


def test_examples_are_short(examples):
    # The demo trains on two CPU cores: every ticket fits the tokenizer-free budget.
    assert max(demo._rough_tokens(ticket(ex)) for ex in examples) <= 56


def test_examples_fit_120_tokens_in_the_base_tokenizer(examples):
    path = cache_dir() / "models" / "smollm2-135m-instruct-tokenizer" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"the embedded model's tokenizer is not cached yet ({path})")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    lengths = [sum(len(tok.encode(m["content"]).ids) for m in ex["messages"]) for ex in examples]
    assert max(lengths) <= 120, max(lengths)


def test_demo_project(tmp_path):
    folder = write_demo_project(tmp_path / "demo", n_train=40, n_eval=12, seed=0)
    train = [
        json.loads(line)
        for line in (folder / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    held = [
        json.loads(line) for line in (folder / "data" / "eval.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(train) == 40 and len(held) == 12
    assert train + held == demo_examples(52, seed=0)
    assert not {ticket(ex) for ex in train} & {ticket(ex) for ex in held}
    spec = parse_spec((folder / "tunewise.yaml").read_text(encoding="utf-8"))
    assert all((folder / p).is_file() for p in spec.data.train + spec.data.eval)
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name]


def test_default_project_split_is_disjoint(tmp_path):
    folder = write_demo_project(tmp_path)
    read = lambda name: (folder / "data" / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    train, held = read("train.jsonl"), read("eval.jsonl")
    assert (len(train), len(held)) == (300, 50)
    assert not {ticket(json.loads(x)) for x in train} & {ticket(json.loads(x)) for x in held}


def test_spec_parses_without_warnings():
    spec = parse_spec(DEMO_SPEC_YAML)
    assert spec.warnings() == []
    assert spec.contract.type == "json" and spec.contract.json_schema == DEMO_SCHEMA
    assert spec.system_prompt == DEMO_SYSTEM_PROMPT
    assert spec.data.train == ["data/train.jsonl"] and spec.data.eval == ["data/eval.jsonl"]


def test_system_prompt_covers_the_contract():
    for word in (*CATEGORIES, *PRIORITIES, "TCK-", "JSON", "reference"):
        assert word in DEMO_SYSTEM_PROMPT


def test_demo_converts_to_every_provider(examples):
    for provider in PROVIDERS:
        for i, ex in enumerate(examples[:20]):
            assert from_provider(to_provider(ex, provider, index=i), provider) == ex


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError):
        demo_examples(-1)
    with pytest.raises(ValueError):
        write_demo_project(tmp_path, n_train=0)
