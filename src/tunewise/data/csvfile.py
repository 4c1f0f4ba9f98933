"""CSV input with a column mapping (prompt, completion, optional system), read as a stream.

Lines come from data/lines.py, so memory stays bounded whatever the file holds: a line over the cap, bytes
that are not UTF-8 and a field the csv module refuses each end the read with one error naming the line.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunewise.data.check import BOM, CheckOptions, Partial, Problems, _Checker
from tunewise.data.formats import check_messages
from tunewise.data.lines import Overlong, iter_lines


class BadLine(Exception):
    """A line the CSV reader cannot take: (line, code, message)."""

    def __init__(self, line: int, code: str, message: str):
        super().__init__(message)
        self.line, self.code, self.message = line, code, message


def csv_lines(f: Any, cap: int) -> Iterator[str]:
    """The decoded lines of a CSV file opened in binary mode, with their newline, for csv.reader; raises
    BadLine at a line over `cap` bytes or one that is not UTF-8. A leading byte-order mark is dropped."""
    for line_no, raw in enumerate(iter_lines(f, cap=cap), 1):
        if type(raw) is Overlong:
            raise BadLine(line_no, "too_long", f"a line of {raw.size:,} bytes: not read further")
        if line_no == 1:
            raw = raw.removeprefix(BOM)
        try:
            yield raw.decode("utf-8") + "\n"
        except UnicodeDecodeError as exc:
            raise BadLine(
                line_no, "invalid_utf8", f"invalid UTF-8 at byte {exc.start}: save the file as UTF-8"
            ) from None


@contextlib.contextmanager
def field_limit(chars: int) -> Iterator[None]:
    """csv's field size limit (a process-wide setting) raised to `chars` for one read."""
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, chars))
    try:
        yield
    finally:
        csv.field_size_limit(old)


def check_csv(path: Path, opts: CheckOptions, tokenizer: Any = None) -> Partial:
    cols = opts.csv_columns or {}
    checker = _Checker(str(path), opts, "csv", 0, tokenizer)
    add = checker.part.problems.add
    with open(path, "rb") as f, field_limit(opts.max_line_bytes):
        if f.read(3) == BOM:
            add(
                "error",
                "bom",
                "(file)",
                str(path),
                1,
                "the file starts with a UTF-8 byte-order mark: save it as UTF-8 without BOM",
            )
        reader = csv.DictReader(csv_lines(f, opts.max_line_bytes))
        try:
            _check_rows(reader, cols, checker, str(path))
        except BadLine as exc:
            add("error", exc.code, "(line)", str(path), exc.line, exc.message)
        except csv.Error as exc:
            add("error", "invalid_csv", "(line)", str(path), reader.line_num, f"invalid CSV: {exc}")
    return checker.finish()


def _check_rows(reader: csv.DictReader, cols: dict, checker: _Checker, path: str) -> None:
    add = checker.part.problems.add
    header = reader.fieldnames or []
    prompt_col, completion_col = cols.get("prompt"), cols.get("completion")
    if not prompt_col or not completion_col:
        add(
            "error",
            "csv_columns",
            "(file)",
            path,
            1,
            f"a CSV file needs a column mapping: data.csv_columns (or --prompt-column/--completion-column); columns are: {', '.join(header)}",
        )
        return
    missing = [c for c in (prompt_col, completion_col, cols.get("system")) if c and c not in header]
    if missing:
        add(
            "error",
            "missing_key",
            "(header)",
            path,
            1,
            f"column(s) {', '.join(missing)} not in the header ({', '.join(header)})",
        )
        return
    for row in reader:
        line = reader.line_num
        messages = []
        if cols.get("system") and row.get(cols["system"]):
            messages.append({"role": "system", "content": row[cols["system"]]})
        messages.append({"role": "user", "content": row.get(prompt_col) or ""})
        messages.append({"role": "assistant", "content": row.get(completion_col) or ""})
        problems = check_messages(messages)
        for severity, code, fld, message in problems:
            add(severity, code, fld, path, line, message)
        if not any(p[0] == "error" for p in problems):
            checker.part.formats["csv"] += 1
            checker.example(line, messages, sum(len(m["content"].encode()) for m in messages) + 16)


__all__ = ["BadLine", "check_csv", "csv_lines", "field_limit", "Problems"]
