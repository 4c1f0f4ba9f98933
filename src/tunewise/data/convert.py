"""Convert normalized chat examples to each provider's fine-tuning format and back.

The normalized form every tunewise data file is read into is one dict per example::

    {"messages": [{"role": "system" | "user" | "assistant", "content": "...", "weight": 0 | 1}]}

where `weight` is optional and only allowed on assistant messages. Each provider accepts a different shape and
a different subset of conversations; `to_provider` checks the provider's documented rules and raises
`TunewiseError` naming the example and the rule when an example cannot be represented, instead of writing a
file the provider will reject after upload (or, worse, accept and train on differently).

Providers and their sources (checked 2026-11):

- ``openai``: chat fine-tuning JSONL, `messages` with an optional `weight` (0 or 1) on assistant messages.
  https://platform.openai.com/docs/guides/supervised-fine-tuning and the API schema
  `FineTuneChatCompletionRequestAssistantMessage.weight` ("controls whether the assistant message is trained
  against (0 or 1)").
- ``together``: Together's conversational format, https://docs.together.ai/docs/fine-tuning/data-preparation
  ("each message has a role (system, user, or assistant) and content. The conversation must start with system
  or user and alternate user and assistant afterwards"). Together's `check_file` (together-python,
  `together/lib/utils/files.py`: `_check_message_weight`) accepts a per-message `weight` of 0 or 1 and requires
  at least one assistant message.
- ``vertex``: Gemini supervised tuning, https://cloud.google.com/vertex-ai/generative-ai/docs/models/gemini-supervised-tuning-prepare
  (`systemInstruction` with `parts`, `contents` with role `user` or `model`). Per-message training weights do
  not exist there.
- ``bedrock``: `bedrock-conversation-2024` (Converse format),
  https://docs.aws.amazon.com/bedrock/latest/userguide/preparing-text-data.html and for Nova
  https://docs.aws.amazon.com/nova/latest/nova2-userguide/nova-data-prep-sft-2.html ("The first turn must be
  user, the last must be assistant, and turns must alternate"; the system prompt is a top-level `system` list).
- ``bedrock-prompt-completion``: the older non-conversational Bedrock form `{"prompt", "completion"}` from the
  same preparing-text-data page: one input, one output, no system prompt field.
- ``hf``: TRL's conversational dataset format, `{"messages": [{"role", "content"}]}`
  (https://huggingface.co/docs/trl/dataset_formats); TRL has no per-message weight.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError, nearest
from tunewise.fileio import atomic_open

PROVIDERS = ("openai", "together", "vertex", "bedrock", "bedrock-prompt-completion", "hf")
ROLES = ("system", "user", "assistant")
BEDROCK_SCHEMA_VERSION = "bedrock-conversation-2024"

# How many problems `convert_file` lists before summarizing: one systematic fault in a large file should give
# a readable error, not a wall of identical lines.
_MAX_LISTED_PROBLEMS = 10


def _check_provider(provider: str) -> None:
    if provider not in PROVIDERS:
        guess = nearest(provider, PROVIDERS)
        tip = f"did you mean '{guess}'?" if guess else f"choose one of {', '.join(PROVIDERS)}"
        raise TunewiseError(f"unknown provider {provider!r}", hint=tip)


def _where(index: int | None) -> str:
    return f"example {index}" if index is not None else "example"


def _fail(index: int | None, provider: str, rule: str, hint: str | None = None) -> TunewiseError:
    return TunewiseError(f"{_where(index)}: cannot convert to {provider}: {rule}", hint=hint)


# --- the normalized form ---------------------------------------------------------------------------------


def check_normalized(example: Any, index: int | None = None) -> list[dict[str, Any]]:
    """Check one normalized example and return its messages; raises TunewiseError on the first problem.

    >>> check_normalized({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})[1]
    {'role': 'assistant', 'content': 'yo'}
    >>> check_normalized({"messages": []})
    Traceback (most recent call last):
    ...
    tunewise.errors.TunewiseError: example: not a normalized example: 'messages' is empty
    """
    where = _where(index)
    if not isinstance(example, dict) or "messages" not in example:
        raise TunewiseError(f"{where}: not a normalized example: expected an object with a 'messages' list")
    extra = sorted(set(example) - {"messages"})
    if extra:
        raise TunewiseError(
            f"{where}: not a normalized example: unknown key(s) {', '.join(map(repr, extra))}"
        )
    messages = example["messages"]
    if not isinstance(messages, list):
        raise TunewiseError(f"{where}: not a normalized example: 'messages' must be a list")
    if not messages:
        raise TunewiseError(f"{where}: not a normalized example: 'messages' is empty")
    for i, msg in enumerate(messages):
        at = f"{where}, message {i}"
        if not isinstance(msg, dict):
            raise TunewiseError(f"{at}: must be an object with 'role' and 'content'")
        unknown = sorted(set(msg) - {"role", "content", "weight"})
        if unknown:
            guess = nearest(unknown[0], ["role", "content", "weight"])
            tip = f" (did you mean '{guess}'?)" if guess else ""
            raise TunewiseError(f"{at}: unknown key {unknown[0]!r}{tip}")
        role = msg.get("role")
        if role not in ROLES:
            guess = nearest(str(role), ROLES)
            tip = f" (did you mean '{guess}'?)" if guess else ""
            raise TunewiseError(f"{at}: role must be one of {', '.join(ROLES)}, got {role!r}{tip}")
        content = msg.get("content")
        if not isinstance(content, str) or not content.strip():
            raise TunewiseError(f"{at}: 'content' must be a non-empty string")
        if role == "system" and i != 0:
            raise TunewiseError(f"{at}: a system message may only come first")
        if "weight" in msg:
            weight = msg["weight"]
            # bool is an int subclass in Python, but JSON `true` is not a valid weight anywhere.
            if isinstance(weight, bool) or weight not in (0, 1):
                raise TunewiseError(f"{at}: 'weight' must be 0 or 1, got {weight!r}")
            if role != "assistant":
                raise TunewiseError(f"{at}: 'weight' is only allowed on assistant messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise TunewiseError(f"{where}: no assistant message: there is nothing to train on")
    return messages


def _split_system(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    if messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _check_alternation(
    turns: list[dict[str, Any]], index: int | None, provider: str, *, must_end_with_assistant: bool
) -> None:
    """User and assistant turns alternate, starting with user (the rule Together, Vertex and Bedrock share)."""
    names = {"user": "user", "assistant": "model" if provider == "vertex" else "assistant"}
    if not turns:
        raise _fail(index, provider, "there is no user turn after the system prompt")
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            prev = f" after a {names[turns[i - 1]['role']]} turn" if i else " as the first turn"
            raise _fail(
                index,
                provider,
                f"turns must alternate {names['user']}/{names['assistant']} starting with {names['user']}, "
                f"but turn {i} is {names[msg['role']]}{prev}",
                hint="merge consecutive messages of the same role, or drop the stray turn",
            )
    if must_end_with_assistant and turns[-1]["role"] != "assistant":
        raise _fail(
            index,
            provider,
            f"the last turn must be {names['assistant']} (it is what the model learns to produce)",
            hint="drop the trailing user turn",
        )


def _reject_weight_zero(messages: list[dict[str, Any]], index: int | None, provider: str) -> None:
    """A provider without per-message weights trains on every assistant turn, so weight 1 (the default) is
    carried faithfully by dropping it, but weight 0 would silently train on text the user excluded."""
    for i, msg in enumerate(messages):
        if msg.get("weight") == 0:
            raise _fail(
                index,
                provider,
                f"message {i} has weight 0, but {provider} has no per-message weight and would train on it",
                hint="drop the message's weight-0 turns (or the example), or convert for openai/together",
            )


def _strip_weight(msg: dict[str, Any]) -> dict[str, Any]:
    return {"role": msg["role"], "content": msg["content"]}


# --- to the provider -------------------------------------------------------------------------------------


def to_provider(example: dict[str, Any], provider: str, index: int | None = None) -> dict[str, Any]:
    """One normalized example in `provider`'s fine-tuning format; raises TunewiseError naming the rule broken.

    `index` (the example's position in its file) only improves the error message.

    >>> ex = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
    ...                    {"role": "assistant", "content": "Hello."}]}
    >>> to_provider(ex, "vertex")["contents"][1]
    {'role': 'model', 'parts': [{'text': 'Hello.'}]}
    >>> to_provider(ex, "bedrock")["system"]
    [{'text': 'Be brief.'}]
    >>> to_provider({"messages": ex["messages"][1:]}, "bedrock-prompt-completion")
    {'prompt': 'Hi', 'completion': 'Hello.'}
    """
    _check_provider(provider)
    messages = check_normalized(example, index)
    system, turns = _split_system(messages)

    if provider == "openai":
        # OpenAI takes the normalized form as is: it is the format tunewise's normalized form was modelled on.
        return {"messages": [dict(m) for m in messages]}

    if provider == "together":
        _check_alternation(turns, index, provider, must_end_with_assistant=False)
        return {"messages": [dict(m) for m in messages]}

    if provider == "hf":
        _reject_weight_zero(messages, index, provider)
        return {"messages": [_strip_weight(m) for m in messages]}

    _reject_weight_zero(messages, index, provider)
    _check_alternation(turns, index, provider, must_end_with_assistant=True)

    if provider == "vertex":
        record: dict[str, Any] = {}
        if system is not None:
            # The role of systemInstruction is ignored by Gemini; the docs' examples leave it set, so do we.
            record["systemInstruction"] = {"role": "system", "parts": [{"text": system}]}
        record["contents"] = [
            {"role": "user" if m["role"] == "user" else "model", "parts": [{"text": m["content"]}]}
            for m in turns
        ]
        return record

    if provider == "bedrock":
        record = {"schemaVersion": BEDROCK_SCHEMA_VERSION}
        if system is not None:
            record["system"] = [{"text": system}]
        record["messages"] = [{"role": m["role"], "content": [{"text": m["content"]}]} for m in turns]
        return record

    # bedrock-prompt-completion: "standalone prompts and outputs", so exactly one user turn and one answer.
    if system is not None:
        raise _fail(
            index,
            provider,
            "the prompt/completion form has no system prompt field",
            hint="use --to bedrock (bedrock-conversation-2024), which has one",
        )
    if len(turns) != 2:
        raise _fail(
            index,
            provider,
            f"the prompt/completion form holds one user turn and one answer, this example has {len(turns)} turns",
            hint="use --to bedrock (bedrock-conversation-2024) for multi-turn conversations",
        )
    return {"prompt": turns[0]["content"], "completion": turns[1]["content"]}


# --- back from the provider ------------------------------------------------------------------------------


def _texts(parts: Any, where: str, field: str) -> str:
    """Join the text parts of a Vertex `parts` or Bedrock `content` list; anything but text is refused."""
    if not isinstance(parts, list) or not parts:
        raise TunewiseError(f"{where}: '{field}' must be a non-empty list of text parts")
    texts = []
    for part in parts:
        if not isinstance(part, dict) or set(part) != {"text"} or not isinstance(part["text"], str):
            kinds = ", ".join(sorted(part)) if isinstance(part, dict) else type(part).__name__
            raise TunewiseError(f"{where}: only text parts are supported, got a part with {kinds}")
        texts.append(part["text"])
    # Consecutive text parts of one turn are one message split for transport; concatenation restores it.
    return "".join(texts)


def from_provider(record: dict[str, Any], provider: str, index: int | None = None) -> dict[str, Any]:
    """One provider record back in the normalized form, checked as `check_normalized` does.

    For ``bedrock`` both the conversation form and the older prompt/completion form are accepted.

    >>> from_provider({"contents": [{"role": "user", "parts": [{"text": "Hi"}]},
    ...                             {"role": "model", "parts": [{"text": "Hello."}]}]}, "vertex")
    {'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello.'}]}
    >>> from_provider({"prompt": "Hi", "completion": "Hello."}, "bedrock")["messages"][0]
    {'role': 'user', 'content': 'Hi'}
    """
    _check_provider(provider)
    where = f"{_where(index)} ({provider})"
    if not isinstance(record, dict):
        raise TunewiseError(f"{where}: each record must be a JSON object")

    def expect_keys(allowed: set[str], required: set[str]) -> None:
        unknown = sorted(set(record) - allowed)
        if unknown:
            guess = nearest(unknown[0], allowed)
            tip = f" (did you mean '{guess}'?)" if guess else ""
            raise TunewiseError(f"{where}: unknown key {unknown[0]!r}{tip}")
        missing = sorted(required - set(record))
        if missing:
            raise TunewiseError(f"{where}: missing key {missing[0]!r}")

    messages: list[dict[str, Any]] = []
    if provider in ("openai", "together", "hf"):
        expect_keys({"messages"}, {"messages"})
        raw = record["messages"]
        if not isinstance(raw, list):
            raise TunewiseError(f"{where}: 'messages' must be a list")
        messages = [dict(m) if isinstance(m, dict) else m for m in raw]
        example = {"messages": messages}
        check_normalized(example, index)
        if provider == "hf" and any("weight" in m for m in messages):
            raise TunewiseError(f"{where}: TRL's conversational format has no 'weight' key")
        if provider == "together":
            _check_alternation(_split_system(messages)[1], index, provider, must_end_with_assistant=False)
        return example

    if provider == "vertex":
        expect_keys({"systemInstruction", "contents"}, {"contents"})
        if "systemInstruction" in record:
            sys_ = record["systemInstruction"]
            if not isinstance(sys_, dict) or "parts" not in sys_:
                raise TunewiseError(f"{where}: 'systemInstruction' must be an object with 'parts'")
            messages.append(
                {"role": "system", "content": _texts(sys_["parts"], where, "systemInstruction.parts")}
            )
        contents = record["contents"]
        if not isinstance(contents, list):
            raise TunewiseError(f"{where}: 'contents' must be a list")
        for i, turn in enumerate(contents):
            if not isinstance(turn, dict) or turn.get("role") not in ("user", "model"):
                got = turn.get("role") if isinstance(turn, dict) else turn
                raise TunewiseError(f"{where}: contents[{i}].role must be 'user' or 'model', got {got!r}")
            role = "user" if turn["role"] == "user" else "assistant"
            messages.append(
                {"role": role, "content": _texts(turn.get("parts"), where, f"contents[{i}].parts")}
            )
    elif "prompt" in record or provider == "bedrock-prompt-completion":
        expect_keys({"prompt", "completion"}, {"prompt", "completion"})
        for key in ("prompt", "completion"):
            if not isinstance(record[key], str):
                raise TunewiseError(f"{where}: '{key}' must be a string")
        messages = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
    else:  # bedrock conversation
        expect_keys({"schemaVersion", "system", "messages"}, {"schemaVersion", "messages"})
        if record["schemaVersion"] != BEDROCK_SCHEMA_VERSION:
            raise TunewiseError(
                f"{where}: schemaVersion must be {BEDROCK_SCHEMA_VERSION!r}, got {record['schemaVersion']!r}"
            )
        if "system" in record:
            messages.append({"role": "system", "content": _texts(record["system"], where, "system")})
        raw = record["messages"]
        if not isinstance(raw, list):
            raise TunewiseError(f"{where}: 'messages' must be a list")
        for i, turn in enumerate(raw):
            if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
                got = turn.get("role") if isinstance(turn, dict) else turn
                raise TunewiseError(f"{where}: messages[{i}].role must be 'user' or 'assistant', got {got!r}")
            messages.append(
                {
                    "role": turn["role"],
                    "content": _texts(turn.get("content"), where, f"messages[{i}].content"),
                }
            )

    example = {"messages": messages}
    # The provider's own rules hold for what comes back too: converting it out again must succeed.
    to_provider(example, provider, index)
    return example


# --- files -----------------------------------------------------------------------------------------------


def convert_file(src_examples: Iterable[dict[str, Any]], provider: str, out_path: str | Path) -> int:
    """Write normalized examples to `out_path` as `provider` JSONL; returns how many were written.

    Every example is checked before anything is published: on any problem no file appears (the JSONL is
    written to a temporary file beside `out_path` and renamed into place only when all examples converted),
    and the error lists every failing example (the first few, then a count).
    """
    _check_provider(provider)
    out_path = Path(out_path)
    problems: list[str] = []
    count = 0
    with atomic_open(out_path, "w", newline="\n") as fh:
        for i, example in enumerate(src_examples):
            try:
                record = to_provider(example, provider, index=i)
            except TunewiseError as exc:
                problems.append(str(exc))
                continue
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
        # Raised inside the block: the temporary file is removed and `out_path` is left as it was.
        if problems:
            shown = "\n".join(f"  - {p}" for p in problems[:_MAX_LISTED_PROBLEMS])
            more = len(problems) - _MAX_LISTED_PROBLEMS
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise TunewiseError(
                f"{len(problems)} example(s) cannot be converted to {provider}; nothing was written to "
                f"{out_path}\n{shown}{tail}"
            )
        if count == 0:
            raise TunewiseError(f"no examples to convert; nothing was written to {out_path}")
    return count
