"""The data commands through the real CLI entry point: exit codes, output, files, registry rows."""

from __future__ import annotations

import json
from pathlib import Path

from tunewise.data.load import load_examples


def chat(user: str, answer: str) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}
    )


def test_check_exit_codes_and_json(tmp_path: Path, run_cli):
    good = tmp_path / "good.jsonl"
    good.write_text(
        "\n".join(chat(f"question {i} about cards", "card" if i % 2 else "loan") for i in range(60)) + "\n"
    )
    code, out, err = run_cli("data", "check", good, "--no-tokens", cwd=tmp_path)
    assert code == 0, err
    assert "60 examples" in out and "0 error(s)" in out
    code, out, _ = run_cli("data", "check", good, "--no-tokens", "--json", cwd=tmp_path)
    payload = json.loads(out)
    assert payload["ok"] is True and payload["stats"]["labels"] == {"card": 30, "loan": 30}
    # Warnings only: exit 0, but 1 with --strict.
    code, out, _ = run_cli("data", "check", good, "--no-tokens", "--for", "vertex", cwd=tmp_path)
    assert code == 0
    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(chat(f"q {i}", "a") for i in range(12)) + "\n")
    code, out, _ = run_cli("data", "check", few, "--no-tokens", cwd=tmp_path)
    assert code == 0 and "too_few" in out
    code, _, _ = run_cli("data", "check", few, "--no-tokens", "--strict", cwd=tmp_path)
    assert code == 1
    code, out, _ = run_cli("data", "check", few, "--no-tokens", "--for", "vertex", cwd=tmp_path)
    assert code == 1 and "at least 16 examples" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(chat("q", "a") + "\n{oops\n")
    code, out, err = run_cli("data", "check", bad, "--no-tokens", cwd=tmp_path)
    assert code == 1 and f"{bad}:2: invalid JSON" in out and "Traceback" not in err


def test_check_user_errors_are_one_line(tmp_path: Path, run_cli):
    code, _, err = run_cli("data", "check", tmp_path / "missing.jsonl", "--no-tokens", cwd=tmp_path)
    assert code == 1 and "no such file" in err and "Traceback" not in err
    code, _, err = run_cli("data", "check", "x.jsonl", "--for", "nowhere", cwd=tmp_path)
    assert code == 1 and "unknown provider 'nowhere'" in err


def test_check_uses_the_project_spec(tmp_path: Path, run_cli):
    code, _, _ = run_cli("init", tmp_path / "p")
    assert code == 0
    data = tmp_path / "p" / "data" / "train.jsonl"
    data.write_text(
        "\n".join(chat(f"order {i} never came", "delivery") for i in range(50))
        + "\n"
        + chat("x", "bogus")
        + "\n"
    )
    code, out, err = run_cli("data", "check", "--no-tokens", cwd=tmp_path / "p")
    assert code == 1, out
    assert "label 'bogus' is not in the contract's label set" in out
    assert "train.jsonl:51" in out


def test_split_is_deterministic_stratified_and_versioned(tmp_path: Path, run_cli):
    run_cli("init", tmp_path / "p")
    project = tmp_path / "p"
    src = project / "data" / "all.jsonl"
    src.write_text("\n".join(chat(f"text {i}", "refund" if i % 4 else "billing") for i in range(100)) + "\n")
    code, out, err = run_cli("data", "split", src, "--out", project / "data", "--json", cwd=project)
    assert code == 0, err
    result = json.loads(out)
    assert result["train"]["examples"] == 80 and result["eval"]["examples"] == 20 and result["stratified"]
    held = load_examples(project / "data" / "eval.jsonl")
    answers = [e["messages"][-1]["content"] for e in held]
    assert answers.count("billing") == 5 and answers.count("refund") == 15
    first = (project / "data" / "eval.jsonl").read_bytes()
    run_cli("data", "split", src, "--out", project / "data", cwd=project)
    assert (project / "data" / "eval.jsonl").read_bytes() == first
    code, out, _ = run_cli("data", "versions", "--json", cwd=project)
    rows = json.loads(out)
    assert {r["name"] for r in rows} == {"train", "eval"} and len(rows) == 2  # the re-split added no version
    assert {r["n_examples"] for r in rows} == {80, 20}
    assert result["train"]["version"] in {r["id"][:16] for r in rows}


def test_every_command_has_help_with_an_example(run_cli):
    from tunewise.cli import _register, app

    _register()
    import typer.main

    group = typer.main.get_command(app)
    stack = [((), group)]
    seen = 0
    while stack:
        path, cmd = stack.pop()
        subs = getattr(cmd, "commands", None)
        if subs:
            stack.extend(((*path, name), sub) for name, sub in subs.items())
            continue
        code, out, _ = run_cli(*path, "--help")
        assert code == 0, path
        assert "Example" in out, f"`tunewise {' '.join(path)} --help` shows no example"
        seen += 1
    assert seen >= 5


def test_convert_writes_the_provider_format(tmp_path: Path, run_cli):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "Where is my parcel?", "completion": "delivery"}) + "\n")
    out = tmp_path / "vertex.jsonl"
    code, stdout, err = run_cli("data", "convert", src, "--to", "vertex", "--out", out, cwd=tmp_path)
    assert code == 0, err
    record = json.loads(out.read_text())
    assert record["contents"] == [
        {"role": "user", "parts": [{"text": "Where is my parcel?"}]},
        {"role": "model", "parts": [{"text": "delivery"}]},
    ]
    code, _, err = run_cli("data", "convert", src, "--to", "azure", "--out", out, cwd=tmp_path)
    assert code == 1 and "unknown provider 'azure'" in err


def test_check_with_no_example_fails_with_too_few(tmp_path: Path, run_cli):
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    code, out, err = run_cli("data", "check", blank, "--no-tokens", cwd=tmp_path)
    assert code == 1, out
    assert "error[too_few]" in out and "0 training examples" in out and "Traceback" not in err
    code, out, _ = run_cli("data", "check", blank, "--no-tokens", "--json", cwd=tmp_path)
    payload = json.loads(out)
    assert payload["ok"] is False
    assert [p["code"] for p in payload["problems"] if p["severity"] == "error"] == ["too_few"]


def test_check_names_what_a_non_file_is(tmp_path: Path, run_cli):
    import os

    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    expected = {
        folder: "is a directory, not a data file",
        fifo: "is not a regular file (it is a FIFO (named pipe))",
        Path("/dev/zero"): "is not a regular file (it is a character device)",
    }
    for path, words in expected.items():
        code, out, err = run_cli("data", "check", path, "--no-tokens", cwd=tmp_path)
        assert code == 1 and out == ""
        assert err.startswith(f"error: {path}: {words}\n") and "Traceback" not in err
        assert "no such file" not in err


def test_loader_names_what_a_non_file_is(tmp_path: Path):
    import pytest

    from tunewise.errors import TunewiseError

    with pytest.raises(TunewiseError, match="is a directory, not a data file"):
        load_examples(tmp_path)
    with pytest.raises(TunewiseError, match=r"is not a regular file \(it is a character device\)"):
        load_examples(Path("/dev/zero"))
