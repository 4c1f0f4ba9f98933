"""The Ollama side of an export: a Go-template TEMPLATE, stop parameters and a SYSTEM prompt derived from the
model's Jinja chat template, a renderer of the Go-template subset that TEMPLATE uses, and the Modelfile.

Most chat templates wrap each message in a fixed prefix and suffix per role, add a generation prompt, and
insert a default system message when the chat has none. `wrappers` finds those pieces by rendering marker
messages through the Jinja template; `go_template` writes them as Ollama's TEMPLATE, and the default system
message becomes the Modelfile's SYSTEM (Ollama adds it when a request has no system message, as the Jinja
template did). A template that does not fit this shape is caught by the export's check, which renders
training chats both ways and requires the same bytes.

The renderer follows Ollama's semantics for a chat (server/prompt.go, template/template.go): the SYSTEM
message is prepended when the request has no system message, consecutive messages of one role are joined
with two newlines, and the template sees `.Messages` and `.System`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tunewise.errors import TunewiseError

ROLES = ("system", "user", "assistant")
_MARK = "\x00{}\x00"


@dataclass(frozen=True)
class Wrappers:
    """What a chat template writes around each message, per role; `generation` opens the answer."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation: str
    default_system: str | None  # the system message the template adds when a chat has none

    @property
    def stops(self) -> list[str]:
        """Where an answer ends: the assistant suffix's first line (ChatML: `<|im_end|>`)."""
        stop = self.suffix["assistant"].strip().splitlines()
        return [stop[0]] if stop else []


def _between(text: str, start: str | None, end: str | None) -> str:
    a = 0 if start is None else text.index(start) + len(start)
    b = len(text) if end is None else text.index(end, a)
    return text[a:b]


def wrappers(render: Any) -> Wrappers:
    """The per-role wrappers of a chat template; `render(messages, add_generation_prompt)` renders it.

    >>> chatml = lambda ms, gen: "".join(f"<|im_start|>{m['role']}\\n{m['content']}<|im_end|>\\n" for m in ms) + (
    ...     "<|im_start|>assistant\\n" if gen else "")
    >>> w = wrappers(chatml)
    >>> w.prefix["user"], w.suffix["user"], w.generation, w.stops
    ('<|im_start|>user\\n', '<|im_end|>\\n', '<|im_start|>assistant\\n', ['<|im_end|>'])
    """
    s, u, a, u2 = (_MARK.format(r) for r in (*ROLES, "user2"))
    try:
        full = render([{"role": "system", "content": s}, {"role": "user", "content": u},
                       {"role": "assistant", "content": a}, {"role": "user", "content": u2}], False)  # fmt: skip
        opened = render([{"role": "system", "content": s}, {"role": "user", "content": u}], True)
        closed = render([{"role": "system", "content": s}, {"role": "user", "content": u}], False)
        no_system = render([{"role": "user", "content": u}], False)
    except Exception as exc:  # a template that refuses these chats (e.g. one that has no system role)
        raise TunewiseError(
            f"the chat template cannot render a system, user, assistant chat: {exc}"
        ) from None
    if not opened.startswith(closed):
        raise TunewiseError("the chat template's generation prompt is not appended at the end of the chat")
    # full = Ps s Ss Pu u Su Pa a Sa Pu u2 Su: between two contents lies one message's suffix and the next
    # one's prefix; a message that ends a chat shows its suffix alone.
    prefix_system = _between(full, None, s)
    suffix_user = _between(closed, u, None)
    between_ua, between_au, between_su = _between(full, u, a), _between(full, a, u2), _between(full, s, u)
    if not between_ua.startswith(suffix_user):
        raise TunewiseError(
            "the chat template ends a user message differently before an answer and at the end"
        )
    prefix_assistant = between_ua[len(suffix_user) :]
    # Templates end every turn the same way (ChatML's <|im_end|>, Llama 3's <|eot_id|>): where the answer's
    # end starts like the user's, take it as the same; otherwise split at the longest shared ending.
    if between_au.startswith(suffix_user):
        prefix_user = between_au[len(suffix_user) :]
    else:
        common = 0
        while (
            common < min(len(between_au), len(between_su))
            and between_au[-1 - common] == between_su[-1 - common]
        ):
            common += 1
        prefix_user = between_au[len(between_au) - common :]
    if not between_su.endswith(prefix_user):
        raise TunewiseError("the chat template opens a user message differently after a system message")
    suffix_assistant = between_au[: len(between_au) - len(prefix_user)]
    suffix_system = between_su[: len(between_su) - len(prefix_user)]
    before_user = _between(no_system, None, u)
    if not before_user.endswith(prefix_user):
        raise TunewiseError("the chat template opens the first user message differently")
    head = before_user[: len(before_user) - len(prefix_user)]
    default_system = None
    if head:
        if not (head.startswith(prefix_system) and head.endswith(suffix_system)):
            raise TunewiseError(
                "the chat template writes text before a chat without a system message that is not a system message"
            )
        default_system = head[len(prefix_system) : len(head) - len(suffix_system)]
    prefix = {"system": prefix_system, "user": prefix_user, "assistant": prefix_assistant}
    suffix = {"system": suffix_system, "user": suffix_user, "assistant": suffix_assistant}
    return Wrappers(prefix, suffix, opened[len(closed) :], default_system)


