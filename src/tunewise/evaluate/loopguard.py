"""The JSON loop guard: greedy decoding of a small model must not spend its budget repeating itself.

Greedy decoding of a 135M model, fine-tuned or not, sometimes falls into a loop inside JSON: an object that
repeats a key (`{"title": "x", "extra": true, "extra": true, ...}`) or a list that repeats an object it already
holds (the same function call again and again), until `max_new_tokens` cuts it off, and the output is not JSON.
Both repetitions are degenerate: a repeated key is at best ignored (RFC 8259 says names SHOULD be unique, and
most parsers keep only the last), and a list of records or calls that holds the same object twice is almost
never what was asked for. Repeated *scalars* in a list (`[1, 1, 2]`) are ordinary and are left alone.

What the guard does, per generated row, as tokens are chosen:

1. It follows the JSON structure of the text (`JsonTracker`: containers, strings, keys, list elements), from
   the first `{` or `[` on.
2. When a key closes that its object already holds, or an object or list closes that its list already holds,
   the row is *rewound* to just before the token holding the `,` that opened the repetition (the engine masks
   the discarded positions out of the KV cache and feeds the token before them again), and that container is
   *sealed*.
3. In a sealed container a further `,` is refused: whenever the chosen token would put one there, it is
   removed from the distribution and the choice made again. The model's own next-best continuation, almost
   always the container's closing bracket, is what it then writes.
4. A closing bracket of the other kind (`]` on an open object, `}` on an open list) is refused the same way:
   it is never JSON, whatever the contract, and a small model that loses count of its brackets usually ranks
   the right one next. Fine-tuned on bfcl, SmolLM2 closed a list of strings with `}` in 1 of 100 answers.

So the guard never writes a token itself: every output token is one the model ranked highest (or sampled)
among those allowed, and a row that does not repeat itself decodes exactly as without the guard. It applies
to free decoding only: a grammar-constrained row's grammar state cannot be rewound, and a streamed token cannot
be taken back (`LocalEngine.generate` turns it off for both).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Frame:
    """One open container."""

    kind: str  # "{" or "["
    start: int  # offset of its opening bracket in the text: a stable identity across rewinds
    sep_token: int = -1  # index of the token holding its latest ","
    keys: set[str] = field(default_factory=set)  # objects: keys seen
    elements: set[str] = field(default_factory=set)  # lists: container elements seen, canonical text
    expect_key: bool = False  # objects: the next string is a key


@dataclass(frozen=True)
class Repeat:
    """A repetition found: rewind to before token `token` and seal the container that starts at `start`."""

    token: int
    start: int


class JsonTracker:
    """Incremental structural view of generated JSON text, token by token.

    >>> t = JsonTracker()
    >>> [t.feed(s) for s in ['[{"a":', '1,', '"b":2},', '{"a":1,"b":2}']][-1]
    Repeat(token=2, start=0)
    >>> t = JsonTracker()
    >>> [t.feed(s) for s in ['{"x": 1', ', "y"', ': 2, "x"']][-1]
    Repeat(token=2, start=0)
    >>> t = JsonTracker()
    >>> [t.feed(s) for s in ['[1, 1', ', "a,b", "a,b"]']][-1] is None  # scalars may repeat
    True
    """

    def __init__(self, sealed: frozenset[int] = frozenset()):
        self.text = ""
        self.tokens = 0  # tokens fed so far
        self.sealed = set(sealed)  # start offsets of sealed containers
        self._stack: list[_Frame] = []
        self._in_string = False
        self._escape = False
        self._key_start = -1  # offset of the open key string's first character, or -1
        self._started = False

    def feed(self, piece: str) -> Repeat | None:
        """Add one token's text; returns the first repetition it completes, if any."""
        index = self.tokens
        self.tokens += 1
        found = None
        for ch in piece:
            repeat = self._char(ch, index)
            found = found or repeat
            self.text += ch
        return found

    def would_refuse(self, piece: str) -> bool:
        """Whether adding `piece` would put a "," directly in a sealed container, or close the open container with
        the other kind of bracket (`]` on an object, `}` on a list: never JSON). The tracker is unchanged.

        >>> t = JsonTracker()
        >>> _ = t.feed('{"a": [1, 2')
        >>> t.would_refuse("]}"), t.would_refuse("}"), t.would_refuse(', "}"')
        (False, True, False)
        """
        if not any(ch in ",]}" for ch in piece):
            return False
        # Asked of every token a guarded row chooses: a light walk over the piece (string state and a stack of
        # (bracket, sealed) pairs), not a copy of the tracker with its key and element sets.
        stack = [(f.kind, f.start in self.sealed) for f in self._stack]
        in_string, escape, started = self._in_string, self._escape, self._started
        for ch in piece:
            if not started:
                if ch not in "{[":
                    continue  # text before the JSON is not judged
                started = True
            if in_string:
                if escape:
                    escape = False
                elif ch == "\\":
                    escape = True
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch in "{[":
                stack.append((ch, False))
            elif ch in "}]" and stack:
                if stack.pop()[0] != ("{" if ch == "}" else "["):
                    return True
            elif ch == "," and stack and stack[-1][1]:
                return True
        return False

    def _char(self, ch: str, token: int) -> Repeat | None:
        offset = len(self.text)
        if self._in_string:
            if self._escape:
                self._escape = False
            elif ch == "\\":
                self._escape = True
            elif ch == '"':
                self._in_string = False
                if self._key_start >= 0:
                    key, self._key_start = self.text[self._key_start :], -1
                    frame = self._stack[-1]
                    if key in frame.keys:
                        return Repeat(frame.sep_token, frame.start)
                    frame.keys.add(key)
            return None
        if not self._started:
            if ch not in "{[":
                return None  # text before the JSON (a code fence, a sentence) is not tracked
            self._started = True
        if ch in "{[":
            self._stack.append(_Frame(ch, offset, expect_key=ch == "{"))
        elif ch in "}]" and self._stack:
            frame = self._stack.pop()
            parent = self._stack[-1] if self._stack else None
            if parent is not None and parent.kind == "[":
                element = _canonical(self.text[frame.start :] + ch)
                if element in parent.elements:
                    return Repeat(parent.sep_token, parent.start)
                parent.elements.add(element)
        elif ch == "," and self._stack:
            frame = self._stack[-1]
            frame.sep_token = token
            frame.expect_key = frame.kind == "{"
        elif ch == '"':
            self._in_string = True
            frame = self._stack[-1] if self._stack else None
            if frame is not None and frame.kind == "{" and frame.expect_key:
                frame.expect_key = False
                self._key_start = offset + 1
        return None


