"""`tunewise data check`: a streaming validator that reports every problem with file:line and field.

How it stays fast on a 100 MB file:
- The file is read in blocks and split into lines with one C call per block; each line is decoded by orjson.
  The common shape (one user and one assistant message, nothing else) is recognized by a few type and key
  tests and recorded in batches (hashes, label counts, sample, near-duplicate texts: one C-level pass per
  batch). Every other line takes the general path, which collects every problem of the line.
- Large files are split into byte ranges, one per core, checked at once (the main process takes the first,
  forked workers the others), then merged. Ranges yield compact arrays (line numbers, 64-bit hashes, one
  MinHash signature per distinct normalized input), not objects.
- Lengths are exact without tokenizing everything: a token covers at least one byte, so an example whose
  line has fewer bytes than the context minus the chat template's tokens cannot exceed the context. Only
  examples above that bound are tokenized.
- One example's cost is capped: a line longer than the context can hold many times over (context x the
  longest token's bytes x 6, the most bytes JSON spends on one byte of text) is reported as too long without
  being parsed, and one whose rendered text is longer than context x the longest token's bytes without being
  tokenized. Near-duplicate signing reads at most the first SIGN_CHARS characters of an input.
- Memory is bounded whatever the input: lines are read by data/lines.py (one block and one line of at most
  the cap at once), and every batch (fast-path rows, texts to sign, long examples to tokenize) is flushed
  when it holds more than a fixed number of bytes as well as when it holds BATCH items.
- Token statistics are computed on a seeded sample (exact below the sample size), and say so.
- Duplicates: exact ones by a hash of the normalized example; near ones by MinHash LSH (data/minhash.py).
- `structure_only` checks what Together's `check_file` checks (bytes, JSON, format, fields, roles, content,
  weights, example counts) and records nothing for the cross-example checks.
Problems that repeat are grouped: a count and the first few locations.
"""

from __future__ import annotations

import os
import random
import re
from array import array
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tunewise.data import minhash
from tunewise.data.formats import FORMATS, check_messages, completion, detect_format, normalize, prompt_text
from tunewise.data.lines import BLOCK, Overlong, iter_lines, next_line_start
from tunewise.errors import TunewiseError

BATCH = 4096
BOM = b"\xef\xbb\xbf"
# What one example may cost, and what a batch may hold, whatever the input.
LINE_CAP = 16 * 2**20  # bytes: a longer line is never parsed, with or without a model's context to compare
BIG_LINE = 2**20  # bytes: longer lines are parsed by the json module (about 2x a line's size, orjson 13x)
JSON_ESCAPE = 6  # bytes JSON may spend on one byte of text (\u0000)
LINE_SLACK = 2**16  # bytes of keys, roles and punctuation allowed on top of an example's text
SIGN_CHARS = 2**16  # characters of an input that near-duplicate signing reads
SIGN_HELD = 2**21  # characters of inputs queued for signing (normalizing costs about 20 bytes a character)
HELD = 16 * 2**20  # bytes of lines (or characters of text) a batch holds before it is processed
SHOWN = 5  # locations listed per grouped problem
PARALLEL_MIN_BYTES = 16 * 2**20
SAMPLE = 2000

# Minimum example counts each provider documents (--for). The guide's own thresholds apply to every file.
PROVIDER_MIN = {
    "openai": (10, "OpenAI requires at least 10 examples"),
    "together": (1, "Together's file checker requires at least 1 example"),
    "vertex": (16, "Vertex AI supervised tuning requires at least 16 examples"),
    "bedrock": (1, "Bedrock sets per-model record quotas; no lower bound is documented"),
}


# --- options, partial results, report ---------------------------------------------------------------------


@dataclass
class CheckOptions:
    labels: list[str] | None = None  # a label contract
    json_schema: dict | None = None  # a json contract
    is_json: bool = False
    pattern: str | None = None  # a regex contract
    context_length: int | None = None  # None: no length check
    first_overhead: int = 0  # template tokens of a one-message conversation (default system prompt included)
    per_message_overhead: int = 0  # template tokens each further message adds
    fmt: str = "auto"
    csv_columns: dict | None = None
    provider: str | None = None
    near_duplicates: bool = True
    structure_only: bool = False  # only the structure of each line and the example counts (Together's checks)
    sample_size: int = SAMPLE
    workers: int = 0  # 0: one per core for large files
    longest_token_bytes: int = 0  # the most bytes one token of the tokenizer covers; 0: unknown
    max_line_bytes: int = LINE_CAP  # a longer line is reported as too long without being parsed


