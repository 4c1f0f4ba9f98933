"""CSV input with a column mapping (prompt, completion, optional system)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tunewise.data.check import CheckOptions, Partial, Problems, _Checker
from tunewise.data.formats import check_messages


def check_csv(path: Path, opts: CheckOptions) -> Partial:
    cols = opts.csv_columns or {}
    checker = _Checker(str(path), opts, "csv", 0)
    add = checker.part.problems.add
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        add(
            "error",
            "bom",
            "(file)",
            str(path),
            1,
            "the file starts with a UTF-8 byte-order mark: save it as UTF-8 without BOM",
        )
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        add(
            "error",
            "invalid_utf8",
            "(line)",
            str(path),
            line,
            f"invalid UTF-8 at byte {exc.start}: save the file as UTF-8",
        )
        return checker.part
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    prompt_col, completion_col = cols.get("prompt"), cols.get("completion")
    if not prompt_col or not completion_col:
        add(
            "error",
            "csv_columns",
            "(file)",
            str(path),
            1,
            f"a CSV file needs a column mapping: data.csv_columns (or --prompt-column/--completion-column); columns are: {', '.join(header)}",
        )
        return checker.part
    missing = [c for c in (prompt_col, completion_col, cols.get("system")) if c and c not in header]
    if missing:
        add(
            "error",
            "missing_key",
            "(header)",
            str(path),
            1,
            f"column(s) {', '.join(missing)} not in the header ({', '.join(header)})",
        )
        return checker.part
    for row in reader:
        line = reader.line_num
        messages = []
        if cols.get("system") and row.get(cols["system"]):
            messages.append({"role": "system", "content": row[cols["system"]]})
        messages.append({"role": "user", "content": row.get(prompt_col) or ""})
        messages.append({"role": "assistant", "content": row.get(completion_col) or ""})
        problems = check_messages(messages)
        for severity, code, fld, message in problems:
            add(severity, code, fld, str(path), line, message)
        if not any(p[0] == "error" for p in problems):
            checker.part.formats["csv"] += 1
            checker.example(line, messages, sum(len(m["content"].encode()) for m in messages) + 16)
    return checker.finish()


__all__ = ["check_csv", "Problems"]
