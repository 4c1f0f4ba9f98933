"""Input formats and their normalization to one chat form.

Every example becomes `{"messages": [{"role": ..., "content": ..., "weight"?: 0|1}]}` with roles system, user,
assistant (and tool). Detection looks at one record's keys; a file's first record fixes its format and a
record of another format later in the file is an error (mixed formats), unless `--format` says otherwise.

Each normalizer returns the messages and a list of problems `(severity, code, field, message)`; it never
raises on bad input, so the checker can report every problem in a file at once.
"""

from __future__ import annotations

from typing import Any

FORMATS = ("openai", "prompt-completion", "alpaca", "sharegpt", "vertex", "bedrock", "csv")
ROLES = frozenset({"system", "user", "assistant", "tool"})
# Keys OpenAI's chat fine-tuning format accepts on a message and at the top level of a record.
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"})
RECORD_KEYS = {
    "openai": frozenset({"messages", "tools", "functions", "parallel_tool_calls", "metadata"}),
    "prompt-completion": frozenset({"prompt", "completion", "system", "metadata"}),
    "alpaca": frozenset({"instruction", "input", "output", "system", "history", "metadata"}),
    "sharegpt": frozenset({"conversations", "system", "tools", "id", "metadata"}),
    # The providers' formats `data convert` writes (data/convert.py reads them back).
    "vertex": frozenset({"systemInstruction", "contents"}),
    "bedrock": frozenset({"schemaVersion", "system", "messages"}),
}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}

Problem = tuple[str, str, str, str]  # severity ('error' | 'warning'), code, field, message


def detect_format(record: dict[str, Any]) -> str | None:
    """The format a record is written in, from its keys.

    >>> detect_format({"messages": []})
    'openai'
    >>> detect_format({"prompt": "a", "completion": "b"})
    'prompt-completion'
    >>> detect_format({"instruction": "a", "output": "b"})
    'alpaca'
    >>> detect_format({"conversations": []})
    'sharegpt'
    >>> detect_format({"contents": []}), detect_format({"schemaVersion": "bedrock-conversation-2024", "messages": []})
    ('vertex', 'bedrock')
    >>> detect_format({"text": "a"}) is None
    True
    """
    if "schemaVersion" in record:
        return "bedrock"
    if "messages" in record:
        return "openai"
    if "contents" in record:
        return "vertex"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "prompt" in record or "completion" in record:
        return "prompt-completion"
    return None


def _text(value: Any, field: str, problems: list[Problem], *, required: bool = True) -> str:
    if value is None:
        if required:
            problems.append(("error", "missing_key", field, f"'{field}' is missing"))
        return ""
    if not isinstance(value, str):
        problems.append(
            ("error", "wrong_type", field, f"'{field}' must be a string, got {type(value).__name__}")
        )
        return ""
    return value