def _go_text(text: str) -> str:
    """Literal text for a Go template; text holding template delimiters is written as a string action."""
    if "{{" in text or "}}" in text:
        return "{{ " + json.dumps(text) + " }}"
    return text


def go_template(w: Wrappers) -> str:
    """Ollama's TEMPLATE for the wrappers: each message between its role's prefix and suffix, then the
    generation prompt."""
    branches = []
    for i, role in enumerate(ROLES):
        keyword = "if" if i == 0 else "else if"
        branches.append(
            f'{{{{ {keyword} eq .Role "{role}" }}}}{_go_text(w.prefix[role])}{{{{ .Content }}}}{_go_text(w.suffix[role])}'
        )
    return "{{- range .Messages }}" + "".join(branches) + "{{ end }}{{ end }}" + _go_text(w.generation)


# --- rendering Ollama's Go templates (the subset TEMPLATE files use) ----------------------------------------

# An action: `{{`, an optional trim marker, the body (quoted strings may hold `}}`), `}}`.
_ACTION = re.compile(r'\{\{(-?)\s*((?:"(?:\\.|[^"\\])*"|[^"}]|\}(?!\}))*?)\s*(-?)\}\}', re.S)


def _tokens(template: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", s) pieces, with `{{-` and `-}}` trimming the whitespace beside them."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(template):
        text = template[pos : m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        out.append(("text", text))
        out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = template[pos:]
    out.append(("text", text.lstrip(" \t\r\n") if trim_next else text))
    return out


def _parse(
    tokens: list[tuple[str, str]], i: int = 0, stop: tuple[str, ...] = ()
) -> tuple[list[Any], int, str]:
    nodes: list[Any] = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        word = value.split(" ", 1)[0]
        if word in stop or value.startswith("else"):
            return nodes, i, value
        if word in ("if", "range"):
            body, i, ended = _parse(tokens, i, ("end",))
            branches = [(value[len(word) :].strip(), body)]
            while ended.startswith("else"):
                cond = ended[len("else") :].strip()
                cond = cond[len("if") :].strip() if cond.startswith("if ") else "true" if not cond else cond
                body, i, ended = _parse(tokens, i, ("end",))
                branches.append((cond, body))
            nodes.append((word, branches))
        elif word == "end":
            raise TunewiseError("TEMPLATE: {{ end }} without an if or range")
        else:
            nodes.append(("value", value))
    if stop:
        raise TunewiseError(f"TEMPLATE: missing {{{{ {stop[0]} }}}}")
    return nodes, i, ""


def _value(expr: str, dot: Any, root: dict[str, Any]) -> Any:
    expr = expr.strip()
    if expr == "true":
        return True
    if expr.startswith('"'):
        return json.loads(expr)
    if expr.startswith("eq "):
        a, b = _split_args(expr[3:])
        return _value(a, dot, root) == _value(b, dot, root)
    if expr.startswith("not "):
        return not _value(expr[4:], dot, root)
    if expr == ".":
        return dot
    scope, path = (
        (root, expr[2:]) if expr.startswith("$.") else (dot, expr[1:]) if expr.startswith(".") else (None, "")
    )
    if scope is None:
        raise TunewiseError(f"TEMPLATE: cannot evaluate '{expr}'")
    for part in path.split("."):
        scope = scope.get(part) if isinstance(scope, dict) else getattr(scope, part, None)
    return scope


def _split_args(text: str) -> tuple[str, str]:
    text = text.strip()
    if text.startswith('"'):
        end = json.JSONDecoder().raw_decode(text)[1]
        return text[:end], text[end:].strip()
    first, _, rest = text.partition(" ")
    return first, rest.strip()


def _run(nodes: list[Any], dot: Any, root: dict[str, Any], out: list[str]) -> None:
    for kind, value in nodes:
        if kind == "text":
            out.append(value)
        elif kind == "value":
            v = _value(value, dot, root)
            out.append("" if v is None else str(v))
        elif kind == "if":
            for cond, body in value:
                if _value(cond, dot, root):
                    _run(body, dot, root, out)
                    break
        elif kind == "range":
            (expr, body), *rest = value
            items = _value(expr, dot, root) or []
            for item in items:
                _run(body, item, root, out)
            if not items and rest:
                _run(rest[0][1], dot, root, out)


def render_go(template: str, messages: list[dict[str, str]], system: str | None = None) -> str:
    """Render an Ollama TEMPLATE for a chat request as Ollama does: `system` (the Modelfile's SYSTEM) is
    prepended when the chat has no system message; consecutive messages of one role are joined by a blank line.

    >>> t = '{{- if .System }}<s>{{ .System }}</s>{{ end }}{{- range .Messages }}[{{ .Role }}] {{ .Content }}\\n{{ end }}'
    >>> render_go(t, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], system="be brief")
    '<s>be brief</s>[system] be brief\\n[user] a\\n\\nb\\n'
    """
    chat = [dict(m) for m in messages]
    if system and not any(m["role"] == "system" for m in chat):
        chat.insert(0, {"role": "system", "content": system})
    collated: list[dict[str, str]] = []
    for m in chat:
        if collated and collated[-1]["role"] == m["role"]:
            collated[-1]["content"] += "\n\n" + m["content"]
        else:
            collated.append({"role": m["role"], "content": m["content"]})
    systems = [m["content"] for m in collated if m["role"] == "system"]
    root = {
        "Messages": [{"Role": m["role"], "Content": m["content"]} for m in collated],
        "System": "\n\n".join(systems),
    }
    nodes, _, _ = _parse(_tokens(template))
    out: list[str] = []
    _run(nodes, root, root, out)
    return "".join(out)


def modelfile(gguf_name: str, template: str, stops: list[str], system: str | None) -> str:
    """The Modelfile: the weights, TEMPLATE, SYSTEM and stop parameters; greedy decoding by default, as the
    export's check and tunewise's evaluation decode."""
    if '"""' in template or (system and '"""' in system):
        raise TunewiseError('the chat template or system prompt holds """, which a Modelfile cannot quote')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict[str, Any]:
    """TEMPLATE, SYSTEM and the stop parameters of a Modelfile (what the check renders with)."""
    out: dict[str, Any] = {"template": None, "system": None, "stop": []}
    for key in ("TEMPLATE", "SYSTEM"):
        m = re.search(rf'^{key} """(.*?)"""', text, flags=re.S | re.M)
        if m:
            out[key.lower()] = m.group(1)
    out["stop"] = [json.loads(v) for v in re.findall(r"^PARAMETER stop (.+)$", text, flags=re.M)]
    return out
