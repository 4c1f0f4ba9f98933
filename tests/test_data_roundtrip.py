"""Every format `data convert` writes is one `data check` accepts and the loader reads back to the same
examples; an unknown `--format` is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.data.check import CheckOptions
from tunewise.data.convert import PROVIDERS, convert_file
from tunewise.data.load import load_examples
from tunewise.data.validate import check_files


def msg(role: str, content: str, **extra) -> dict:
    return {"role": role, "content": content, **extra}


SINGLE = [
    {
        "messages": [
            msg("user", f"Where is parcel {i}? It left on day {i * 3}."),
            msg("assistant", f"On its way {i}."),
        ]
    }
    for i in range(12)
]
WITH_SYSTEM = [
    {
        "messages": [
            msg("system", "Answer in one sentence."),
            msg("user", "What is the refund window?"),
            msg("assistant", "Thirty days."),
            msg("user", "And for sale items?"),
            msg("assistant", "Fourteen days, unicode too: café ✓."),
        ]
    }
]
WEIGHTED = [
    {
        "messages": [
            msg("user", "Draft a reply."),
            msg("assistant", "A first draft.", weight=0),
            msg("user", "Shorter."),
            msg("assistant", "Short.", weight=1),
        ]
    }
]
# What each provider can hold: the prompt/completion form has no system prompt and one turn; only OpenAI
# and Together carry per-message weights.
CASES = {
    "openai": SINGLE + WITH_SYSTEM + WEIGHTED,
    "together": SINGLE + WITH_SYSTEM + WEIGHTED,
    "vertex": SINGLE + WITH_SYSTEM,
    "bedrock": SINGLE + WITH_SYSTEM,
    "bedrock-prompt-completion": SINGLE,
    "hf": SINGLE + WITH_SYSTEM,
}


def test_every_provider_has_a_case():
    assert set(CASES) == set(PROVIDERS)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_convert_then_check_then_load_gives_the_same_examples(tmp_path: Path, provider: str):
    examples = CASES[provider]
    path = tmp_path / f"train.{provider}.jsonl"
    assert convert_file(examples, provider, path) == len(examples)
    report = check_files([path], None, CheckOptions(near_duplicates=False), None).to_json()
    assert report["errors"] == 0, report["problems"]
    assert report["files"][0]["examples"] == len(examples)
    assert load_examples(path) == examples


@pytest.mark.parametrize("fmt", ["vertex", "bedrock"])
def test_a_broken_provider_record_is_an_error_on_its_line(tmp_path: Path, fmt: str):
    path = tmp_path / "train.jsonl"
    convert_file(SINGLE[:2], fmt, path)
    good = path.read_text()
    broken = (
        {
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "robot", "parts": [{"text": "x"}]},
            ]
        }
        if fmt == "vertex"
        else {"schemaVersion": "bedrock-conversation-2024", "messages": [{"role": "user", "content": "hi"}]}
    )
    path.write_text(good + json.dumps(broken) + "\n")
    report = check_files([path], None, CheckOptions(near_duplicates=False), None).to_json()
    [problem] = [p for p in report["problems"] if p["severity"] == "error"]
    assert problem["code"] == "invalid_record" and problem["first"][0]["line"] == 3
    expected = "contents[1].role must be 'user' or 'model'" if fmt == "vertex" else "messages[0].content"
    assert expected in problem["first"][0]["message"]


def test_convert_reads_a_bedrock_file_and_refuses_an_unknown_format(tmp_path: Path, run_cli):
    bedrock = tmp_path / "train.bedrock.jsonl"
    convert_file(SINGLE + WITH_SYSTEM, "bedrock", bedrock)
    back = tmp_path / "back.jsonl"
    code, out, err = run_cli(
        "data", "convert", bedrock, "--format", "bedrock", "--to", "openai", "--out", back, cwd=tmp_path
    )
    assert code == 0, err
    assert load_examples(back) == SINGLE + WITH_SYSTEM
    for command in (
        ("data", "convert", bedrock, "--format", "bedrok", "--to", "openai", "--out", back),
        ("data", "split", bedrock, "--format", "bedrok", "--out", tmp_path),
        ("data", "check", bedrock, "--format", "bedrok", "--no-tokens"),
    ):
        code, out, err = run_cli(*command, cwd=tmp_path)
        assert code == 1 and out == ""
        assert err.startswith("error: unknown format 'bedrok'\n  hint: did you mean 'bedrock'?"), err
        assert "Traceback" not in err
