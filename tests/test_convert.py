"""Provider formats: round trips for every provider, every documented rule enforced, atomic files."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewise.data.convert import PROVIDERS, check_normalized, convert_file, from_provider, to_provider
from tunewise.errors import TunewiseError

SINGLE = {
    "messages": [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "Ticket TCK-12345: my parcel is late."},
        {"role": "assistant", "content": '{"category":"delivery"}'},
    ]
}
MULTI_WEIGHTED = {
    "messages": [
        {"role": "system", "content": "Be formal."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello.", "weight": 1},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "It ships today.", "weight": 1},
    ]
}
NO_SYSTEM = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def without_weights(example: dict) -> dict:
    return {"messages": [{k: v for k, v in m.items() if k != "weight"} for m in example["messages"]]}


# --- round trips -----------------------------------------------------------------------------------------

# What each provider cannot carry: openai and together keep everything; vertex, bedrock and hf have no
# per-message weight, and weight 1 is the default (every assistant turn trains), so it comes back absent.
LOSSLESS = {"openai", "together"}


@pytest.mark.parametrize("provider", ["openai", "together", "vertex", "bedrock", "hf"])
@pytest.mark.parametrize("example", [SINGLE, MULTI_WEIGHTED, NO_SYSTEM], ids=["single", "multi", "nosystem"])
def test_round_trip(provider, example):
    record = to_provider(example, provider)
    json.dumps(record)  # every record must be plain JSON
    back = from_provider(record, provider)
    expected = example if provider in LOSSLESS else without_weights(example)
    assert back == expected


def test_round_trip_bedrock_prompt_completion():
    # The prompt/completion form holds exactly one user turn and one answer and no system prompt.
    record = to_provider(NO_SYSTEM, "bedrock-prompt-completion")
    assert record == {"prompt": "2+2?", "completion": "4"}
    assert from_provider(record, "bedrock-prompt-completion") == NO_SYSTEM
    # `bedrock` reads both of Bedrock's forms back.
    assert from_provider(record, "bedrock") == NO_SYSTEM


def test_openai_and_together_keep_weight_zero():
    example = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "bad answer", "weight": 0},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "good answer", "weight": 1},
        ]
    }
    for provider in ("openai", "together"):
        assert to_provider(example, provider)["messages"][1]["weight"] == 0
        assert from_provider(to_provider(example, provider), provider) == example


def test_vertex_record_shape():
    assert to_provider(SINGLE, "vertex") == {
        "systemInstruction": {"role": "system", "parts": [{"text": "Answer in JSON."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Ticket TCK-12345: my parcel is late."}]},
            {"role": "model", "parts": [{"text": '{"category":"delivery"}'}]},
        ],
    }
    assert "systemInstruction" not in to_provider(NO_SYSTEM, "vertex")


def test_bedrock_record_shape():
    assert to_provider(SINGLE, "bedrock") == {
        "schemaVersion": "bedrock-conversation-2024",
        "system": [{"text": "Answer in JSON."}],
        "messages": [
            {"role": "user", "content": [{"text": "Ticket TCK-12345: my parcel is late."}]},
            {"role": "assistant", "content": [{"text": '{"category":"delivery"}'}]},
        ],
    }
    assert "system" not in to_provider(NO_SYSTEM, "bedrock")


def test_hf_record_has_no_weight():
    record = to_provider(MULTI_WEIGHTED, "hf")
    assert all(set(m) == {"role", "content"} for m in record["messages"])


def test_to_provider_does_not_alias_the_input():
    record = to_provider(MULTI_WEIGHTED, "openai")
    record["messages"][0]["content"] = "changed"
    assert MULTI_WEIGHTED["messages"][0]["content"] == "Be formal."


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda s: s.strip() != ""
)


@st.composite
def alternating_examples(draw):
    """Conversations every provider accepts: optional system, then user/assistant pairs."""
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_text)})
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(_text)})
        msg = {"role": "assistant", "content": draw(_text)}
        if draw(st.booleans()):
            msg["weight"] = 1
        messages.append(msg)
    return {"messages": messages}


@settings(max_examples=60, deadline=None)
@given(alternating_examples(), st.sampled_from(["openai", "together", "vertex", "bedrock", "hf"]))
def test_round_trip_property(example, provider):
    back = from_provider(json.loads(json.dumps(to_provider(example, provider))), provider)
    assert back == (example if provider in LOSSLESS else without_weights(example))


# --- the normalized form ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        (
            [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
            "system message may only come first",
        ),
        (
            [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "c"}],
            "only allowed on assistant",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c", "weight": 2}],
            "must be 0 or 1",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c", "weight": True}],
            "must be 0 or 1",
        ),
        ([{"role": "usr", "content": "a"}, {"role": "assistant", "content": "c"}], "did you mean 'user'"),
        ([{"role": "user", "content": "a"}], "no assistant message"),
        ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "c"}], "non-empty string"),
        (
            [{"role": "user", "content": "a", "contnet": "x"}, {"role": "assistant", "content": "c"}],
            "did you mean 'content'",
        ),
        ([], "'messages' is empty"),
    ],
)
def test_normalized_form_is_checked_first(messages, needle):
    for provider in PROVIDERS:
        with pytest.raises(TunewiseError, match="example 7") as err:
            to_provider({"messages": messages}, provider, index=7)
        assert needle in str(err.value)


def test_check_normalized_rejects_non_examples():
    with pytest.raises(TunewiseError, match="'messages' list"):
        check_normalized(["not", "a", "dict"])
    with pytest.raises(TunewiseError, match="unknown key"):
        check_normalized({"messages": NO_SYSTEM["messages"], "extra": 1})


def test_unknown_provider_names_the_nearest():
    with pytest.raises(TunewiseError) as err:
        to_provider(NO_SYSTEM, "vertx")
    assert "unknown provider 'vertx'" in str(err.value) and "did you mean 'vertex'" in str(err.value)
    with pytest.raises(TunewiseError, match="unknown provider"):
        from_provider({}, "gemini-ish-thing")


# --- provider rules --------------------------------------------------------------------------------------

STARTS_WITH_ASSISTANT = {
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Refund please"},
        {"role": "assistant", "content": "Done."},
    ]
}
TWO_USERS = {
    "messages": [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
}
ENDS_WITH_USER = {
    "messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
}
WEIGHT_ZERO = {
    "messages": [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b", "weight": 0},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
}


@pytest.mark.parametrize("provider", ["vertex", "bedrock", "together"])
def test_turns_must_start_with_user_and_alternate(provider):
    with pytest.raises(TunewiseError) as err:
        to_provider(STARTS_WITH_ASSISTANT, provider, index=3)
    msg = str(err.value)
    assert msg.startswith(f"example 3: cannot convert to {provider}: turns must alternate")
    assert "turn 0" in msg and "first turn" in msg
    with pytest.raises(TunewiseError, match="turn 1 is user after a user turn"):
        to_provider(TWO_USERS, provider)


def test_vertex_names_its_own_roles():
    with pytest.raises(TunewiseError, match="alternate user/model") as err:
        to_provider(STARTS_WITH_ASSISTANT, "vertex")
    assert "turn 0 is model" in str(err.value)


@pytest.mark.parametrize("provider", ["vertex", "bedrock"])
def test_last_turn_must_be_the_answer(provider):
    with pytest.raises(TunewiseError, match="last turn must be"):
        to_provider(ENDS_WITH_USER, provider, index=0)


def test_openai_accepts_what_alternation_providers_refuse():
    # OpenAI documents no alternation rule; the same examples convert, so the refusals above are per-provider.
    for example in (STARTS_WITH_ASSISTANT, TWO_USERS, ENDS_WITH_USER):
        assert from_provider(to_provider(example, "openai"), "openai") == example
    # Together's rule is about order, not about the last turn.
    assert to_provider(ENDS_WITH_USER, "together") == ENDS_WITH_USER


@pytest.mark.parametrize("provider", ["vertex", "bedrock", "hf", "bedrock-prompt-completion"])
def test_weight_zero_cannot_be_carried_without_weights(provider):
    with pytest.raises(
        TunewiseError, match=f"example 5: cannot convert to {provider}: message 1 has weight 0"
    ):
        to_provider(WEIGHT_ZERO, provider, index=5)


def test_prompt_completion_rules():
    with pytest.raises(TunewiseError, match="no system prompt field") as err:
        to_provider(SINGLE, "bedrock-prompt-completion", index=2)
    assert "bedrock-conversation-2024" in str(err.value)
    with pytest.raises(TunewiseError, match="one user turn and one answer, this example has 4 turns"):
        to_provider(
            {"messages": without_weights(MULTI_WEIGHTED)["messages"][1:]}, "bedrock-prompt-completion"
        )


# --- reading provider records ----------------------------------------------------------------------------


def test_vertex_joins_text_parts_and_refuses_files():
    record = {
        "contents": [
            {"role": "user", "parts": [{"text": "Hello "}, {"text": "there"}]},
            {"role": "model", "parts": [{"text": "Hi."}]},
        ]
    }
    assert from_provider(record, "vertex")["messages"][0] == {"role": "user", "content": "Hello there"}
    record["contents"][0]["parts"].append({"fileData": {"mimeType": "image/png", "fileUri": "gs://x"}})
    with pytest.raises(TunewiseError, match="only text parts"):
        from_provider(record, "vertex", index=4)


def test_vertex_role_must_be_model_not_assistant():
    record = {
        "contents": [
            {"role": "user", "parts": [{"text": "a"}]},
            {"role": "assistant", "parts": [{"text": "b"}]},
        ]
    }
    with pytest.raises(TunewiseError, match=r"contents\[1\].role must be 'user' or 'model', got 'assistant'"):
        from_provider(record, "vertex")


def test_vertex_read_back_obeys_the_vertex_rules():
    record = {
        "contents": [{"role": "model", "parts": [{"text": "a"}]}, {"role": "user", "parts": [{"text": "b"}]}]
    }
    with pytest.raises(TunewiseError, match="turns must alternate"):
        from_provider(record, "vertex")


def test_bedrock_records_are_checked():
    good = to_provider(SINGLE, "bedrock")
    with pytest.raises(TunewiseError, match="schemaVersion must be 'bedrock-conversation-2024'"):
        from_provider(good | {"schemaVersion": "bedrock-conversion-2024"}, "bedrock")
    with pytest.raises(TunewiseError, match="missing key 'schemaVersion'"):
        from_provider({k: v for k, v in good.items() if k != "schemaVersion"}, "bedrock")
    with pytest.raises(TunewiseError, match="unknown key 'sytem'.*did you mean 'system'"):
        from_provider({**good, "sytem": []}, "bedrock")
    image = {"image": {"format": "png", "source": {"bytes": "..."}}}
    bad = {**good, "messages": [{"role": "user", "content": [image]}, good["messages"][1]]}
    with pytest.raises(TunewiseError, match="only text parts"):
        from_provider(bad, "bedrock")


def test_hf_records_have_no_weight():
    with pytest.raises(TunewiseError, match="no 'weight' key"):
        from_provider(MULTI_WEIGHTED, "hf")


def test_together_records_are_checked():
    with pytest.raises(TunewiseError, match="turns must alternate"):
        from_provider(TWO_USERS, "together")
    with pytest.raises(TunewiseError, match="must be 0 or 1"):
        from_provider(
            {"messages": [NO_SYSTEM["messages"][0], {"role": "assistant", "content": "4", "weight": 0.5}]},
            "together",
        )


# --- files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_convert_file_writes_jsonl(tmp_path, provider):
    examples = [
        NO_SYSTEM,
        {"messages": [{"role": "user", "content": "é?"}, {"role": "assistant", "content": "ü"}]},
    ]
    out = tmp_path / "sub" / f"{provider}.jsonl"
    assert convert_file(iter(examples), provider, out) == 2
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [from_provider(json.loads(line), provider) for line in lines] == examples
    assert "é?" in lines[1]  # UTF-8 as is, not \\u escapes
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


def test_convert_file_is_all_or_nothing(tmp_path):
    out = tmp_path / "vertex.jsonl"
    out.write_text("previous content\n", encoding="utf-8")
    examples = [NO_SYSTEM, TWO_USERS, SINGLE, ENDS_WITH_USER]
    with pytest.raises(TunewiseError) as err:
        convert_file(examples, "vertex", out)
    msg = str(err.value)
    # Every failing example is reported at once, by index; the good ones are not.
    assert msg.startswith("2 example(s) cannot be converted to vertex")
    assert "example 1:" in msg and "example 3:" in msg and "example 0:" not in msg and "example 2:" not in msg
    assert out.read_text(encoding="utf-8") == "previous content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vertex.jsonl"]


def test_convert_file_summarizes_a_systematic_fault(tmp_path):
    with pytest.raises(TunewiseError) as err:
        convert_file([TWO_USERS] * 25, "bedrock", tmp_path / "b.jsonl")
    msg = str(err.value)
    assert msg.count("\n  - ") == 10 and "... and 15 more" in msg
    assert not (tmp_path / "b.jsonl").exists()


def test_convert_file_refuses_nothing(tmp_path):
    with pytest.raises(TunewiseError, match="no examples"):
        convert_file([], "openai", tmp_path / "empty.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_together_checker_accepts_our_output(tmp_path):
    files = pytest.importorskip("together.lib.utils", reason="the together package is a dev extra")
    out = tmp_path / "together.jsonl"
    convert_file([SINGLE, MULTI_WEIGHTED, NO_SYSTEM], "together", out)
    report = files.check_file(out)
    assert report["is_check_passed"], report
    assert report["num_samples"] == 3
