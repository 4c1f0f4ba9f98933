"""Training examples -> token ids and a completion-only loss mask, computed from the model's own chat template.

The mask marks exactly the tokens of each trained assistant message: its content and the end-of-turn token
(`<|im_end|>` for ChatML) that the model must learn to emit, nothing of the role header before it and nothing
after it. It is derived from character spans of the rendered conversation, never from padding: SmolLM2's
`pad_token_id == eos_token_id`, so "mask the pad tokens" would also mask every end-of-turn token.

How the spans are found, for any template that renders conversations prefix-stably:

    P = render(messages[:i], add_generation_prompt=True)   ends with "<|im_start|>assistant\\n"
    Q = render(messages[:i + 1])                            ends with "...content<|im_end|>\\n"
    trained span of message i = Q[len(P):], cut just after its last end-of-turn token

Then the whole conversation is tokenized once with character offsets, and a token is trained when it starts
inside a trained span. Messages with `"weight": 0` are rendered (they are context) but not trained.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError


@dataclass
class Example:
    """One tokenized conversation: `mask[t] == 1` when token t is a training target."""

    input_ids: list[int]
    mask: list[int]
    source: str = ""  # "file:line", for messages that point at the data

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(self.mask)


def read_jsonl(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(file:line, record) for every non-empty line of a normalized chat JSONL file; every problem at once."""
    path = Path(path)
    if not path.is_file():
        raise TunewiseError(f"no data file at {path}", hint="pass --data with a chat JSONL file")
    records: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not valid JSON ({exc.msg})")
            continue
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            problems.append(f'{where}: expected {{"messages": [...]}} with at least one message')
            continue
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in {"system", "user", "assistant"}:
                problems.append(f"{where}: messages[{j}].role must be system, user or assistant")
            elif not isinstance(m.get("content"), str):
                problems.append(f"{where}: messages[{j}].content must be a string")
            elif m.get("weight", 1) not in (0, 1):
                problems.append(f"{where}: messages[{j}].weight must be 0 or 1")
        records.append((where, record))
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise TunewiseError(
            f"{path}: {len(problems)} problem(s) in the training data\n{shown}{more}",
            hint="run `tunewise data check` on the file",
        )
    if not records:
        raise TunewiseError(f"{path} holds no examples")
    return records


def _render(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    # The template only needs role and content; extra keys (weight) must not leak into the rendered text.
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt)


