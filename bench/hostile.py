"""Benchmark: the data checker and the spec loader over generated hostile inputs, each in a subprocess.

Each case runs the real CLI: `tunewise data check FILE` (with the embedded model's tokenizer, so the length
limits apply; `--no-tokens` cases use the 16 MiB hard line cap instead) or, for specs, `tunewise data check
--spec SPEC ok.jsonl`, which loads the spec first. For each class it prints the worst wall time and peak RSS
(the process and all its workers, sampled every 20 ms from /proc) and the outcome:

- `report`: the check ran and printed its report (the hostile line named as an error, with its line),
- `error`: one `error:` line (and its hint), exit code 1, no traceback,
- `crash`: a traceback or a signal; `timeout`: killed after --timeout seconds.

A class PASSes when every case ends in `report` or `error`, its peak RSS is under --rss-mb and its worst
time under --seconds. The bounds are the ones docs/data.md states.

    .venv/bin/python bench/hostile.py              # default sizes, about a minute on 2 cores
    .venv/bin/python bench/hostile.py --big        # adds a 512 MB line (written to disk, 512 MB)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_check import tree_rss  # noqa: E402  (the same process-tree memory measure)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 2**20


def run(args: list[str], timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "tunewise", *args], stdout=out, stderr=err, env=env)
        peak = 0
        timed_out = False
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            if time.perf_counter() - started > timeout:
                proc.kill()
                timed_out = True
                proc.wait()
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    code = proc.returncode
    if timed_out:
        outcome = "timeout"
    elif "Traceback" in stderr or code not in (0, 1):
        outcome = "crash"
    elif stderr.startswith("error:") and code == 1 and not stdout.strip():
        outcome = "error"
    elif stdout.rstrip().splitlines() and stdout.rstrip().splitlines()[-1].startswith(("ok:", "FAILED:")):
        outcome = "report"
    else:
        outcome = "crash"
    first = stderr.splitlines()[0] if outcome == "error" else _named(stdout)
    return {"seconds": seconds, "rss": peak, "outcome": outcome, "code": code, "says": first[:110]}


def _named(stdout: str) -> str:
    """The first error the report names, with its location."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error[") and i + 1 < len(lines):
            return f"{line.split(' ')[0]} {lines[i + 1].strip()}"
    return lines[-1] if lines else ""


# --- hostile inputs ---------------------------------------------------------------------------------------


def chat(user: str, answer: str = "ok") -> bytes:
    record = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    return json.dumps(record).encode() + b"\n"


def fill(path: Path, head: bytes, body: bytes, size: int, tail: bytes) -> Path:
    """head, then body repeated to `size` bytes, then tail, written 4 MiB at a time."""
    with open(path, "wb") as f:
        f.write(head)
        chunk = body * max(1, (4 * MiB) // len(body))
        left = size
        while left > 0:
            f.write(chunk[:left])
            left -= len(chunk)
        f.write(tail)
    return path


def data_cases(folder: Path, big: bool) -> dict[str, list[tuple[str, Path, list[str]]]]:
    good = b"".join(chat(f"question {i} about my card") for i in range(3))
    prefix = b'{"messages": [{"role": "user", "content": "'
    suffix = b'"}, {"role": "assistant", "content": "ok"}]}\n'
    cases: dict[str, list[tuple[str, Path, list[str]]]] = {}

    def add(cls: str, name: str, path: Path, flags: list[str] | None = None) -> None:
        cases.setdefault(cls, []).append((name, path, flags or []))

    deep = folder / "deep_flow.jsonl"
    deep.write_bytes(good + b"[" * 100_000 + b"]" * 100_000 + b"\n")
    add("deep nesting", "100k-deep JSON array", deep)
    deep_obj = folder / "deep_obj.jsonl"
    deep_obj.write_bytes(good + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"\n")
    add("deep nesting", "5k-deep JSON object", deep_obj)
    sizes = [30] + ([512] if big else [])
    for mb in sizes:
        path = fill(folder / f"line{mb}.jsonl", good + prefix, b"x", mb * MiB, suffix)
        add("huge line", f"{mb} MB line", path)
        add("huge line", f"{mb} MB line, --no-tokens", path, ["--no-tokens"])
    path = fill(folder / "field10.jsonl", good + prefix, b"hello world ", 10 * MiB, suffix)
    add("huge string field", "10 MB field (tokenizer)", path)
    add("huge string field", "10 MB field, --no-tokens", path, ["--no-tokens"])
    path = fill(folder / "field15.jsonl", good + prefix, b"q", 15 * MiB, suffix)
    add("huge string field", "15 MB field under the 16 MiB cap, --no-tokens", path, ["--no-tokens"])
    path = fill(folder / "escapes15.jsonl", good + prefix + b"\\ud83d\\ude00", b"\\u00e9", 15 * MiB, suffix)
    add("huge string field", "15 MB of \\u escapes with a surrogate pair, --no-tokens", path, ["--no-tokens"])
    # One surrogate escape sends the line to orjson (which refuses lone surrogates): its 13x working memory.
    path = fill(folder / "surrogate15.jsonl", good + prefix + b"\\ud83d\\ude00", b"a", 15 * MiB, suffix)
    add("huge string field", "15 MB field after a surrogate escape, --no-tokens", path, ["--no-tokens"])
    just = folder / "near_context.jsonl"
    with open(just, "wb") as f:
        f.write(good)
        for i in range(24):  # each just under context x longest token: tokenized in full
            f.write(chat(f"{i} " + "hello world " * 100_000))
    add("huge string field", "24 examples of 1.2 MB (tokenized in full)", just)
    sparse = folder / "sparse.jsonl"
    with open(sparse, "wb") as f:
        f.truncate(2 * 2**30)
    add("2 GB sparse file", "2 GB of zeros, no newline", sparse)
    blob = folder / "binary.jsonl"
    blob.write_bytes(os.urandom(32 * MiB))
    add("binary", "32 MB of random bytes", blob)
    lines = folder / "many_lines.jsonl"
    lines.write_bytes(b"\n" * (64 * MiB))
    add("binary", "64 MB of newlines", lines)
    text = "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"question {i}, café"},
                    {"role": "assistant", "content": "ok"},
                ]
            },
            ensure_ascii=False,
        )
        + "\n"
        for i in range(200)
    )
    for enc, bom in (("utf-16", ""), ("latin-1", ""), ("utf-8", "\ufeff")):
        path = folder / f"enc_{enc}{'_bom' if bom else ''}.jsonl"
        path.write_bytes((bom + text).encode(enc))
        add("bad encodings", f"{enc}{' with BOM' if bom else ''}", path)
    csv = folder / "huge.csv"
    fill(csv, b"text,label\nhi,a\n" + b'"', b"word ", 20 * MiB, b'",b\n')
    add(
        "huge CSV field",
        "20 MB quoted CSV field",
        csv,
        ["--prompt-column", "text", "--completion-column", "label"],
    )
    return cases