def line_cap(context_length: int | None, longest_token_bytes: int) -> int:
    """The longest line worth parsing: one that could still fit the context. A token covers at most
    `longest_token_bytes` bytes of text and JSON spends at most JSON_ESCAPE bytes on a byte of text, so a
    longer line holds more tokens than the context, many times over.

    >>> line_cap(8192, 162)
    8028160
    >>> line_cap(None, 0) == LINE_CAP
    True
    """
    if not context_length or not longest_token_bytes:
        return LINE_CAP
    return min(LINE_CAP, context_length * longest_token_bytes * JSON_ESCAPE + LINE_SLACK)


@dataclass
class Group:
    severity: str
    code: str
    field: str
    count: int = 0
    first: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, message)

    def add(self, file: str, line: int, message: str, count: int = 1) -> None:
        self.count += count
        if len(self.first) < SHOWN:
            self.first.append((file, line, message))

    def to_json(self) -> dict:
        return {
            "severity": self.severity,
            "code": self.code,
            "field": self.field,
            "count": self.count,
            "first": [{"file": f, "line": ln, "message": m} for f, ln, m in self.first],
        }


_INDEX = re.compile(r"\[\d+\]")


class Problems:
    def __init__(self) -> None:
        self.groups: dict[tuple[str, str, str], Group] = {}

    def add(
        self, severity: str, code: str, fld: str, file: str, line: int, message: str, count: int = 1
    ) -> None:
        key = (severity, code, _INDEX.sub("[]", fld))
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group(severity, code, key[2])
        group.add(file, line, message, count)

    def merge(self, other: Problems) -> None:
        for key, g in other.groups.items():
            mine = self.groups.get(key)
            if mine is None:
                self.groups[key] = g
            else:
                mine.count += g.count
                mine.first = sorted(mine.first + g.first, key=lambda x: x[1])[:SHOWN]

    def count(self, severity: str) -> int:
        return sum(g.count for g in self.groups.values() if g.severity == severity)

    def sorted(self) -> list[Group]:
        return sorted(
            self.groups.values(), key=lambda g: (g.severity != "error", g.first[0][0], g.first[0][1])
        )


@dataclass
class Partial:
    """What one worker learned about one byte range of one file."""

    problems: Problems
    examples: int = 0
    formats: Counter = field(default_factory=Counter)
    lines: Any = field(default_factory=lambda: array("I"))  # array("I") in a worker, uint32 ndarray merged
    example_hash: Any = field(default_factory=lambda: array("q"))  # Python's 64-bit hash; int64 merged
    prompt_hash: Any = field(default_factory=lambda: array("q"))
    # Near-duplicates: one MinHash row per distinct normalized input (blocks of rows in a worker, one array
    # merged), and each example's row.
    signatures: Any = None
    text_ids: Any = field(default_factory=lambda: array("I"))
    completions: Counter = field(default_factory=Counter)
    completions_overflow: bool = False
    # (random key, messages), or (random key, (tokens, prompt tokens)) for an example measured on the way
    sample: list = field(default_factory=list)
    long: int = 0  # examples above the byte bound: tokenized exactly (or too long many times over)
    first_format: str | None = None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_line(raw: bytes) -> Any:
    """orjson.loads, with the same verdicts in less memory for a long line: orjson's working memory is
    about 13 times the line, the json module's about twice. A line with a surrogate escape goes to orjson,
    which refuses lone surrogates as the json module does not; so does every line up to BIG_LINE bytes.

    >>> loads_line(b'{"a": [1, "b"]}')
    {'a': [1, 'b']}
    """
    if len(raw) <= BIG_LINE or _SURROGATE_ESCAPE.search(raw):
        return orjson.loads(raw)
    import json

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        message = "nesting too deep" if isinstance(exc, RecursionError) else str(exc)
        raise orjson.JSONDecodeError(message, "", 0) from None


