"""The whole data check over a set of files: per-file checks, then what needs every file at once
(duplicates, near-duplicates, leakage between train and eval, counts, balance, token statistics)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunewise.data import minhash
from tunewise.data.check import PROVIDER_MIN, CheckOptions, FileResult, Problems, check_file, line_cap
from tunewise.spec import JsonContract, LabelContract, RegexContract, Spec

# The guide's data thresholds.
UNRELIABLE_BELOW = 50  # "results below 50 examples are unreliable"
RECOMMENDED = (200, 500)  # "200 to 500 high-quality examples"
MANY_CLASSES = 10  # "for complex classification tasks with 10+ categories"
PER_CLASS = (50, 100)  # "plan for 50 to 100 examples per category"
IMBALANCE_RATIO = 10  # warn when the largest class has 10x the examples of the smallest
DEFAULT_EPOCHS = 3  # the guide / OpenAI cookbook heuristic, for the training-token estimate


@dataclass
class DataReport:
    files: list[dict[str, Any]]
    problems: Problems
    stats: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return self.problems.count("error")

    @property
    def warnings(self) -> int:
        return self.problems.count("warning")

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.errors == 0,
            "errors": self.errors,
            "warnings": self.warnings,
            "files": self.files,
            "problems": [g.to_json() for g in self.problems.sorted()],
            "stats": self.stats,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def options_from_spec(spec: Spec | None, provider: str | None = None, tokenizer=None) -> CheckOptions:
    opts = CheckOptions(provider=provider)
    if spec is not None:
        contract = spec.contract
        if isinstance(contract, LabelContract):
            opts.labels = contract.labels
        elif isinstance(contract, JsonContract):
            opts.is_json = True
            opts.json_schema = contract.json_schema or None
        elif isinstance(contract, RegexContract):
            opts.pattern = contract.pattern
        opts.fmt = spec.data.format
        if spec.data.csv_columns:
            opts.csv_columns = spec.data.csv_columns.model_dump()
    if tokenizer is not None:
        opts.context_length = tokenizer.context_length
        first = max(tokenizer.template_overhead((r,)) for r in ("system", "user"))
        per = max(
            tokenizer.template_overhead(("system", r)) - tokenizer.template_overhead(("system",))
            for r in ("user", "assistant", "system")
        )
        opts.first_overhead, opts.per_message_overhead = first, per
        opts.longest_token_bytes = longest_token_bytes(tokenizer)
        opts.max_line_bytes = line_cap(opts.context_length, opts.longest_token_bytes)
    return opts


def longest_token_bytes(tokenizer) -> int:
    """An upper bound on the bytes of text one token covers: the longest vocabulary entry in UTF-8. Entries
    spell a byte with at least one character (byte-level BPE's 'Ġ' is one byte written in two, a byte
    fallback '<0x41>' one in six), so this never undercounts."""
    vocab = tokenizer.tokenizer.get_vocab(with_added_tokens=True)
    return max((len(token.encode("utf-8", "surrogatepass")) for token in vocab), default=0)


def check_files(
    train: list[Path], eval: list[Path] | None = None, opts: CheckOptions | None = None, tokenizer=None
) -> DataReport:
    started = time.perf_counter()
    opts = opts or CheckOptions()
    results = [check_file(p, opts, "train", tokenizer) for p in train] + [
        check_file(p, opts, "eval", tokenizer) for p in eval or []
    ]
    problems = Problems()
    for r in results:
        problems.merge(r.part.problems)
    notes: list[str] = []
    if opts.structure_only:
        notes.append(
            "structure only: the bytes, JSON, format, fields, roles, contents and weights of every line, and "
            "the example counts; no output contract, duplicates, leakage, label balance, token statistics or "
            "length limits"
        )
    else:
        _duplicates(results, problems, opts)
        _leakage(results, problems)
    _counts(results, problems, opts)
    stats = _statistics(results, tokenizer, opts, problems, notes)
    files = [
        {
            "path": r.path,
            "role": r.role,
            "bytes": r.bytes,
            "examples": r.part.examples,
            "format": r.part.first_format
            or (max(r.part.formats, key=r.part.formats.get) if r.part.formats else None),
            **r.summary,
        }
        for r in results
    ]
    return DataReport(files, problems, stats, notes, time.perf_counter() - started)


def _groups(keys: np.ndarray) -> list[np.ndarray]:
    """Index groups of equal keys with more than one member."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    ends = np.append(starts[1:], len(keys))
    big = ends - starts > 1  # filtered in numpy: most keys of a large file are unique
    return [order[a:b] for a, b in zip(starts[big].tolist(), ends[big].tolist())]


def _bands(r: FileResult) -> np.ndarray:
    if r.bands is None:
        r.bands = minhash.bands(r.part.signatures)
    return r.bands