def trained_spans(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans [start, end) that are trained.

    Each trained span ends with the template's end-of-turn marker (`models.tokenizer.end_of_turn`). A template
    that renders an earlier reply differently once later turns follow (Qwen3 drops the empty `<think>` block
    of replies before the last question) is not prefix-stable; there each trained reply's content is found in
    the whole conversation in message order instead."""
    full = _render(tokenizer, messages)
    eot = _end_of_turn(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = 0  # where the next message's content is searched for, when prefixes do not hold
    for i, message in enumerate(messages):
        content = message["content"]
        found = full.find(content, cursor) if content else -1
        if found != -1:
            cursor = found + len(content)
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        turn = _render(tokenizer, messages[: i + 1])
        if i:
            prompt = _render(tokenizer, messages[:i], add_generation_prompt=True)
        else:  # an assistant message first: templates may add a default system prompt, so find the content
            prompt = turn[: turn.rfind(content)] if content else turn
        if turn.startswith(prompt) and full.startswith(turn):
            start, end = len(prompt), len(turn)
        elif found != -1:
            start, end = found, found + len(content)
            end += len(eot) if eot and full.startswith(eot, end) else 0
        else:
            raise TunewiseError(
                "the model's chat template does not render conversations prefix-stably, so the assistant "
                "tokens cannot be located",
                hint="use a model whose chat template appends each message without rewriting earlier ones",
            )
        cut = full.rfind(eot, start, end) if eot else -1
        if cut != -1:
            end = cut + len(eot)  # include the end-of-turn marker, drop the separator after it
        spans.append((start, end))
    return full, spans


_eot_cache: dict[int, tuple[Any, str]] = {}


def _end_of_turn(tokenizer: Any) -> str:
    """The end-of-turn marker of `tokenizer`'s chat template, found once per tokenizer."""
    from tunewise.models.tokenizer import end_of_turn

    cached = _eot_cache.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        cached = (tokenizer, end_of_turn(lambda ms: _render(tokenizer, ms), tokenizer.eos_token))
        _eot_cache[id(tokenizer)] = cached
    return cached[1]


def tokenize_example(tokenizer: Any, messages: list[dict[str, Any]], source: str = "") -> Example:
    """Token ids and a completion-only mask for one conversation."""
    text, spans = trained_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    mask = [0] * len(ids)
    for t, (begin, _end) in enumerate(enc["offset_mapping"]):
        if any(s <= begin < e for s, e in spans):
            mask[t] = 1
    return Example(ids, mask, source)


def with_retrieved_passages(examples: Iterable[dict[str, Any]], retrieve: Any) -> list[dict[str, Any]]:
    """Training examples whose question carries the passages retrieved for it, in the rag arms' layout
    (`tunewise.evaluate.knowledge.with_passages`), so a model fine-tuned on them learns to answer from context
    and is asked the same way by `rag+fine-tuned`. `retrieve(question)` returns the passages (a
    `knowledge.PassageCache`: one retrieval per distinct question). Only the last user message before the final
    reply changes; an example without one is kept as it is.

    >>> from tunewise.rag.passages import Passage
    >>> ex = {"messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "Ada"}]}
    >>> out = with_retrieved_passages([ex], lambda q: [Passage("a.md", 0, "Ada did it.", 1.0)])
    >>> out[0]["messages"][0]["content"].splitlines()[-1], out[0]["messages"][1]
    ('Question: Who?', {'role': 'assistant', 'content': 'Ada'})
    """
    from tunewise.evaluate.knowledge import question_of, with_passages

    out = []
    for ex in examples:
        messages = ex["messages"]
        last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last_reply is None or not any(m["role"] == "user" for m in messages[:last_reply]):
            out.append(ex)
            continue
        head = with_passages(messages[:last_reply], retrieve(question_of(messages)))
        out.append({**ex, "messages": [*head, *(dict(m) for m in messages[last_reply:])]})
    return out


@dataclass
class TokenizedData:
    examples: list[Example]
    n_truncated: int = 0
    n_dropped: int = 0  # examples left with no trained token (all weight 0, or truncated away)

    @property
    def n_tokens(self) -> int:
        return sum(len(e) for e in self.examples)

    @property
    def n_trained(self) -> int:
        return sum(e.n_trained for e in self.examples)


def tokenize_records(
    tokenizer: Any, records: Iterable[tuple[str, dict[str, Any]]], max_length: int | None = None
) -> TokenizedData:
    """Tokenize, truncate to `max_length` tokens (keeping the start), drop examples with nothing to train."""
    examples = [tokenize_example(tokenizer, record["messages"], source) for source, record in records]
    return truncate(TokenizedData(examples), max_length)


def truncate(data: TokenizedData, max_length: int | None) -> TokenizedData:
    """Cut examples to `max_length` tokens (keeping the start; None: no cut) and drop those left with nothing to
    train; the counts add to `data`'s own."""
    out = TokenizedData([], data.n_truncated, data.n_dropped)
    for ex in data.examples:
        if max_length is not None and len(ex) > max_length:
            ex = Example(ex.input_ids[:max_length], ex.mask[:max_length], ex.source)
            out.n_truncated += 1
        # Position 0 has no context to predict it from, so a target there is never trained.
        if sum(ex.mask[1:]) == 0:
            out.n_dropped += 1
            continue
        out.examples.append(ex)
    return out


def check_trainable(data: TokenizedData, name: str = "training data") -> None:
    """Refuse data in which no token would be trained."""
    if not data.examples:
        raise TunewiseError(
            f"no token of the {name} would be trained: every example has no assistant message with weight 1 "
            f"({data.n_dropped} example(s) dropped)",
            hint="each example needs an assistant reply; check `weight: 0` flags and max_length",
        )


def render_mask(tokenizer: Any, example: Example) -> str:
    """One example with its trained tokens in [[double brackets]], for a human to check the mask.

    >>> class T:
    ...     def decode(self, ids): return "".join(chr(i) for i in ids)
    >>> render_mask(T(), Example([72, 105, 33, 10], [0, 1, 1, 0]))
    'H[[i!]]\\n'
    """
    parts: list[str] = []
    t = 0
    while t < len(example):
        j = t
        while j < len(example) and example.mask[j] == example.mask[t]:
            j += 1
        text = tokenizer.decode(example.input_ids[t:j])
        parts.append(f"[[{text}]]" if example.mask[t] else text)
        t = j
    return "".join(parts)


# --- batching ----------------------------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a function of (seed, epoch) only, so a resumed run replays it.

    >>> epoch_order(5, seed=0, epoch=1) == epoch_order(5, seed=0, epoch=1)
    True
    >>> sorted(epoch_order(5, 0, 0))
    [0, 1, 2, 3, 4]
    """
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The optimizer steps of one epoch, each a list of example indices (the last one may be smaller).

    >>> [len(b) for b in step_batches(10, 4, seed=0, epoch=0)]
    [4, 4, 2]
    """
    order = epoch_order(n, seed, epoch)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def partition(lengths: Sequence[int], indices: Sequence[int], parts: int) -> list[list[int]]:
    """Split one step's examples over `parts` processes with balanced token counts (longest first, to the
    least loaded), so every process of a distributed run gets work.

    >>> partition([5, 3, 4, 2], [0, 1, 2, 3], parts=2)
    [[0, 3], [2, 1]]
    >>> partition([5, 3], [0, 1], parts=1)
    [[0, 1]]
    """
    if parts == 1:
        return [list(indices)]
    shares: list[list[int]] = [[] for _ in range(parts)]
    load = [0] * parts
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        k = min(range(parts), key=lambda k: (load[k], k))
        shares[k].append(i)
        load[k] += lengths[i]
    return shares


def micro_batches(lengths: Sequence[int], indices: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split one step's examples into packed micro-batches of at most `max_tokens` tokens each.

    Examples are sorted longest first and placed greedily (first fit), so micro-batches come out full and
    few; an example longer than `max_tokens` gets a micro-batch of its own. Gradient accumulation over the
    micro-batches is exact because the loss is normalized by the trained tokens of the whole step.

    >>> micro_batches([5, 3, 4, 2], [0, 1, 2, 3], max_tokens=7)
    [[0, 3], [2, 1]]
    """
    bins: list[tuple[int, list[int]]] = []
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        for b, (used, members) in enumerate(bins):
            if used + lengths[i] <= max_tokens:
                bins[b] = (used + lengths[i], [*members, i])
                break
        else:
            bins.append((lengths[i], [i]))
    return [members for _, members in bins]


def pack(examples: Sequence[Example], device: Any = "cpu") -> dict[str, Any]:
    """Concatenate examples into one row with no padding; position ids restart at 0 for each example.

    transformers reads the restarting `position_ids` (with `attention_mask=None`) as packed sequences and
    builds a block-diagonal causal mask, so no token attends across an example boundary. `targets[t]` is the
    token predicted from position t, and `select` the positions whose prediction is trained: the last token
    of one example never predicts the first token of the next.
    """
    import torch

    ids: list[int] = []
    pos: list[int] = []
    select: list[int] = []
    targets: list[int] = []
    for ex in examples:
        base = len(ids)
        ids.extend(ex.input_ids)
        pos.extend(range(len(ex)))
        for t in range(1, len(ex)):
            if ex.mask[t]:
                select.append(base + t - 1)
                targets.append(ex.input_ids[t])
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long, device=device),
        "position_ids": torch.tensor([pos], dtype=torch.long, device=device),
        "select": torch.tensor(select, dtype=torch.long, device=device),
        "targets": torch.tensor(targets, dtype=torch.long, device=device),
    }
