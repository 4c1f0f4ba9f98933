"""The README is a user's manual: short, self-contained, and every command in it works as written.

Convention: in ```console blocks a command is a line starting with `$ ` (a trailing `\\` continues it on the
next line); the lines after it, up to the next command, are what it prints, and a line `...` stands for lines
left out. In ```bash blocks every line starting with `tunewise ` or `make ` is a command (a `#` comment after it
is ignored). Inline code spans starting with `tunewise ` name commands too.

Every `tunewise` command and `--flag` named anywhere in the README must exist. The console examples that need no
model and no long run (RUNNABLE) are run for real, in order, in a temporary folder, with `cd` followed; where an
example reads a data file the README assumes you have, the test writes a small one. Their shown output must
appear in what they print.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 300

# Commands run for real: fast, offline, and needing no model weights (data check reads only the tokenizer).
RUNNABLE = {
    ("init",),
    ("data", "check"),
    ("data", "split"),
    ("data", "versions"),
    ("cost",),
    ("pricing",),
    ("advise",),
}


@dataclass
class Example:
    command: str  # as written, continuation lines joined
    output: list[str] = field(default_factory=list)  # the lines shown after it
    runnable_block: bool = True  # from a console block (run in order) rather than bash or inline


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced code block.

    >>> fenced_blocks("a\\n```bash\\nmake demo\\n```\\n")
    [('bash', ['make demo'])]
    """
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                blocks.append((lang, lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def examples(text: str) -> list[Example]:
    """Every command of the README's console and bash blocks, in order, with the output shown after it.

    >>> [(e.command, e.output) for e in examples("```console\\n$ tunewise cost \\\\\\n  --json\\n{}\\n```\\n")]
    [('tunewise cost --json', ['{}'])]
    """
    found: list[Example] = []
    for lang, lines in fenced_blocks(text):
        if lang == "console":
            current: Example | None = None
            pending = ""
            for line in lines:
                if pending or line.startswith("$ "):
                    part = line[2:] if line.startswith("$ ") and not pending else line.strip()
                    pending = f"{pending} {part}".strip() if pending else part
                    if pending.endswith("\\"):
                        pending = pending[:-1].rstrip()
                        continue
                    current = Example(pending)
                    found.append(current)
                    pending = ""
                elif current is not None:
                    current.output.append(line)
        elif lang == "bash":
            for line in lines:
                command = line.split("#", 1)[0].strip()
                if command.startswith(("tunewise ", "make ")):
                    found.append(Example(command, runnable_block=False))
    return found


def inline_commands(text: str) -> list[str]:
    """Inline code spans that name a tunewise command.

    >>> inline_commands("run `tunewise data check FILE...` or `make demo`")
    ['tunewise data check FILE...']
    """
    return [span for span in re.findall(r"`([^`\n]+)`", text) if span.startswith("tunewise ")]


def command_tree() -> object:
    import typer

    from tunewise import cli

    cli._register()
    return typer.main.get_command(cli.app)


def check_command(command: str, root: object) -> str | None:
    """None when every subcommand and long option of a `tunewise ...` command exists, else what is wrong."""
    tokens = command.split()[1:]
    node, path = root, ["tunewise"]
    while tokens and hasattr(node, "commands") and tokens[0] in node.commands:
        node = node.commands[tokens[0]]
        path.append(tokens.pop(0))
    if hasattr(node, "commands"):
        options = [
            t.strip("[]") for t in tokens
        ]  # `[--kind K]`: an optional flag as the usage line writes it
        if not tokens or options[0].startswith("-"):  # the group alone (`tunewise data`) or its own options
            names = {"--help", "-h", *(o for p in node.params for o in p.opts + p.secondary_opts)}
            bad = [t for t in options if t.startswith("-") and t.split("=")[0] not in names]
            return f"`{command}`: unknown option {bad[0]} for {' '.join(path)}" if bad else None
        return f"`{command}`: {' '.join(path)} has no command '{tokens[0]}' (commands: {', '.join(node.commands)})"
    names = {"--help", "-h"}
    for param in node.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    for flag in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", " ".join(tokens)):
        if flag not in names:
            return f"`{command}`: {' '.join(path)} has no option {flag}"
    return None


def problems(text: str) -> list[str]:
    """Every command or flag of the README that the CLI does not have."""
    root = command_tree()
    found = []
    commands = [e.command for e in examples(text)] + inline_commands(text)
    for command in commands:
        if command.startswith("make "):
            target = command.split()[1]
            if not re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M):
                found.append(f"`{command}`: the Makefile has no target '{target}'")
        elif command.startswith("tunewise "):
            problem = check_command(command, root)
            if problem:
                found.append(problem)
    return found


# --- the README itself -------------------------------------------------------------------------------------


def test_readme_is_short_and_self_contained():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES
    assert "../" not in text, "the README names a path outside the repository"
    assert not re.search(r"\bissue[s]? #?\d", text, re.I), "the README cites an issue number"
    # "the guide" means nothing to a reader who never saw it: the README names the practitioner's guide.
    assert not re.search(r"\bthe guide\b", text, re.I)


def test_every_command_and_flag_in_the_readme_exists():
    text = README.read_text(encoding="utf-8")
    assert len(examples(text)) >= 5 and len(inline_commands(text)) >= 10  # the extraction found the commands
    assert problems(text) == []


def test_a_misspelt_flag_or_command_is_caught():
    text = "```console\n$ tunewise data check data/train.jsonl --strictt\n```\nthen `tunewise evaluate` and `tunewise cost --json`\n"
    found = problems(text)
    assert len(found) == 2
    assert "has no option --strictt" in found[0] and "data check" in found[0]
    assert "has no command 'evaluate'" in found[1]
    assert problems("```bash\nmake deploy\n```\n") == ["`make deploy`: the Makefile has no target 'deploy'"]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading.

    >>> _slug("The report: `tunewise report STATE.json --out DIR`")
    'the-report-tunewise-report-statejson---out-dir'
    """
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize(
    "page",
    [
        "README.md",
        "bench/README.md",
        *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
    ],
)
def test_links_between_pages_resolve(page):
    """Every relative link of the manual names a file of the repository and, with `#`, one of its headings."""
    source = ROOT / page
    text = source.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code blocks are not links
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.is_file() or ROOT not in file.parents:
            broken.append(f"{target}: no such file in the repository")
            continue
        if anchor:
            headings = re.findall(
                r"^#+ (.+)$", re.sub(r"```.*?```", "", file.read_text(encoding="utf-8"), flags=re.S), re.M
            )
            if anchor not in {_slug(h) for h in headings}:
                broken.append(f"{target}: {file.name} has no heading with anchor #{anchor}")
    assert broken == []


# --- running the examples ----------------------------------------------------------------------------------


def _write_data(path: Path) -> None:
    """A small valid chat JSONL file for the project in path's ancestors (its label set, when it has one)."""
    labels = ["yes", "no"]
    for folder in path.resolve().parents:
        spec = folder / "tunewise.yaml"
        if spec.is_file():
            contract = (yaml.safe_load(spec.read_text()) or {}).get("contract") or {}
            labels = contract.get("labels") or labels
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": f"Message {i} about case {i * 37 % 101}: please look at it, topic {label}.",
                },
                {"role": "assistant", "content": label},
            ]
        }
        for i, label in enumerate(labels * 15)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _normal(line: str) -> str:
    return " ".join(line.split())