def _duplicates(results: list[FileResult], problems: Problems, opts: CheckOptions) -> None:
    for r in results:
        part = r.part
        if part.examples < 2:
            continue
        lines, ex = part.lines, part.example_hash
        exact_groups = _groups(ex)
        for g in exact_groups:
            first = int(lines[g].min())
            for i in sorted(lines[g].tolist())[1:]:
                problems.add(
                    "warning", "duplicate", "(example)", r.path, i, f"exact duplicate of line {first}"
                )
        # Same input, different answers: the data contradicts itself.
        for g in _groups(part.prompt_hash):
            if len(set(ex[g].tolist())) > 1:
                ls = sorted(lines[g].tolist())
                problems.add(
                    "warning",
                    "conflicting_answers",
                    "(example)",
                    r.path,
                    ls[0],
                    f"the same input has different answers on lines {', '.join(map(str, ls[:6]))}{' ...' if len(ls) > 6 else ''}",
                )
        if opts.near_duplicates and part.signatures is not None and len(part.signatures):
            # Components over distinct normalized inputs (equal ones have equal signatures, so they are
            # near-duplicates of each other anyway). Rows are numbered by first appearance, so a component's
            # smallest row, its label, orders the groups as its earliest example would.
            labels = minhash.cluster(part.signatures, _bands(r))[part.text_ids]
            exact_of = np.zeros(len(ex), dtype=bool)
            for g in exact_groups:
                exact_of[g[1:]] = True
            near = [g for g in _groups(labels) if (~exact_of[g]).sum() > 1]
            near.sort(key=len, reverse=True)
            for g in near:
                ls = sorted(lines[g].tolist())
                shown = ", ".join(map(str, ls[:4])) + (f" and {len(ls) - 4} more" if len(ls) > 4 else "")
                problems.add(
                    "warning",
                    "near_duplicates",
                    "(example)",
                    r.path,
                    ls[0],
                    f"a group of {len(ls)} near-duplicate inputs (5-gram Jaccard about {minhash.THRESHOLD} or more, numbers ignored): lines {shown}",
                )
            r.summary["near_duplicate_groups"] = len(near)
            r.summary["near_duplicate_examples"] = int(sum(len(g) for g in near))
        r.summary["exact_duplicates"] = int(sum(len(g) - 1 for g in exact_groups))


def _leakage(results: list[FileResult], problems: Problems) -> None:
    train = [r for r in results if r.role == "train" and r.part.examples]
    evals = [r for r in results if r.role == "eval" and r.part.examples]
    if not train or not evals:
        return
    train_hashes = np.concatenate([r.part.prompt_hash for r in train])
    signed = [r for r in train if r.part.signatures is not None and len(r.part.signatures)]
    index = []  # per band: train rows sorted by band value, and those values
    if signed:
        train_sig = np.concatenate([r.part.signatures for r in signed])
        train_bands = np.concatenate([_bands(r) for r in signed])
        for b in range(minhash.BANDS):
            # Stable: among equal values the earliest train row comes first, the bucket's representative.
            order = np.argsort(train_bands[:, b], kind="stable")
            index.append((order, train_bands[order, b]))
    for r in evals:
        part = r.part
        exact = np.isin(part.prompt_hash, train_hashes)
        near = np.zeros(len(exact), dtype=bool)
        if index and part.signatures is not None and len(part.signatures):
            sig, eval_bands = part.signatures, _bands(r)
            near_row = np.zeros(len(sig), dtype=bool)
            for b, (order, values) in enumerate(index):
                pos = np.minimum(np.searchsorted(values, eval_bands[:, b]), len(values) - 1)
                hit = np.flatnonzero(values[pos] == eval_bands[:, b])
                ok = minhash.near(sig[hit], train_sig[order[pos[hit]]])
                near_row[hit[ok]] = True
            near = near_row[part.text_ids]
        for i in np.flatnonzero(exact | near).tolist():
            line = int(part.lines[i])
            if exact[i]:
                problems.add(
                    "error",
                    "leakage",
                    "(example)",
                    r.path,
                    line,
                    "this held-out input also appears in the training data",
                )
            else:
                problems.add(
                    "warning",
                    "near_leakage",
                    "(example)",
                    r.path,
                    line,
                    "this held-out input is a near-duplicate of a training input",
                )


