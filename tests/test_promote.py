"""Promotion and rollback end to end: `tunewise promote` and `tunewise rollback` change what a running server
answers for a model name (no restart), checked with the official `openai` client against the runs' own engines,
and `/v1/models` lists the alias."""

from __future__ import annotations

from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.test_serve_inference import BASE, client, running  # noqa: E402
from tunewise.project import Project  # noqa: E402
from tunewise.serve.inference import ServeSettings  # noqa: E402

CHATS = [[{"role": "user", "content": text}] for text in ("really awful", "quite dull", "the film was good")]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return Project(tmp_path_factory.mktemp("promote"))


def train(project: Project, data: Path, epochs: int, learning_rate: float) -> str:
    from tunewise.train import TrainConfig, run

    config = TrainConfig(
        data=[str(data)], base=BASE, epochs=epochs, batch_size=8, learning_rate=learning_rate,
        precision="float32", threads=1, progress=False,
    )  # fmt: skip
    result = run(config, project)
    assert result.status == "succeeded"
    return Path(result.run_dir).name


@pytest.fixture(scope="module")
def runs(project, tmp_path_factory) -> tuple[str, str]:
    """Two LoRA runs on the tiny model that answer differently."""
    from tests.test_train import write_chat

    folder = tmp_path_factory.mktemp("data")
    data = write_chat(folder / "train.jsonl", 32)
    # The same chats with every label swapped: a run that learns the opposite answers.
    swapped = folder / "swapped.jsonl"
    text = data.read_text().replace('"positive"', '"@"').replace('"negative"', '"positive"')
    swapped.write_text(text.replace('"@"', '"negative"'))
    return train(project, data, 3, 2e-2), train(project, swapped, 3, 2e-2)


def answers(project: Project, run_id: str) -> list[str]:
    from tunewise.evaluate.engine import LocalEngine
    from tunewise.evaluate.run import load_fine_tuned

    model, tokenizer, _ = load_fine_tuned(project, run_id)
    return [g.text for g in LocalEngine(model, tokenizer).generate(CHATS, max_new_tokens=8)]


def test_promote_serve_rollback_serve_again(project, runs, run_cli):
    first, second = runs
    expected = {first: answers(project, first), second: answers(project, second)}
    assert expected[first] != expected[second]  # else the test could not tell the runs apart
    root = str(project.root)
    code, stdout, stderr = run_cli("promote", first, "--as", "support", "--by", "ana", "--project", root)
    assert code == 0, stderr
    assert stdout.strip() == f"support -> {first}"

    settings = ServeSettings(base=BASE, preload=True, max_tokens_cap=64)
    with running(project, settings, no_auth=True) as (url, _app):
        api = client(url, "unused")

        def served() -> list[str]:
            return [
                api.chat.completions.create(model="support", messages=chat, temperature=0, max_tokens=8)
                .choices[0]
                .message.content
                for chat in CHATS
            ]

        assert [m.id for m in api.models.list().data] == [BASE, "support"]
        assert served() == expected[first]

        code, stdout, stderr = run_cli("promote", second, "--as", "support", "--by", "ben", "--project", root)
        assert code == 0, stderr
        assert stdout.strip() == f"support -> {second} (was {first})"
        assert served() == expected[second]  # the same server, no restart

        code, stdout, stderr = run_cli("rollback", "support", "--by", "cleo", "--project", root)
        assert code == 0, stderr
        assert stdout.strip() == f"support -> {first} (was {second})"
        assert served() == expected[first]
        with pytest.raises(openai.NotFoundError):
            api.chat.completions.create(model="nobody", messages=CHATS[0], max_tokens=4)

    code, stdout, _ = run_cli("aliases", "support", "--json", "--project", root)
    import json

    log = json.loads(stdout)
    assert [(e["action"], e["run_id"], e["changed_by"]) for e in log] == [
        ("promote", first, "ana"),
        ("promote", second, "ben"),
        ("rollback", first, "cleo"),
    ]


def test_cli_errors_are_one_line_with_a_hint(project, runs, run_cli):
    root = str(project.root)
    code, _, stderr = run_cli("rollback", "nobody", "--project", root)
    assert code == 1 and "error: no alias 'nobody'" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli("promote", "train-nope", "--as", "x", "--project", root)
    assert code == 1 and "no train or job run 'train-nope'" in stderr
