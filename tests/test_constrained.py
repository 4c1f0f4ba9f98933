"""Label scoring and schema-constrained decoding on the tiny random model (a random model is the hardest test of
a constraint: left alone it never produces valid JSON)."""

from __future__ import annotations

import json
import re

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("xgrammar")

import jsonschema  # noqa: E402

from tunewise.errors import TunewiseError  # noqa: E402
from tunewise.evaluate.constrain import (  # noqa: E402
    Constraint,
    constraint_for_contract,
    constraint_from_response_format,
)
from tunewise.evaluate.engine import LocalEngine  # noqa: E402

SYSTEM = "Classify the customer message. Answer with exactly one label and nothing else."
USERS = ["Where is my card?", "refund please", "hi", "The app crashes when I log in", "pos", "x" * 40]
CHATS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}] for u in USERS]
# Labels of different token lengths, one a prefix of another: length normalization and the end-of-turn token
# both matter.
LABELS = ["pos", "positive", "card_arrival", "refund_not_showing_up", "neutral"]

SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"enum": ["billing", "technical", "account"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "urgent": {"type": "boolean"},
        "reference": {"type": "string", "maxLength": 10},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["category", "priority", "urgent", "reference"],
}


@pytest.fixture(scope="module")
def engine() -> LocalEngine:
    from tunewise.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer("tiny:random")
    return LocalEngine(load_model("tiny:random", tokenizer=tokenizer).eval(), tokenizer)


def _direct_scores(engine: LocalEngine, chat: list[dict], labels: list[str]) -> list[float]:
    """Length-normalized log-likelihood of each label's reply tokens, by one plain forward pass per label."""
    prompt = engine.encode(chat)
    out = []
    for label in labels:
        reply = engine._reply_ids(label)
        ids = torch.tensor([prompt + reply])
        with torch.no_grad():
            logp = torch.log_softmax(engine.model(input_ids=ids).logits[0].float(), dim=-1)
        # Position t predicts token t + 1: the reply's tokens are predicted from len(prompt) - 1 on.
        picked = [float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(reply)]
        out.append(sum(picked) / len(picked))
    return out


def test_reply_tokens_end_with_the_end_of_turn_token(engine):
    reply = engine._reply_ids("positive")
    assert reply[-1] in engine.stop_token_ids
    assert engine.tokenizer.decode(reply[:-1]) == "positive"


def test_scored_label_is_the_likeliest_by_direct_computation(engine):
    results = engine.score_labels(CHATS, LABELS)
    assert len(results) == len(CHATS)
    for chat, result in zip(CHATS, results):
        assert result.label in LABELS  # always a valid label
        direct = _direct_scores(engine, chat, LABELS)
        assert [result.scores[x] for x in LABELS] == pytest.approx(direct, abs=1e-4)
        assert result.label == LABELS[max(range(len(LABELS)), key=lambda k: direct[k])]
        assert result.completion_tokens == len(engine._reply_ids(result.label))
        assert result.latency_ms > 0 and result.prompt_tokens == len(engine.encode(chat))


def test_unnormalized_scores_are_the_sums(engine):
    mean = engine.score_labels(CHATS[:2], LABELS)
    total = engine.score_labels(CHATS[:2], LABELS, normalize=False)
    for a, b in zip(mean, total):
        assert [b.scores[x] for x in LABELS] == pytest.approx(
            [a.scores[x] * len(engine._reply_ids(x)) for x in LABELS], abs=1e-3
        )


def test_scoring_chunks_and_shared_prefix_do_not_change_scores(engine):
    whole = engine.score_labels(CHATS, LABELS)
    small = LocalEngine(engine.model, engine.tokenizer, max_batch_tokens=40, min_shared_prefix=10**6)
    chunked = small.score_labels(CHATS, LABELS)  # one label per chunk, no shared prefix
    for a, b in zip(whole, chunked):
        assert a.label == b.label
        assert list(a.scores.values()) == pytest.approx(list(b.scores.values()), abs=1e-4)


def test_constrained_json_always_parses_and_meets_the_schema(engine):
    constraint = constraint_for_contract({"type": "json", "schema": SCHEMA})
    free = engine.generate(CHATS, max_new_tokens=80)
    assert not any(_valid(g.text) for g in free)  # the random model never gets there alone
    greedy = engine.generate(CHATS, max_new_tokens=80, constraint=constraint)
    sampled = engine.sample(CHATS, 3, temperature=1.0, max_new_tokens=80, constraint=constraint)
    outputs = [g for g in greedy] + [g for row in sampled for g in row]
    for g in outputs:
        assert g.finish_reason == "stop", g.text
        assert _valid(g.text), g.text
    assert len({g.text for g in outputs}) > 1  # the constraint leaves the model choices


def test_regex_constraint_matches_and_mixes_with_free_rows(engine):
    pattern = r"[A-Z]{2}-[0-9]{3}( \(urgent\))?"
    constraint = Constraint("regex", pattern=pattern)
    per_row = [constraint if i % 2 == 0 else None for i in range(len(CHATS))]
    out = engine.generate(CHATS, max_new_tokens=16, constraint=per_row)
    free = engine.generate(CHATS, max_new_tokens=16)
    for i, (g, f) in enumerate(zip(out, free)):
        if i % 2 == 0:
            assert re.fullmatch(pattern, g.text), g.text
        else:
            assert g.text == f.text  # an unconstrained row of a mixed batch is untouched


def test_unsupported_constraint_falls_back_to_free_generation(engine, caplog):
    bad = Constraint("regex", pattern="(?P<x>a)(?P=x)")  # a Python back-reference: no grammar can hold it
    with caplog.at_level("WARNING"):
        out = engine.generate(CHATS[:2], max_new_tokens=6, constraint=bad)
    assert "generating freely" in caplog.text
    assert not engine.can_enforce(bad) and engine.can_enforce(Constraint("regex", pattern="a+"))
    assert [g.text for g in out] == [g.text for g in engine.generate(CHATS[:2], max_new_tokens=6)]


def test_response_format_becomes_a_constraint():
    rf = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA, "strict": True}}
    assert constraint_from_response_format(rf) == Constraint("json", schema=SCHEMA)
    assert constraint_from_response_format({"type": "json_object"}) == Constraint("json", schema={})
    assert constraint_from_response_format({"type": "regex", "pattern": "a+"}) == Constraint(
        "regex", pattern="a+"
    )
    assert constraint_from_response_format(None) is None
    with pytest.raises(TunewiseError, match="unsupported response_format type 'xml'"):
        constraint_from_response_format({"type": "xml"})
    with pytest.raises(TunewiseError, match="not a valid JSON Schema"):
        constraint_from_response_format({"type": "json_schema", "json_schema": {"schema": {"type": 3}}})


def _valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True