def spec_cases(folder: Path) -> dict[str, list[tuple[str, Path, list[str]]]]:
    base = "task: hostile\ncontract:\n  type: labels\n  labels: [a, b]\n"
    cases: dict[str, list[tuple[str, Path, list[str]]]] = {}

    def add(cls: str, name: str, text: bytes) -> None:
        path = folder / f"spec_{sum(map(len, cases.values()))}.yaml"
        path.write_bytes(text)
        cases.setdefault(cls, []).append((name, path, []))

    bomb = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        bomb.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    add(
        "spec: alias bomb",
        "billion laughs (10^9 values)",
        (base + "extra:\n  " + "\n  ".join(bomb) + "\n").encode(),
    )
    add(
        "spec: deep nesting", "100k-deep flow", (base + "x: " + "[" * 100_000 + "]" * 100_000 + "\n").encode()
    )
    # "- - - v" is a block sequence three deep on one line: 5,000 deep in 10 kB.
    add("spec: deep nesting", "5k-deep block", (base + "x:\n  " + "- " * 5000 + "v\n").encode())
    add("spec: huge values", "a 100k-digit integer", (base + "x: " + "9" * 100_000 + "\n").encode())
    add("spec: huge values", "a 2 MiB file", (base + "# " + "x" * (2 * MiB) + "\n").encode())
    add("spec: bad encodings", "Latin-1 bytes", (base + "description: café\n").encode("latin-1"))
    add("spec: bad encodings", "UTF-16", (base).encode("utf-16"))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="add a 512 MB line (512 MB of disk)")
    parser.add_argument(
        "--rss-mb", type=float, default=1024, help="the peak RSS bound per case (all processes)"
    )
    parser.add_argument("--seconds", type=float, default=60, help="the time bound per case")
    parser.add_argument("--timeout", type=float, default=180, help="kill a case after this long")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--only", default="", help="run only the classes whose name contains this")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="tunewise-hostile-") as tmp:
        folder = Path(tmp)
        ok = folder / "ok.jsonl"
        ok.write_bytes(b"".join(chat(f"question {i}", "a") for i in range(60)))
        plans = [
            (cls, name, ["data", "check", str(path), *flags])
            for cls, items in data_cases(folder, args.big).items()
            for name, path, flags in items
        ]
        plans += [
            (cls, name, ["data", "check", "--spec", str(path), "--no-tokens", str(ok)])
            for cls, items in spec_cases(folder).items()
            for name, path, _ in items
        ]
        plans = [p for p in plans if args.only in p[0]]
        started = time.perf_counter()
        for cls, name, command in plans:
            r = run(command, args.timeout)
            r.update(cls=cls, case=name)
            results.append(r)
            print(
                f"  {cls:18} {name:50} {r['seconds']:6.1f} s {r['rss'] / MiB:7.0f} MiB  {r['outcome']:7} {r['says']}",
                file=sys.stderr,
                flush=True,
            )
        total = time.perf_counter() - started
    print(f"\nbounds: peak RSS {args.rss_mb:.0f} MiB (all processes), {args.seconds:.0f} s per case\n")
    print("| class | cases | worst time | peak RSS | outcomes | verdict |")
    print("| --- | --- | --- | --- | --- | --- |")
    classes: dict[str, list[dict]] = {}
    for r in results:
        classes.setdefault(r["cls"], []).append(r)
    failed = 0
    for cls, rs in classes.items():
        worst = max(r["seconds"] for r in rs)
        rss = max(r["rss"] for r in rs) / MiB
        outcomes = sorted({r["outcome"] for r in rs})
        good = (
            all(r["outcome"] in ("report", "error") for r in rs)
            and rss <= args.rss_mb
            and worst <= args.seconds
        )
        failed += not good
        print(
            f"| {cls} | {len(rs)} | {worst:.1f} s | {rss:.0f} MiB | {', '.join(outcomes)} | {'PASS' if good else 'FAIL'} |"
        )
    print(f"\n{len(results)} cases in {total:.0f} s; {failed} class(es) failed")
    if args.json:
        print(json.dumps(results, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