def _counts(results: list[FileResult], problems: Problems, opts: CheckOptions) -> None:
    train = [r for r in results if r.role == "train"]
    n = sum(r.part.examples for r in train)
    where = train[0].path if train else ""
    if train and n == 0:
        problems.add(
            "error",
            "too_few",
            "(file)",
            where,
            0,
            "0 training examples: no line holds a valid example, so there is nothing to train on",
        )
    elif train and n > 0:
        if n < UNRELIABLE_BELOW:
            problems.add(
                "warning",
                "too_few",
                "(file)",
                where,
                0,
                f"{n} training examples: results below {UNRELIABLE_BELOW} are unreliable (the practitioner's guide recommends 200-500; docs/guide.md)",
            )
        elif n < RECOMMENDED[0]:
            problems.add(
                "warning",
                "few",
                "(file)",
                where,
                0,
                f"{n} training examples: the practitioner's guide (docs/guide.md) recommends {RECOMMENDED[0]}-{RECOMMENDED[1]} validated examples",
            )
    if opts.provider:
        minimum, why = PROVIDER_MIN[opts.provider]
        if n < minimum:
            problems.add("error", "provider_minimum", "(file)", where, 0, f"{n} training examples: {why}")
    # Labels: from the contract, or detected when the answers are few distinct short strings.
    counts = _label_counts(train)
    if counts:
        k = len(counts)
        if k >= MANY_CLASSES:
            small = sorted((c, lab) for lab, c in counts.items() if c < PER_CLASS[0])
            if small:
                shown = ", ".join(f"{lab} ({c})" for c, lab in small[:5])
                problems.add(
                    "warning",
                    "few_per_class",
                    "(labels)",
                    where,
                    0,
                    f"{len(small)} of {k} classes have fewer than {PER_CLASS[0]} examples (the practitioner's guide, docs/guide.md: {PER_CLASS[0]}-{PER_CLASS[1]} per class with {MANY_CLASSES}+ classes): {shown}",
                )
        most, least = max(counts.values()), min(counts.values())
        if least and most / least >= IMBALANCE_RATIO:
            problems.add(
                "warning",
                "imbalance",
                "(labels)",
                where,
                0,
                f"class imbalance: the largest class has {most} examples, the smallest {least} ({most / least:.0f}x)",
            )
        if opts.labels:
            missing = [lab for lab in opts.labels if lab not in counts]
            if missing:
                problems.add(
                    "warning",
                    "label_unused",
                    "(labels)",
                    where,
                    0,
                    f"contract labels with no training example: {', '.join(missing[:10])}",
                )


def _label_counts(train: list[FileResult]) -> dict[str, int]:
    total: dict[str, int] = {}
    n = 0
    for r in train:
        if r.part.completions_overflow:
            return {}
        n += r.part.examples
        for k, v in r.part.completions.items():
            total[k] = total.get(k, 0) + v
    # Detected labels: few distinct answers, each repeated (a classification task).
    if not total or len(total) > max(2, n // 5):
        return {}
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


def _pct(values: list[int], q: float) -> int:
    return int(np.percentile(values, q, method="nearest")) if values else 0


def _statistics(
    results: list[FileResult], tokenizer, opts: CheckOptions, problems: Problems, notes: list[str]
) -> dict[str, Any]:
    train = [r for r in results if r.role == "train"]
    n = sum(r.part.examples for r in train)
    stats: dict[str, Any] = {
        "examples": n,
        "eval_examples": sum(r.part.examples for r in results if r.role == "eval"),
    }
    labels = _label_counts(train)
    if labels:
        stats["labels"] = labels
    if opts.structure_only:
        return stats
    if tokenizer is None:
        notes.append("token statistics and length limits skipped (no tokenizer)")
        return stats
    # The exact length check ran while the files were read (check.py measures every example above the
    # byte bound, few or none).
    candidates = sum(r.part.long for r in results)
    notes.append(
        f"length limit checked exactly for every example: {candidates} example(s) had more bytes than the "
        f"context ({tokenizer.context_length} tokens) allows for and were measured; a token covers at least one byte"
    )
    sample = sorted((x for r in train for x in r.part.sample), key=lambda x: x[0])[: opts.sample_size]
    if not sample:
        return stats
    # Entries are messages, or (tokens, prompt tokens) of a long example already measured.
    messages_list = [m for _, m in sample if not isinstance(m, tuple)]
    measured = [m for _, m in sample if isinstance(m, tuple)]
    last_assistant = [max(i for i, m in enumerate(ms) if m["role"] == "assistant") for ms in messages_list]
    full = tokenizer.count([tokenizer.render(ms) for ms in messages_list]) + [t for t, _ in measured]
    prompt = tokenizer.count(
        [tokenizer.render(ms[:i], add_generation_prompt=True) for ms, i in zip(messages_list, last_assistant)]
    ) + [p for _, p in measured]
    comp = [f - p for f, p in zip(full, prompt)]
    k = len(sample)
    exact = k >= n
    stats["tokens"] = {
        "sampled": k,
        "exact": exact,
        "prompt": {"p50": _pct(prompt, 50), "p95": _pct(prompt, 95), "max": max(prompt)},
        "completion": {"p50": _pct(comp, 50), "p95": _pct(comp, 95), "max": max(comp)},
        "total": {
            "p50": _pct(full, 50),
            "p95": _pct(full, 95),
            "max": max(full),
            "mean": round(sum(full) / k, 1),
        },
        "trained_share": round(sum(comp) / max(1, sum(full)), 4),
        "estimated_training_tokens": int(round(sum(full) / k * n)),
        "estimated_training_tokens_x_epochs": int(round(sum(full) / k * n * DEFAULT_EPOCHS)),
        "epochs_assumed": DEFAULT_EPOCHS,
    }
    if not exact:
        notes.append(f"token statistics are estimated from a seeded sample of {k} of {n} examples")
    return stats


__all__ = ["DataReport", "check_files", "options_from_spec"]