def _canonical(text: str) -> str:
    """Whitespace and key order do not make an element different."""
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError:
        return text


class RowGuards:
    """The loop guard of each guarded row of a batch (rows are prompt indices); see the module docstring."""

    def __init__(self, rows: list[int], piece: Callable[[int], str]):
        self.trackers = {i: JsonTracker() for i in rows}
        self.piece = piece  # token id -> its text
        self.rewinds = dict.fromkeys(rows, 0)
        self.refusals = dict.fromkeys(rows, 0)  # tokens refused (each call of `refuses` that says yes)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def __contains__(self, row: int) -> bool:
        return row in self.trackers

    def refuses(self, row: int, token: int) -> bool:
        """Whether `token` would add a member to a sealed container of `row`, or close one with the wrong bracket."""
        tracker = self.trackers.get(row)
        refused = tracker is not None and tracker.would_refuse(self.piece(token))
        if refused:
            self.refusals[row] += 1
        return refused

    def accept(self, row: int, generated: list[int]) -> int | None:
        """Follow `row`'s newest token (the last of `generated`). On a repetition, returns k: the row must go back
        to its first k tokens (the k-th, holding the "," that began the repetition, is dropped); the tracker is
        already rebuilt over them, the container sealed."""
        tracker = self.trackers[row]
        repeat = tracker.feed(self.piece(generated[-1]))
        if repeat is None or repeat.token < 1:  # at token 0 there is nothing to go back to
            return None
        rebuilt = JsonTracker(frozenset(tracker.sealed | {repeat.start}))
        for token in generated[: repeat.token]:
            rebuilt.feed(self.piece(token))
        self.trackers[row] = rebuilt
        self.rewinds[row] += 1
        return repeat.token