def _h64(value: Any) -> int:
    """A 64-bit hash (signed, as array("q") stores it), consistent within one run: worker processes are
    forked, so they share the parent's hash seed. Duplicates are only ever compared within a run."""
    return hash(value)


class _Checker:
    def __init__(self, file: str, opts: CheckOptions, fmt: str | None, seed: int, tokenizer: Any = None):
        self.file = file
        # Token counts (the sample, the exact length check) need the tokenizer; without one nothing is kept.
        self.tokenizer = tokenizer if opts.context_length and not opts.structure_only else None
        self.opts = opts
        self.fmt = fmt  # the file's format, fixed by --format or by its first record
        self.part = Partial(Problems())
        self.rng = random.Random(seed)
        self.label_set = set(opts.labels) if opts.labels else None
        self.regex = re.compile(opts.pattern) if opts.pattern else None
        self.schema_validator = None
        if opts.json_schema:
            import jsonschema

            cls = jsonschema.validators.validator_for(opts.json_schema)
            self.schema_validator = cls(opts.json_schema)
        self.pending_texts: list[str] = []
        self.pending_chars = 0
        self.signer = minhash.Signer(BATCH) if opts.near_duplicates and not opts.structure_only else None
        self.seen = 0  # examples offered to the reservoir sample
        self.long_pending: list[tuple[int, list[dict]]] = []  # long examples not measured yet
        self.long_held = 0  # their bytes

    # One example that parsed: record it and check what applies to every format.
    def example(self, line: int, messages: list[dict], nbytes: int) -> None:
        part = self.part
        part.examples += 1
        if self.opts.structure_only:
            return
        answer = completion(messages) or ""
        prompt = prompt_text(messages)
        system = messages[0]["content"] if messages and messages[0].get("role") == "system" else ""
        part.lines.append(line)
        part.prompt_hash.append(_h64(prompt))
        part.example_hash.append(_h64((system, prompt, answer)))
        if self.signer is not None:
            self.sign([prompt])
        if not part.completions_overflow:
            if len(answer) <= 64:
                part.completions[answer] += 1
            if len(part.completions) > 1000 or len(answer) > 64:
                part.completions_overflow = True
                part.completions.clear()
        self.contract(line, answer)
        if self.tokenizer is None:
            return
        bound = nbytes + self.opts.first_overhead + self.opts.per_message_overhead * len(messages)
        if bound > self.opts.context_length:
            self.long(line, messages, nbytes)
        else:
            self.offer(lambda: messages)

    def offer(self, entry) -> None:
        """Reservoir sampling for token statistics; `entry()` makes what is kept, only if it is."""
        sample, k = self.part.sample, self.opts.sample_size
        self.seen += 1
        if len(sample) < k:
            sample.append((self.rng.random(), entry()))
        else:
            j = int(self.rng.random() * self.seen)
            if j < k:
                sample[j] = (self.rng.random(), entry())

    def long(self, line: int, messages: list[dict], nbytes: int) -> None:
        """An example that may not fit the context: measured exactly, a batch of bounded size at a time."""
        self.part.long += 1
        self.long_pending.append((line, messages))
        self.long_held += nbytes
        if self.long_held > HELD or len(self.long_pending) >= BATCH:
            self.measure_long()

    def measure_long(self) -> None:
        tok, context = self.tokenizer, self.opts.context_length
        longest = self.opts.longest_token_bytes
        pending, self.long_pending, self.long_held = self.long_pending, [], 0
        for line, messages in pending:
            text = tok.render(messages)
            size = len(text.encode("utf-8", "surrogatepass"))
            if longest and size > context * longest:
                # More tokens than the context many times over: said without tokenizing all of it.
                self.part.problems.add(
                    "error",
                    "too_long",
                    "(example)",
                    self.file,
                    line,
                    f"at least {-(-size // longest)} tokens ({size} bytes of text, at most {longest} bytes a "
                    f"token), over the base model's context of {context}: shorten or split it",
                )
                continue
            tokens = tok.count([text])[0]
            del text
            if tokens > context:
                self.part.problems.add(
                    "error",
                    "too_long",
                    "(example)",
                    self.file,
                    line,
                    f"{tokens} tokens, over the base model's context of {context}: shorten or split it",
                )
            else:
                self.offer(lambda m=messages, t=tokens: (t, _prompt_tokens(tok, m)))

    def too_long_line(self, line: int, size: int) -> None:
        opts = self.opts
        if opts.max_line_bytes < LINE_CAP:
            why = (
                f"more than the base model's context of {opts.context_length} tokens can hold many times "
                f"over (at most {opts.longest_token_bytes} bytes a token)"
            )
        else:
            why = f"over the {LINE_CAP // 2**20} MiB a line may hold"
        self.part.problems.add(
            "error",
            "too_long",
            "(line)",
            self.file,
            line,
            f"a line of {size:,} bytes: {why}; not read further: shorten or split it",
        )

    def sign(self, texts: list[str]) -> None:
        """Queue inputs for near-duplicate signing: the first SIGN_CHARS characters of each."""
        texts = [t[:SIGN_CHARS] for t in texts]  # a slice of a short str is the str itself, not a copy
        self.pending_texts.extend(texts)
        self.pending_chars += sum(map(len, texts))
        if len(self.pending_texts) >= BATCH or self.pending_chars > SIGN_HELD:
            self.flush()

    def contract(self, line: int, answer: str) -> None:
        add = self.part.problems.add
        if self.label_set is not None and answer not in self.label_set:
            shown = answer if len(answer) <= 60 else answer[:57] + "..."
            add(
                "error",
                "contract_label",
                "completion",
                self.file,
                line,
                f"label '{shown}' is not in the contract's label set",
            )
        elif self.opts.is_json:
            try:
                value = orjson.loads(answer)
            except orjson.JSONDecodeError as exc:
                add(
                    "error",
                    "contract_json",
                    "completion",
                    self.file,
                    line,
                    f"completion is not valid JSON: {exc}",
                )
                return
            if self.schema_validator is not None:
                error = next(iter(self.schema_validator.iter_errors(value)), None)
                if error is not None:
                    where = "/".join(map(str, error.absolute_path)) or "(root)"
                    add(
                        "error",
                        "contract_schema",
                        "completion",
                        self.file,
                        line,
                        f"completion breaks the schema at {where}: {error.message}",
                    )
        elif self.regex is not None and not self.regex.fullmatch(answer):
            add(
                "error",
                "contract_regex",
                "completion",
                self.file,
                line,
                "completion does not match the contract's regex",
            )

    def flush(self) -> None:
        if self.pending_texts and self.signer is not None:
            self.signer.add(self.pending_texts)
        self.pending_texts = []
        self.pending_chars = 0

    def finish(self) -> Partial:
        self.flush()
        if self.long_pending:
            self.measure_long()
        if self.signer is not None:
            self.part.signatures = self.signer.finish()
            self.part.text_ids = self.signer.ids
            self.signer = None
        return self.part

    def parse_error(self, line_no: int, raw: bytes, exc: Exception) -> None:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            self.part.problems.add(
                "error",
                "invalid_utf8",
                "(line)",
                self.file,
                line_no,
                f"invalid UTF-8 at byte {uexc.start}: save the file as UTF-8",
            )
            return
        self.part.problems.add("error", "invalid_json", "(line)", self.file, line_no, f"invalid JSON: {exc}")

    def record(self, line_no: int, raw: bytes, record: Any) -> None:
        """The general path: one parsed line of any format, every problem reported."""
        add = self.part.problems.add
        if not isinstance(record, dict):
            add(
                "error",
                "not_object",
                "(line)",
                self.file,
                line_no,
                f"each line must be a JSON object, got {type(record).__name__}",
            )
            return
        fmt = detect_format(record)
        if fmt is None:
            keys = ", ".join(sorted(record)[:6]) or "none"
            add(
                "error",
                "unknown_format",
                "(record)",
                self.file,
                line_no,
                f"cannot tell the format from the keys ({keys}): expected messages, prompt/completion, instruction/output or conversations",
            )
            return
        if self.fmt is None:
            self.fmt = fmt
            self.part.first_format = fmt
        elif fmt != self.fmt:
            add(
                "error",
                "mixed_formats",
                "(record)",
                self.file,
                line_no,
                f"this record is {fmt} but the file is {self.fmt}: one format per file",
            )
            return
        messages, problems = normalize(record, fmt)
        if not any(p[0] == "error" for p in problems):
            problems += check_messages(messages)
        for severity, code, fld, message in problems:
            add(severity, code, fld, self.file, line_no, message)
        if not any(p[0] == "error" for p in problems):
            self.part.formats[fmt] += 1
            self.example(line_no, messages, len(raw))

    def single_turn(self, rows: list[tuple[int, int, str, str]]) -> None:
        """Valid single-turn chat examples (user, assistant), by far the most common shape, recorded in
        bulk: one C-level pass per array instead of a Python statement per row and field.

        A row is (line, bytes, prompt, answer): the parsed record is freed at once, and the few examples
        kept (sample, long) get their messages rebuilt, the same two dicts the line held."""
        part, opts = self.part, self.opts
        n = len(rows)
        part.examples += n
        part.formats["openai"] += n
        line_nos, sizes, prompts, answers = zip(*rows)
        part.lines.extend(line_nos)
        part.prompt_hash.extend(map(hash, prompts))
        part.example_hash.extend(map(hash, zip(repeat(""), prompts, answers)))  # as example(): no system
        if not part.completions_overflow:
            # Same end state as counting row by row: overflow is sticky and clears the counts.
            if max(map(len, answers)) > 64:
                part.completions_overflow = True
                part.completions.clear()
            else:
                part.completions.update(answers)
                if len(part.completions) > 1000:
                    part.completions_overflow = True
                    part.completions.clear()
        if self.label_set is not None or opts.is_json or self.regex is not None:
            for line_no, answer in zip(line_nos, answers):
                self.contract(line_no, answer)
        if self.tokenizer is not None:
            limit = opts.context_length - opts.first_overhead - 2 * opts.per_message_overhead
            long = max(sizes) > limit
            sample, k, rng = part.sample, opts.sample_size, self.rng
            seen = self.seen
            for line_no, size, p, c in rows:
                if long and size > limit:
                    self.seen = seen
                    self.long(line_no, _chat(p, c), size)
                    seen = self.seen
                    continue
                seen += 1
                if len(sample) < k:
                    sample.append((rng.random(), _chat(p, c)))
                else:
                    j = int(rng.random() * seen)
                    if j < k:
                        sample[j] = (rng.random(), _chat(p, c))
            self.seen = seen
        if self.signer is not None:
            self.sign(prompts)

    def run(self, path: str, start: int, end: int, first_line: int) -> Partial:
        """Check the lines of `path` that start in [start, end); line numbers count from first_line."""
        add = self.part.problems.add
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        big = BIG_LINE
        rows: list = []
        held = 0  # bytes of the lines in rows
        fast = self.fmt in (None, "openai")
        structure_only = self.opts.structure_only
        counted = 0  # fast-path examples when nothing but their number is recorded
        line_no = first_line - 1
        blanks = None  # the blank_line group, once it exists
        with open(path, "rb") as f:
            for raw in iter_lines(f, start, end, self.opts.max_line_bytes, BLOCK):
                line_no += 1
                if type(raw) is Overlong:
                    self.too_long_line(line_no, raw.size)
                    continue
                if line_no == 1 and raw.startswith(BOM):
                    add(
                        "error",
                        "bom",
                        "(file)",
                        path,
                        1,
                        "the file starts with a UTF-8 byte-order mark: save it as UTF-8 without BOM",
                    )
                    raw = raw[3:]
                raw = raw.rstrip(b"\r")
                if not raw or raw.isspace():
                    # Once the group shows its first locations, a blank line only counts (a file of
                    # millions of newlines costs one increment each).
                    if blanks is not None and len(blanks.first) >= SHOWN:
                        blanks.count += 1
                    else:
                        add("warning", "blank_line", "(line)", path, line_no, "blank line (skipped)")
                        blanks = self.part.problems.groups[("warning", "blank_line", "(line)")]
                    continue
                try:
                    rec = loads(raw) if len(raw) <= big else loads_line(raw)
                except JSONDecodeError as exc:
                    self.parse_error(line_no, raw, exc)
                    continue
                # Fast path: {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]} and nothing else.
                if fast and type(rec) is dict and len(rec) == 1:
                    msgs = rec.get("messages")
                    if type(msgs) is list and len(msgs) == 2:
                        u, a = msgs
                        # Two keys, one "role", and "content" a str: exactly {"role", "content"}
                        # (cheaper than comparing key views).
                        if (
                            type(u) is dict
                            and type(a) is dict
                            and len(u) == 2
                            and len(a) == 2
                            and u.get("role") == "user"
                            and a.get("role") == "assistant"
                        ):
                            p, c = u.get("content"), a.get("content")
                            if (
                                type(p) is str
                                and type(c) is str
                                and p
                                and c
                                and not p.isspace()
                                and not c.isspace()
                            ):
                                if self.fmt is None:
                                    self.fmt = self.part.first_format = "openai"
                                if structure_only:
                                    counted += 1
                                    continue
                                rows.append((line_no, len(raw), p, c))
                                held += len(raw)
                                if len(rows) >= BATCH or held > HELD:
                                    self.single_turn(rows)
                                    rows, held = [], 0
                                continue
                if rows:  # keep every per-example array in line order
                    self.single_turn(rows)
                    rows, held = [], 0
                self.record(line_no, raw, rec)
        if rows:
            self.single_turn(rows)
        self.part.examples += counted
        self.part.formats["openai"] += counted
        return self.finish()


