"""The loop after launch end to end, on the tiny model: a running `tunewise serve` captures what the official
`openai` client sends, the traffic is exported, labelled by a script, imported, drift is reported, a gated retrain
decides, and the lineage shows it all."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import TICKET_TEXTS, tiny_label_project

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

NEW_TEXTS = {"other": "my crypto wallet token vanished from the exchange"}


def test_capture_export_label_import_drift_retrain_lineage(tmp_path, run_cli):
    from tunewise.data.load import load_spec_split
    from tunewise.evaluate.run import run_evaluation
    from tunewise.lifecycle.capture import CaptureSettings, traffic
    from tunewise.registry.aliases import promote
    from tunewise.serve.inference import ServeSettings
    from tunewise.spec import load_spec
    from tunewise.train.config import TrainConfig
    from tunewise.train.loop import run as train_run

    project = tiny_label_project(tmp_path / "tickets", examples=40, samples=1)
    spec = load_spec(project.spec_path)
    model = spec.task.name
    train, held, _ = load_spec_split(project.root, spec)
    fit = project.root / "data" / "fit.jsonl"
    fit.write_text("".join(json.dumps(e) + "\n" for e in train))
    config = TrainConfig.from_spec(spec, data=[str(fit)], precision="float32", threads=1, progress=False)
    first = train_run(config, project)
    assert first.status == "succeeded"
    run_evaluation(spec, project, train, held, ["fine-tuned"], fine_tuned_run=first.run_id)
    registry = project.registry()
    promote(registry, model, first.run_id, by="test")
    registry.close()

    # 1. Serve the model with capture on, and send it old and new kinds of tickets.
    rng = random.Random(5)
    sent: list[tuple[str, str]] = []  # (text, the label a labeller would give)
    for i in range(24):
        label = rng.choice(sorted(TICKET_TEXTS))
        sent.append((f"{TICKET_TEXTS[label]} again {i}", label))
    for i in range(24):
        sent.append((f"{NEW_TEXTS['other']} case {i}", "other"))
    settings = ServeSettings(
        base="tiny:random", adapters={model: first.run_id}, preload=True, max_tokens_cap=8
    )
    capture = CaptureSettings(models=(model,))
    with serving(project, settings, capture) as url:
        client = openai.OpenAI(base_url=url, api_key="not-needed", max_retries=0, timeout=60)
        for text, _ in sent:
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": text}], max_tokens=4
            )
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "mail me at eve@example.org"}], max_tokens=4
        )
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "streamed question"}],
            max_tokens=4,
            stream=True,
        )
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        client.chat.completions.create(  # another model name: not captured
            model="tiny:random", messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
    rows = traffic(project)
    assert len(rows) == len(sent) + 2 and {r["model"] for r in rows} == {model}
    assert rows[-2]["messages"][0]["content"] == "mail me at [EMAIL]"
    assert rows[-1]["messages"][0]["content"] == "streamed question" and rows[-1]["response"] == streamed
    assert all(r["completion_tokens"] and r["latency_ms"] > 0 for r in rows)

    # 2. Export, label by script (the gold label replaces the draft), import.
    exported = tmp_path / "to-label.jsonl"
    code, out, err = run_cli("traffic", "export", "--to", exported, cwd=project.root)
    assert code == 0, err
    assert f"{len(sent) + 2} exchange(s) written" in out
    gold = dict(sent)
    labelled = tmp_path / "labelled.jsonl"
    lines = []
    for record in map(json.loads, exported.read_text().splitlines()):
        text = record["messages"][0]["content"]
        if text in gold:
            record["messages"][-1]["content"] = gold[text]
            lines.append(json.dumps(record))
    labelled.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli("traffic", "import", labelled, cwd=project.root)
    assert code == 0, err
    assert f"{len(sent)} labelled example(s), {len(sent)} traced to captured traffic" in out

    # 3. Drift: half the traffic is a kind training never saw.
    code, out, err = run_cli("drift", "--json", cwd=project.root)
    assert code == 0, err
    report = json.loads(out)
    assert report["n_live"] == len(sent) + 2 and report["run"] == first.run_id
    assert report["inputs"]["moved"] and "inputs" in report["moved"]
    assert report["accuracy"]["n_live"] == len(sent)
    assert report["verdict"].startswith(("drifting", "retrain recommended"))
    code, out, err = run_cli("drift", cwd=project.root)
    assert code == 0 and "verdict: " in out and "words more frequent now:" in out

    # 4. Gated retrain on the tiny model: the rule is printed with its numbers, and the decision is kept.
    code, out, err = run_cli("retrain", cwd=project.root)
    assert code == 0, err
    assert "rule: promote when the candidate is not significantly worse" in out
    assert f"old held-out set (n={len(held)}): current " in out
    assert f"new labelled sample (n={len(sent) // 2}): current " in out
    assert "decision: " in out
    promoted = "decision: promote the candidate" in out

    # 5. Lineage: datasets -> runs -> evaluations -> gate decision -> promotions, with dates.
    code, out, err = run_cli("lineage", "--json", cwd=project.root)
    assert code == 0, err
    got = json.loads(out)
    assert got["runs"][0]["id"] == first.run_id and len(got["runs"]) == 2
    assert len(got["evaluations"]) >= 3  # the first evaluation, and both models on both sets in the retrain
    assert got["decisions"][0]["promoted"] is promoted
    assert any(p["relation"] == "import" for d in got["datasets"] for p in d["parents"])
    assert len(got["promotions"]) == (2 if promoted else 1)
    code, out, err = run_cli("lineage", cwd=project.root)
    assert code == 0 and "gate decisions:" in out and "promotions:" in out


@contextmanager
def serving(project, settings, capture) -> Iterator[str]:
    """A real server with capture on, on 127.0.0.1:<free port>; yields its base URL."""
    from tunewise.serve.app import bind, make_server

    sock = bind("127.0.0.1", 0)
    server = make_server(project, settings, sock, no_auth=True, start_worker=False, capture=capture)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
