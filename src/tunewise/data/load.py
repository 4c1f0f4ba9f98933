"""Read a data file of any supported format into normalized chat examples, refusing invalid input.

The checker (`data check`) reports every problem; this loader is for stages that need clean examples and
stops at the first file with errors, pointing at the checker.
"""

from __future__ import annotations

import csv
from pathlib import Path

import orjson

from tunewise.data.formats import check_messages, detect_format, normalize
from tunewise.errors import TunewiseError


def load_examples(path: Path, fmt: str = "auto", csv_columns: dict | None = None) -> list[dict]:
    from tunewise.data.check import require_regular_file

    require_regular_file(path, "check data.train / data.eval in tunewise.yaml")
    check_format(fmt)
    problems: list[str] = []
    examples: list[dict] = []
    if path.suffix.lower() == ".csv" or fmt == "csv":
        rows = _csv_rows(path, csv_columns, problems)
    else:
        rows = _jsonl_rows(path, fmt, problems)
    for line, messages in rows:
        errors = [p for p in check_messages(messages) if p[0] == "error"]
        if errors:
            problems.extend(f"{path}:{line}: {e[2]}: {e[3]}" for e in errors)
        else:
            examples.append({"messages": messages})
        if len(problems) >= 5:
            break
    if problems:
        shown = "\n  ".join(problems[:5])
        raise TunewiseError(
            f"{path} has invalid examples:\n  {shown}",
            hint=f"run `tunewise data check {path}` for the full report",
        )
    if not examples:
        raise TunewiseError(f"{path} holds no examples")
    return examples


def check_format(fmt: str) -> None:
    """Raise a TunewiseError unless `fmt` is 'auto' or an input format tunewise reads."""
    from tunewise.data.formats import FORMATS
    from tunewise.errors import nearest

    if fmt != "auto" and fmt not in FORMATS:
        guess = nearest(fmt, FORMATS)
        tip = f"did you mean '{guess}'? " if guess else ""
        raise TunewiseError(f"unknown format '{fmt}'", hint=f"{tip}use auto or one of {', '.join(FORMATS)}")


def _jsonl_rows(path: Path, fmt: str, problems: list[str]):
    from tunewise.data.check import BOM, LINE_CAP, loads_line
    from tunewise.data.lines import Overlong, iter_lines

    file_fmt = None if fmt == "auto" else fmt
    with open(path, "rb") as f:
        for line_no, raw in enumerate(iter_lines(f, cap=LINE_CAP), 1):
            if type(raw) is Overlong:
                problems.append(
                    f"{path}:{line_no}: a line of {raw.size:,} bytes, over the {LINE_CAP:,} a line may hold"
                )
                return
            raw = raw.removeprefix(BOM) if line_no == 1 else raw
            if not raw.strip():
                continue
            try:
                record = loads_line(raw.rstrip(b"\r"))
            except orjson.JSONDecodeError as exc:
                problems.append(f"{path}:{line_no}: invalid JSON or UTF-8: {exc}")
                return
            if not isinstance(record, dict) or (found := detect_format(record)) is None:
                problems.append(f"{path}:{line_no}: not a record of a known format")
                return
            file_fmt = file_fmt or found
            messages, found_problems = normalize(record, file_fmt)
            errors = [p for p in found_problems if p[0] == "error"]
            if errors:
                problems.extend(f"{path}:{line_no}: {e[2]}: {e[3]}" for e in errors)
                return
            yield line_no, messages


def _csv_rows(path: Path, columns: dict | None, problems: list[str]):
    if not columns:
        problems.append(f"{path}: a CSV file needs data.csv_columns (prompt, completion)")
        return
    from tunewise.data.check import LINE_CAP
    from tunewise.data.csvfile import BadLine, csv_lines, field_limit

    with open(path, "rb") as f, field_limit(LINE_CAP):
        reader = csv.DictReader(csv_lines(f, LINE_CAP))
        try:
            for row in reader:
                messages = []
                if columns.get("system") and row.get(columns["system"]):
                    messages.append({"role": "system", "content": row[columns["system"]]})
                messages.append({"role": "user", "content": row.get(columns["prompt"]) or ""})
                messages.append({"role": "assistant", "content": row.get(columns["completion"]) or ""})
                yield reader.line_num, messages
        except BadLine as exc:
            problems.append(f"{path}:{exc.line}: {exc.message}")
        except csv.Error as exc:
            problems.append(f"{path}:{reader.line_num}: invalid CSV: {exc}")


def load_spec_split(root: Path, spec) -> tuple[list[dict], list[dict], str]:
    """The training and held-out examples a spec names: `data.eval` when given, else a deterministic split of
    `data.train` (stratified by label for a label contract). Returns (train, held_out, how)."""
    from tunewise.data.split import split_examples
    from tunewise.spec import LabelContract

    data = spec.data
    csv = data.csv_columns.model_dump() if data.csv_columns else None
    train = [ex for p in data.train for ex in load_examples(root / p, data.format, csv)]
    if data.eval:
        held = [ex for p in data.eval for ex in load_examples(root / p, data.format, csv)]
        return train, held, "data.eval"
    labels = spec.contract.labels if isinstance(spec.contract, LabelContract) else None
    train, held = split_examples(train, data.eval_fraction, data.seed, labels)
    return (
        train,
        held,
        f"a {'stratified ' if labels else ''}split of data.train ({data.eval_fraction:.0%} held out)",
    )
