"""Hostile data files: the reader is linear and bounded, one example's cost is capped, and every outcome is a
report naming the line (or one error line), never a crash or a hang."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewise.data.check import CheckOptions
from tunewise.data.lines import Overlong, iter_lines, next_line_start
from tunewise.data.load import load_examples
from tunewise.data.validate import check_files, options_from_spec
from tunewise.errors import TunewiseError
from tunewise.models.tokenizer import ChatTokenizer
from tunewise.spec import EMBEDDED_MODEL

MiB = 2**20


def chat(user: str, answer: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    )


@pytest.fixture(scope="module")
def tokenizer() -> ChatTokenizer:
    return ChatTokenizer.for_base(EMBEDDED_MODEL)


def problems_of(report) -> dict[str, list[tuple[int, str]]]:
    found: dict[str, list[tuple[int, str]]] = {}
    for group in report.problems.sorted():
        found.setdefault(group.code, []).extend((line, message) for _, line, message in group.first)
    return found


# --- the line reader --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=80).map(lambda b: bytes(b"ab\n\r"[x % 4] for x in b)),
    cap=st.integers(0, 12),
    block=st.integers(1, 9),
)
def test_reader_yields_the_lines_of_bytes_split(data: bytes, cap: int, block: int):
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it does not start another
    expected = [line if len(line) <= cap else Overlong(len(line)) for line in lines]
    assert list(iter_lines(io.BytesIO(data), cap=cap, block=block)) == expected


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=60).map(lambda b: bytes(b"ab\n"[x % 3] for x in b)), cut=st.integers(0, 60))
def test_ranges_split_at_line_starts_read_every_line_once(data: bytes, cut: int):
    f = io.BytesIO(data)
    middle = next_line_start(f, min(cut, len(data)))
    assert middle == len(data) or data[middle - 1 : middle] == b"\n"
    both = list(iter_lines(f, 0, middle, block=4)) + list(iter_lines(f, middle, len(data), block=4))
    assert both == list(iter_lines(f, block=4))


def test_a_huge_line_is_counted_not_held():
    """A 48 MiB line with a 1 MiB cap: its size is reported and the reader never holds more than a few
    blocks (tracemalloc counts every bytes object the reader makes)."""
    block = MiB
    data = io.BytesIO(b'{"a": 1}\n' + b"x" * (48 * MiB) + b"\n" + b'{"b": 2}')
    tracemalloc.start()
    try:
        out = list(iter_lines(data, cap=MiB, block=block))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [b'{"a": 1}', Overlong(48 * MiB), b'{"b": 2}']
    assert peak < 4 * block


def test_next_line_start_without_newlines_is_the_end():
    assert next_line_start(io.BytesIO(b"\0" * 100), 10, block=7) == 100
    assert next_line_start(io.BytesIO(b"ab\ncd\n"), 1) == 3


# --- the checker ------------------------------------------------------------------------------------------


def test_a_line_longer_than_the_context_many_times_over_is_reported_unread(tmp_path: Path, tokenizer):
    opts = options_from_spec(None, None, tokenizer)
    # 8,192 tokens x the vocabulary's longest entry x 6 bytes of JSON per byte of text, plus slack
    assert opts.max_line_bytes == 8192 * opts.longest_token_bytes * 6 + 2**16
    path = tmp_path / "train.jsonl"
    huge = chat("x" * (opts.max_line_bytes + 10), "a")
    path.write_text("\n".join([chat("hello", "a"), huge, chat("bye", "b")]) + "\n")
    report = check_files([path], None, opts, tokenizer)
    [(line, message)] = problems_of(report)["too_long"]
    assert line == 2
    assert f"a line of {len(huge):,} bytes" in message and "context of 8192 tokens" in message
    assert report.to_json()["files"][0]["examples"] == 2


def test_a_text_many_times_the_context_is_too_long_without_tokenizing(tmp_path: Path, tokenizer):
    """Under the line cap but with more bytes of text than the context's tokens could cover: too long, from
    the byte count alone."""
    opts = options_from_spec(None, None, tokenizer)
    text_bytes = 8192 * opts.longest_token_bytes + 1000
    path = tmp_path / "train.jsonl"
    path.write_text(chat("hi", "a") + "\n" + chat("y" * text_bytes, "a") + "\n")
    counted: list[int] = []
    real_count = tokenizer.count

    class Watched:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def count(self, texts):
            counted.extend(len(t) for t in texts)
            return real_count(texts)

    report = check_files([path], None, opts, Watched())
    [(line, message)] = problems_of(report)["too_long"]
    assert line == 2 and message.startswith("at least ") and "bytes of text" in message
    assert max(counted) < 1000  # only the short example (and the statistics' renders) were tokenized


def test_a_long_example_that_fits_is_measured_exactly_and_counted_in_the_statistics(tmp_path, tokenizer):
    opts = options_from_spec(None, None, tokenizer)
    long_prompt = "hello world " * 1000  # more bytes than 8,192, fewer tokens
    messages = [{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "ok"}]
    exact = tokenizer.count([tokenizer.render(messages)])[0]
    assert len(long_prompt) > 8192 and exact < 8192
    path = tmp_path / "train.jsonl"
    path.write_text(chat("hi", "ok") + "\n" + json.dumps({"messages": messages}) + "\n")
    report = check_files([path], None, opts, tokenizer).to_json()
    assert report["stats"]["tokens"]["total"]["max"] == exact
    assert report["stats"]["tokens"]["sampled"] == 2
    assert "too_long" not in {p["code"] for p in report["problems"]}
    assert any("1 example(s) had more bytes" in n for n in report["notes"])


def test_without_a_tokenizer_lines_over_the_hard_cap_are_refused_by_size(tmp_path: Path):
    path = tmp_path / "train.jsonl"
    path.write_text(chat("a", "b") + "\n" + chat("z" * 5000, "b") + "\n")
    report = check_files([path], None, CheckOptions(max_line_bytes=4096), None)
    [(line, message)] = problems_of(report)["too_long"]
    assert line == 2 and "a line of 5,0" in message


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sparse_file_of_zeros_is_one_too_long_line(tmp_path: Path, workers: int):
    path = tmp_path / "zeros.jsonl"
    with open(path, "wb") as f:
        f.truncate(40 * MiB)  # sparse: no disk used, 40 MiB of NUL bytes, no newline
    report = check_files([path], None, CheckOptions(workers=workers), None)
    found = problems_of(report)
    assert found["too_long"] == [(1, f"a line of {40 * MiB:,} bytes: over the 16 MiB a line may hold; "
                                      "not read further: shorten or split it")]  # fmt: skip
    assert found["too_few"][0][0] == 0


def test_checking_a_huge_line_holds_a_bounded_amount(tmp_path: Path):
    """A 40 MiB line (over the 16 MiB cap) and a 12 MiB string field (under it, parsed): the checker's own
    allocations stay under a few times the parsed line."""
    path = tmp_path / "big.jsonl"
    path.write_text(chat("q" * (12 * MiB), "a") + "\n" + "x" * (40 * MiB) + "\n" + chat("hi", "a") + "\n")
    tracemalloc.start()
    try:
        report = check_files([path], None, CheckOptions(workers=1), None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [line for line, _ in problems_of(report)["too_long"]] == [2]
    assert report.to_json()["files"][0]["examples"] == 2
    # One 12 MiB line: its pieces and their join, its decoded text and the parsed string, a block in flight
    # (orjson alone would take 13 times the line).
    assert peak < 12 * MiB * 5 + 8 * MiB


def test_csv_reports_the_line_of_bad_bytes_and_takes_big_fields(tmp_path: Path):
    path = tmp_path / "train.csv"
    big = "w " * 100_000  # 200,000 characters: over the csv module's default field limit
    path.write_bytes(
        b"text,label\n" + b'"' + big.encode() + b'",a\n' + b"ok,b\n" + b"caf\xe9,c\n" + b"more,d\n"
    )
    opts = CheckOptions(csv_columns={"prompt": "text", "completion": "label"}, near_duplicates=False)
    report = check_files([path], None, opts, None)
    assert problems_of(report)["invalid_utf8"] == [(4, "invalid UTF-8 at byte 3: save the file as UTF-8")]
    assert report.to_json()["files"][0]["examples"] == 2


def test_csv_line_over_the_cap_is_named(tmp_path: Path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\nhi,a\n" + "y" * 5000 + ",b\n")
    opts = CheckOptions(csv_columns={"prompt": "text", "completion": "label"}, max_line_bytes=4096)
    report = check_files([path], None, opts, None)
    assert problems_of(report)["too_long"][0][0] == 3


def test_the_loader_names_a_line_over_the_cap(tmp_path: Path, monkeypatch):
    import tunewise.data.check as check_module

    monkeypatch.setattr(check_module, "LINE_CAP", 1000)
    path = tmp_path / "train.jsonl"
    path.write_text(chat("a", "b") + "\n" + chat("c" * 2000, "d") + "\n")
    with pytest.raises(TunewiseError, match=r"train.jsonl:2: a line of 2,0\d\d bytes"):
        load_examples(path)


def test_binary_is_reported_line_by_line(tmp_path: Path):
    path = tmp_path / "blob.jsonl"
    path.write_bytes(bytes(range(256)) * 64)
    report = check_files([path], None, CheckOptions(), None)
    codes = problems_of(report)
    assert "invalid_utf8" in codes and report.errors >= 2


@pytest.mark.parametrize(
    "raw",
    [
        b'{"messages": [{"role": "user", "content": "caf\\u00e9 \\ud83d\\ude00"}], "n": 1.5e3}',
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": "\\ud800"}',  # a lone surrogate
        b"[" * 5000 + b"]" * 5000,
        b'{"a": 1,}',
        b'{"a": "caf\xe9"}',  # Latin-1 bytes
        b"  [1, 2]  ",
    ],
)
def test_long_lines_parse_to_the_same_verdict(raw: bytes, monkeypatch):
    """Lines over BIG_LINE go to the json module; what it accepts and refuses must match orjson."""
    import orjson

    import tunewise.data.check as check_module

    try:
        expected = orjson.loads(raw)
    except orjson.JSONDecodeError:
        expected = "refused"
    monkeypatch.setattr(check_module, "BIG_LINE", 0)
    try:
        got = check_module.loads_line(raw)
    except orjson.JSONDecodeError:
        got = "refused"
    assert got == expected