def _shown_lines_appear(shown: list[str], printed: str) -> str | None:
    """None when the shown lines appear in the printed text, in order (`...` skips any number of lines)."""
    lines = [_normal(x) for x in printed.splitlines()]
    at = 0
    for want in (_normal(x) for x in shown):
        if not want or want == "...":
            continue
        try:
            at = lines.index(want, at) + 1
        except ValueError:
            return want
    return None


def test_the_readme_console_examples_run(tmp_path):
    text = README.read_text(encoding="utf-8")
    cwd = tmp_path
    ran = []
    for example in (e for e in examples(text) if e.runnable_block):
        argv = shlex.split(example.command)
        if argv[0] == "cd":
            cwd = cwd / argv[1]
            assert cwd.is_dir(), (
                f"`{example.command}`: the README's earlier commands did not create {argv[1]}"
            )
            continue
        if argv[0] != "tunewise":
            continue
        path = tuple(argv[1:3]) if argv[1] == "data" else (argv[1],)
        if path not in RUNNABLE:
            continue
        if path == ("data", "check"):
            for name in (a for a in argv[3:] if not a.startswith("-") and a.endswith((".jsonl", ".csv"))):
                if not (cwd / name).exists():
                    _write_data(cwd / name)
        result = subprocess.run(
            [sys.executable, "-m", "tunewise", *argv[1:]],
            cwd=cwd,
            env=os.environ.copy(),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, (
            f"`{example.command}` exited {result.returncode}:\n{result.stderr[-2000:]}"
        )
        missing = _shown_lines_appear(example.output, result.stdout)
        assert missing is None, (
            f"`{example.command}` did not print the README's line:\n{missing}\n---\n{result.stdout}"
        )
        ran.append(" ".join(argv[:3]))
    # The walkthrough and the two model-free examples ran (a README without them would pass vacuously).
    assert {
        "tunewise init my-task",
        "tunewise data check",
        "tunewise cost --prompted-cost",
        "tunewise advise --problem",
    } <= set(ran)


def _bounds(metadata: list) -> str:
    """The bounds column of docs/spec.md for a field's pydantic constraints."""
    low = next((("ge", m.ge) for m in metadata if hasattr(m, "ge")), None) or next(
        (("gt", m.gt) for m in metadata if hasattr(m, "gt")), None
    )
    high = next((("le", m.le) for m in metadata if hasattr(m, "le")), None) or next(
        (("lt", m.lt) for m in metadata if hasattr(m, "lt")), None
    )
    if low and high and low[0] == "ge" and high[0] == "le":
        return f"{low[1]}-{high[1]}"
    if low and high:
        return f"{low[1]} {'<=' if low[0] == 'ge' else '<'} x {'<=' if high[0] == 'le' else '<'} {high[1]}"
    return f"{'>=' if low[0] == 'ge' else '>'} {low[1]}"


def test_bounds_render_as_the_reference_writes_them():
    from annotated_types import Ge, Gt, Le, Lt

    assert _bounds([Ge(1), Le(1000)]) == "1-1000"
    assert _bounds([Gt(0), Lt(1)]) == "0 < x < 1"
    assert _bounds([Ge(0), Lt(0.5)]) == "0 <= x < 0.5"
    assert (_bounds([Ge(16)]), _bounds([Gt(0)])) == (">= 16", "> 0")


def test_the_spec_reference_states_the_bounds_the_code_enforces():
    """docs/spec.md's hyperparameter bounds are the ones the spec, the CLI and the jobs API all check."""
    import typing

    from tunewise.spec import Hyperparameters

    rows = {}
    for line in (ROOT / "docs" / "spec.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows.setdefault(cells[0].strip("`"), cells[2])
    checked = 0
    for name, info in Hyperparameters.model_fields.items():
        metadata = list(info.metadata)
        for arg in typing.get_args(info.annotation):  # `auto | Annotated[int, Field(ge=..)]`
            for extra in getattr(arg, "__metadata__", ()):
                metadata += getattr(extra, "metadata", [])
        metadata = [
            m
            for m in metadata
            if hasattr(m, "ge") or hasattr(m, "gt") or hasattr(m, "le") or hasattr(m, "lt")
        ]
        if not metadata:
            continue
        assert rows.get(name) == _bounds(metadata), f"docs/spec.md: `{name}` bounds {rows.get(name)!r}"
        checked += 1
    assert checked >= 8