def normalize(record: dict[str, Any], fmt: str) -> tuple[list[dict], list[Problem]]:
    """Messages in the chat form, plus the problems found while reading the record."""
    problems: list[Problem] = []
    allowed = RECORD_KEYS.get(fmt)
    if allowed is not None:
        for key in record:
            if key not in allowed:
                problems.append(("warning", "unknown_key", key, f"unknown key '{key}' is ignored"))
    if fmt == "openai":
        return _openai(record, problems), problems
    if fmt == "prompt-completion":
        messages = []
        system = _text(record.get("system"), "system", problems, required=False)
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": _text(record.get("prompt"), "prompt", problems)})
        messages.append(
            {"role": "assistant", "content": _text(record.get("completion"), "completion", problems)}
        )
        return messages, problems
    if fmt == "alpaca":
        messages = []
        system = _text(record.get("system"), "system", problems, required=False)
        if system:
            messages.append({"role": "system", "content": system})
        history = record.get("history") or []
        if not isinstance(history, list):
            problems.append(
                ("error", "wrong_type", "history", "'history' must be a list of [user, assistant] pairs")
            )
            history = []
        for i, turn in enumerate(history):
            if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                problems.append(
                    ("error", "wrong_type", f"history[{i}]", "each history turn must be [user, assistant]")
                )
                continue
            messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
        instruction = _text(record.get("instruction"), "instruction", problems)
        extra = _text(record.get("input"), "input", problems, required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": _text(record.get("output"), "output", problems)})
        return messages, problems
    if fmt == "sharegpt":
        return _sharegpt(record, problems), problems
    if fmt in ("vertex", "bedrock"):
        return _provider(record, fmt, problems), problems
    raise ValueError(f"unknown format {fmt}")  # a bug: callers pass a detected or validated format


def _openai(record: dict[str, Any], problems: list[Problem]) -> list[dict]:
    raw = record.get("messages")
    if not isinstance(raw, list):
        problems.append(("error", "wrong_type", "messages", "'messages' must be a list of message objects"))
        return []
    messages = []
    for i, msg in enumerate(raw):
        field = f"messages[{i}]"
        if not isinstance(msg, dict):
            problems.append(
                ("error", "wrong_type", field, f"{field} must be an object with role and content")
            )
            continue
        for key in msg:
            if key not in MESSAGE_KEYS:
                problems.append(("error", "unknown_key", f"{field}.{key}", f"unknown key '{key}' in {field}"))
        role = msg.get("role")
        if role is None:
            problems.append(("error", "missing_key", f"{field}.role", f"{field} has no 'role'"))
            continue
        out: dict[str, Any] = {"role": role, "content": msg.get("content")}
        if "weight" in msg:
            out["weight"] = msg["weight"]
        if msg.get("tool_calls") or msg.get("function_call"):
            out["tool_calls"] = msg.get("tool_calls") or [msg.get("function_call")]
        messages.append(out)
    return messages


def _provider(record: dict[str, Any], fmt: str, problems: list[Problem]) -> list[dict]:
    """A Vertex or Bedrock record, read back by the converter that writes them (unknown keys are warned
    about above and left out here, as for every format)."""
    from tunewise.data.convert import from_provider
    from tunewise.errors import TunewiseError

    known = {k: v for k, v in record.items() if k in RECORD_KEYS[fmt]}
    try:
        return from_provider(known, fmt)["messages"]
    except TunewiseError as exc:
        message = exc.message.removeprefix(f"example ({fmt}): ").removeprefix("example: ")
        problems.append(("error", "invalid_record", "(record)", message))
        return []


def _sharegpt(record: dict[str, Any], problems: list[Problem]) -> list[dict]:
    raw = record.get("conversations")
    if not isinstance(raw, list):
        problems.append(("error", "wrong_type", "conversations", "'conversations' must be a list"))
        return []
    messages = []
    system = record.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(raw):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            problems.append(("error", "wrong_type", field, f"{field} must be an object with from and value"))
            continue
        source = turn.get("from")
        role = SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
        if role is None:
            problems.append(
                ("error", "unknown_role", f"{field}.from", f"unknown speaker '{source}' in {field}")
            )
            continue
        messages.append({"role": role, "content": turn.get("value")})
    return messages


def check_messages(messages: list[dict]) -> list[Problem]:
    """Role order, alternation, content and weight rules of a normalized conversation."""
    problems: list[Problem] = []
    previous = None
    saw_assistant = False
    for i, msg in enumerate(messages):
        field = f"messages[{i}]"
        role = msg["role"]
        if role not in ROLES:
            problems.append(
                (
                    "error",
                    "unknown_role",
                    f"{field}.role",
                    f"unknown role '{role}' (use system, user, assistant or tool)",
                )
            )
            previous = role
            continue
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            problems.append(("error", "wrong_type", f"{field}.content", f"{field}.content must be a string"))
        elif not (content and content.strip()) and not (role == "assistant" and msg.get("tool_calls")):
            problems.append(
                ("error", "empty_content", f"{field}.content", f"{field} ({role}) has empty content")
            )
        if role == "system" and i != 0:
            problems.append(("error", "role_order", f"{field}.role", "a system message may only come first"))
        elif role == "assistant" and previous in (None, "system"):
            problems.append(
                ("error", "role_order", f"{field}.role", "the conversation must start with a user message")
            )
        elif role in ("user", "assistant") and role == previous:
            problems.append(
                (
                    "error",
                    "role_order",
                    f"{field}.role",
                    f"two {role} messages in a row: roles must alternate",
                )
            )
        if "weight" in msg:
            if role != "assistant":
                problems.append(
                    (
                        "error",
                        "invalid_weight",
                        f"{field}.weight",
                        "'weight' is only allowed on assistant messages",
                    )
                )
            elif msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool):
                problems.append(
                    (
                        "error",
                        "invalid_weight",
                        f"{field}.weight",
                        f"weight must be 0 or 1, got {msg['weight']!r}",
                    )
                )
        saw_assistant = saw_assistant or role == "assistant"
        previous = role
    if not messages:
        problems.append(("error", "no_messages", "messages", "the example has no messages"))
    elif not saw_assistant:
        problems.append(
            ("error", "no_assistant", "messages", "no assistant message: nothing to learn from this example")
        )
    elif messages[-1]["role"] != "assistant":
        problems.append(
            (
                "warning",
                "trailing_turn",
                "messages",
                f"the last message is from {messages[-1]['role']}: it is not trained",
            )
        )
    if messages and all(m.get("weight") == 0 for m in messages if m["role"] == "assistant") and saw_assistant:
        problems.append(
            (
                "error",
                "no_trained_tokens",
                "messages",
                "every assistant message has weight 0: nothing is trained",
            )
        )
    return problems


def completion(messages: list[dict]) -> str | None:
    """The final assistant reply: what the output contract applies to."""
    for msg in reversed(messages):
        if msg.get("role") == "assistant":
            content = msg.get("content")
            return content if isinstance(content, str) else None
    return None


def prompt_text(messages: list[dict]) -> str:
    """The input side of an example (everything before the final reply), for duplicate and leakage checks."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
    return "\n".join(
        m["content"] for m in messages[:last] if isinstance(m.get("content"), str) and m["role"] != "system"
    )