def _prompt_tokens(tokenizer: Any, messages: list[dict]) -> int:
    """Tokens of everything before the final reply, as the statistics count them."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return tokenizer.count([tokenizer.render(messages[:last], add_generation_prompt=True)])[0]


def _chat(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


# The tokenizer of the check under way: forked workers inherit it here instead of receiving a pickled copy.
_TOKENIZER: Any = None


def _check_range(
    path: str, start: int, end: int, first_line: int, opts: CheckOptions, fmt: str | None, seed: int
) -> Partial:
    return _Checker(path, opts, fmt, seed, _TOKENIZER).run(path, start, end, first_line)


def _split_ranges(path: Path, parts: int) -> list[tuple[int, int, int]]:
    """Byte ranges starting at line starts, with the line number of each start."""
    size = path.stat().st_size
    if parts <= 1:
        return [(0, size, 1)]
    bounds = [0]
    with open(path, "rb") as f:
        for i in range(1, parts):
            bounds.append(max(next_line_start(f, size * i // parts), bounds[-1]))
    bounds.append(size)
    ranges = []
    line = 1
    with open(path, "rb") as f:
        for a, b in zip(bounds, bounds[1:]):
            ranges.append((a, b, line))
            # Count newlines in 8 MB blocks: memchr speed, no per-line Python work.
            f.seek(a)
            remaining = b - a
            while remaining > 0:
                block = f.read(min(remaining, 8 * 2**20))
                line += block.count(b"\n")
                remaining -= len(block)
    return ranges


def _first_format(path: Path, opts: CheckOptions) -> str | None:
    if opts.fmt != "auto":
        return opts.fmt
    with open(path, "rb") as f:
        for raw in iter_lines(f, cap=opts.max_line_bytes):
            if type(raw) is Overlong:
                continue
            raw = raw.removeprefix(BOM).strip()
            if raw:
                try:
                    record = loads_line(raw)
                except orjson.JSONDecodeError:
                    return None
                return detect_format(record) if isinstance(record, dict) else None
    return None


@dataclass
class FileResult:
    path: str
    role: str  # 'train' or 'eval'
    part: Partial
    bytes: int
    summary: dict = field(default_factory=dict)  # duplicate counts, filled by the cross-example checks
    bands: Any = None  # LSH bands of part.signatures, computed once for duplicates and leakage


def require_regular_file(path: Path, hint: str) -> None:
    """Raise a TunewiseError unless `path` is a regular file (a symlink to one counts), saying what it is
    instead: a directory, a FIFO or a device would otherwise block, never end, or read as nothing."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise TunewiseError(f"{path}: no such file", hint=hint) from None
    except OSError as exc:
        raise TunewiseError(f"{path}: cannot be read ({exc.strerror})", hint=hint) from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise TunewiseError(f"{path}: is a directory, not a data file", hint=hint)
    kind = (
        "a FIFO (named pipe)"
        if stat.S_ISFIFO(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a special file"
    )
    raise TunewiseError(f"{path}: is not a regular file (it is {kind})", hint=f"give a file on disk; {hint}")


def check_file(path: Path, opts: CheckOptions, role: str = "train", tokenizer: Any = None) -> FileResult:
    """Check one file. With a tokenizer (and opts.context_length) examples are measured in its tokens."""
    global _TOKENIZER
    _TOKENIZER = tokenizer
    try:
        return _check_file(path, opts, role)
    finally:
        _TOKENIZER = None


def _check_file(path: Path, opts: CheckOptions, role: str) -> FileResult:
    require_regular_file(path, "check the path (relative paths are relative to the working directory)")
    size = path.stat().st_size
    if size == 0:
        part = Partial(Problems())
        part.problems.add("error", "empty_file", "(file)", str(path), 0, "the file is empty")
        return FileResult(str(path), role, _merge([part]), 0)
    if path.suffix.lower() == ".csv" or opts.fmt == "csv":
        from tunewise.data.csvfile import check_csv

        return FileResult(str(path), role, _merge([check_csv(path, opts, _TOKENIZER)]), size)
    fmt = _first_format(path, opts)
    workers = opts.workers or (os.cpu_count() or 1)
    parts = workers if size >= PARALLEL_MIN_BYTES else 1
    ranges = _split_ranges(path, parts)
    if len(ranges) == 1:
        partials = [_check_range(str(path), *ranges[0], opts, fmt, 0)]
    else:
        import gc
        import multiprocessing

        # Frozen, the objects every worker inherits (modules, the tokenizer) are never scanned by the
        # workers' collections: a full collection walks them all, and a worker allocates millions of
        # containers, so that walk was 20-30% of its time. It also leaves their shared pages unwritten.
        gc.freeze()
        try:
            # The first range is checked here while the workers check the others: one process fewer to
            # fork and to hold in memory, and one result that is never pickled.
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(len(ranges) - 1, mp_context=context) as pool:
                futures = [
                    pool.submit(_check_range, str(path), a, b, ln, opts, fmt, i)
                    for i, (a, b, ln) in enumerate(ranges)
                    if i > 0
                ]
                partials = [_check_range(str(path), *ranges[0], opts, fmt, 0)]
                partials += [f.result() for f in futures]
        finally:
            gc.unfreeze()
    return FileResult(str(path), role, _merge(partials), size)


def _merge(partials: list[Partial]) -> Partial:
    """One Partial for the file; the per-example arrays become numpy arrays, in line order."""
    out = partials[0]
    for p in partials[1:]:
        out.problems.merge(p.problems)
        out.examples += p.examples
        out.formats.update(p.formats)
        if out.completions_overflow or p.completions_overflow:
            out.completions_overflow = True
            out.completions.clear()
        else:
            out.completions.update(p.completions)
        out.sample.extend(p.sample)
        out.long += p.long
    out.lines = np.concatenate([np.frombuffer(p.lines, dtype=np.uint32) for p in partials])
    out.example_hash = np.concatenate([np.frombuffer(p.example_hash, dtype=np.int64) for p in partials])
    out.prompt_hash = np.concatenate([np.frombuffer(p.prompt_hash, dtype=np.int64) for p in partials])
    signed = [p for p in partials if p.signatures is not None]
    for p in signed:
        p.signatures = (
            np.concatenate(p.signatures) if p.signatures else np.zeros((0, minhash.NUM_PERM), np.uint32)
        )
    if signed:
        # Each worker numbered its distinct texts from 0: shift them past the rows of the workers before it.
        offsets = np.cumsum([0] + [len(p.signatures) for p in signed[:-1]])
        out.text_ids = np.concatenate(
            [np.frombuffer(p.text_ids, dtype=np.uint32).astype(np.int64) + o for p, o in zip(signed, offsets)]
        )
        out.signatures = np.concatenate([p.signatures for p in signed])
    else:
        out.text_ids = np.zeros(0, dtype=np.int64)
    return out


__all__ = ["CheckOptions", "FileResult", "Problems", "Group", "check_file", "FORMATS", "PROVIDER_MIN"]
