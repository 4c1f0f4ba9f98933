"""The files and fine-tuning jobs API, driven by the official `openai` client against the real server on a
loopback port: upload (and rejection with line numbers), a job on the tiny model from queued to succeeded,
its events, checkpoints and model, pagination, cancellation, authentication, and a server SIGKILLed mid-job
whose restart resumes the job from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from tunewise.project import Project  # noqa: E402

WORDS = {"good": "positive", "great": "positive", "bad": "negative", "awful": "negative"}


def chat_lines(n: int) -> str:
    """n short sentiment conversations, one JSON object per line."""
    words = sorted(WORDS)
    lines = []
    for i in range(n):
        word = words[i % len(words)]
        messages = [
            {"role": "user", "content": f"the film was {'really ' * (i % 3)}{word}"},
            {"role": "assistant", "content": WORDS[word]},
        ]
        lines.append(json.dumps({"messages": messages}))
    return "\n".join(lines) + "\n"


def upload(client, text: str, name: str = "train.jsonl"):
    return client.files.create(file=(name, text.encode(), "application/jsonl"), purpose="fine-tune")


def supervised(**hyperparameters) -> dict:
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def wait_for(
    predicate, timeout: float, interval: float = 0.5, what: str = "condition", log: Path | None = None
):
    """Poll `predicate` until it is truthy; on a timeout, the failure shows the end of `log` (a job's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    tail = f"\n--- end of {log} ---\n{log.read_text()[-4000:]}" if log is not None and log.is_file() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")


def wait_status(client, job_id: str, statuses: tuple[str, ...], timeout: float = 180.0):
    def done():
        job = client.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in statuses else None

    return wait_for(done, timeout, what=f"job {job_id} to reach {statuses}")


def all_events(client, job_id: str) -> list:
    """Every event, oldest first (the API lists newest first; the client pages with `after`)."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


# --- a server in this process -------------------------------------------------------------------------


class Server:
    """uvicorn serving `create_app(project)` on 127.0.0.1:<free port> in a thread."""

    def __init__(self, project: Project):
        import uvicorn

        from tunewise.serve.app import create_app
        from tunewise.serve.inference import ServeSettings

        self.app = create_app(project, settings=ServeSettings(base="tiny:random"))
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        wait_for(lambda: self.server.started, 30, 0.05, "the server to start")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    # One torch thread in the training processes: with the server, the client and the tests of others on a
    # small machine, torch's default (a thread per core) spins against them and runs many times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return Project(tmp_path)


@pytest.fixture
def api_key(project) -> str:
    from tunewise.serve.auth import create_key

    return create_key(project, "test")[1]


@pytest.fixture
def server(project, api_key):
    with Server(project) as running:
        yield running


@pytest.fixture
def client(server, api_key):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=api_key, max_retries=0)


# --- files --------------------------------------------------------------------------------------------


def test_file_upload_list_retrieve_delete(client, project):
    text = chat_lines(6)
    created = upload(client, text)
    assert created.id.startswith("file-") and created.object == "file"
    assert (created.bytes, created.filename, created.purpose, created.status) == (
        len(text.encode()), "train.jsonl", "fine-tune", "processed",
    )  # fmt: skip
    stored = project.state_dir / "files" / created.id
    assert stored.read_text() == text
    assert not [p for p in stored.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind

    second = upload(client, chat_lines(4), "more.jsonl")
    listed = client.files.list()
    assert [f.id for f in listed] == [second.id, created.id]  # newest first
    assert client.files.retrieve(created.id).filename == "train.jsonl"
    assert client.files.content(created.id).text == text

    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("a.jsonl", text.encode()), purpose="assistants")

    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    assert not stored.exists()
    with pytest.raises(openai.NotFoundError, match=created.id):
        client.files.retrieve(created.id)


def test_bad_upload_lists_every_problem_with_its_line(client, project):
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    bad = "\n".join(
        [
            good,
            "{not json",
            json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
            json.dumps(
                {"messages": [{"role": "usr", "content": "hi"}, {"role": "assistant", "content": "x"}]}
            ),
            good,
        ]
    )
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, bad, "broken.jsonl")
    message = caught.value.message
    assert "broken.jsonl" in message
    assert "line 2: invalid JSON" in message
    assert "line 3, messages: no assistant message" in message
    assert "line 4, messages[].role: unknown role 'usr'" in message
    assert "  line 1" not in message and "  line 5" not in message  # the good lines
    assert caught.value.body["param"] == "file"
    assert list(client.files.list()) == []
    assert list((project.state_dir / "files").iterdir()) == []  # nothing kept, not even a temporary


def test_wrong_key_is_401(server, client):
    wrong = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="tw-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.files.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.fine_tuning.jobs.list()
    with pytest.raises(openai.AuthenticationError):
        upload(wrong, chat_lines(2))
    assert list(client.files.list()) == []


# --- jobs ---------------------------------------------------------------------------------------------


def test_job_requests_are_checked_before_queueing(client):
    train = upload(client, chat_lines(8))
    with pytest.raises(openai.NotFoundError, match="gpt-4o-mini"):
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=train.id)
    with pytest.raises(openai.NotFoundError, match="file-missing"):
        client.fine_tuning.jobs.create(model="tiny:random", training_file="file-missing")
    with pytest.raises(openai.BadRequestError, match="did you mean 'n_epochs'"):
        client.fine_tuning.jobs.create(
            model="tiny:random", training_file=train.id, method=supervised(n_epoch=2)
        )
    with pytest.raises(openai.BadRequestError, match="lora_rank"):
        client.fine_tuning.jobs.create(
            model="tiny:random", training_file=train.id, method=supervised(tunewise={"lora_rank": 0})
        )
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.fine_tuning.jobs.create(model="tiny:random", training_file=train.id, suffix="no spaces")
    assert list(client.fine_tuning.jobs.list()) == []


def test_job_trains_the_tiny_model_to_a_chat_model(client, project):
    train = upload(client, chat_lines(16))
    valid = upload(client, chat_lines(4), "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny:random",
        training_file=train.id,
        validation_file=valid.id,
        suffix="demo",
        seed=7,
        # 10 x the auto rule's LoRA rate (1e-3 below 1B parameters) = 1e-2: the random tiny model learns fast
        method=supervised(n_epochs=3, batch_size=4, learning_rate_multiplier=10),
    )
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert job.status in ("queued", "running") and job.fine_tuned_model is None and job.seed == 7

    done = wait_status(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny:random:demo:{job.id[6:14]}"
    assert done.finished_at >= done.created_at
    hp = done.method.supervised.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (3, 4, 10.0)
    assert done.hyperparameters.n_epochs == 3
    assert done.trained_tokens > 0

    events = all_events(client, job.id)
    messages = [e.message for e in events]
    assert messages[0].startswith("Validated training file") and "Fine-tuning job started" in messages
    assert messages[-2:] == [
        f"New fine-tuned model created: {done.fine_tuned_model}",
        "The job has successfully completed",
    ]
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(1, 13))  # 16 examples / 4 x 3 epochs
    assert metrics[-1].data["total_steps"] == 12
    losses = [e.data["train_loss"] for e in metrics]
    assert sum(losses[-4:]) < sum(losses[:4])  # it learned: the last epoch's loss is below the first's
    # The narration names the run folder, relative to the project: a client never reads the server's folders.
    assert f"run {job.id}: .tunewise/runs/{job.id}" in messages
    assert all(str(project.root) not in e.message + json.dumps(e.data) for e in events)
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(page.data) == 3 and page.has_more and page.data[0].message == messages[-1]

    # A checkpoint every step (about ten per job); the run keeps the last two and the final model, as listed.
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [12, 11, 10]  # newest first
    assert checkpoints[0].metrics.valid_loss is not None  # the final held-out evaluation
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-12"
    assert all(
        c.object == "fine_tuning.job.checkpoint" and c.fine_tuning_job_id == job.id for c in checkpoints
    )
    assert checkpoints[0].metrics.train_loss == pytest.approx(metrics[-1].data["train_loss"])

    csv_text = client.files.content(done.result_files[0]).text
    assert csv_text.splitlines()[0].startswith("step,train_loss") and len(csv_text.splitlines()) == 13

    from tunewise.serve.jobs import fine_tuned_models

    (model,) = fine_tuned_models(project)
    assert model["id"] == done.fine_tuned_model and model["owned_by"] and model["created"] >= done.created_at
    run_dir = Path(model["run_dir"])
    assert (run_dir / "adapter" / "adapter_config.json").is_file() and run_dir.name == job.id
    assert json.loads((run_dir / "result.json").read_text())["status"] == "succeeded"
    from tunewise.registry.runs import RunStore

    (run,) = RunStore(project).list(kind="job")  # the job's training run, under the job's id
    assert (run.id, run.status, run.name, run.path) == (job.id, "succeeded", done.fine_tuned_model, run_dir)
    assert run.figures["steps"] == 12 and run.figures["tokens"] == done.trained_tokens

    listed = [m.id for m in client.models.list()]
    assert done.fine_tuned_model in listed
    reply = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "the film was great"}],
        max_tokens=3,
    )
    assert reply.model == done.fine_tuned_model and reply.choices[0].message.content is not None


def test_list_pagination_and_cancel(client, project):
    from tunewise.serve.worker import log_path, owner_alive

    train = upload(client, chat_lines(8))
    long = supervised(n_epochs=500, batch_size=2)  # 2,000 steps: still running when cancelled
    jobs = [
        client.fine_tuning.jobs.create(model="tiny:random", training_file=train.id, method=long)
        for _ in range(3)
    ]

    first = client.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first.data] == [jobs[2].id, jobs[1].id] and first.has_more
    second = client.fine_tuning.jobs.list(limit=2, after=jobs[1].id)
    assert [j.id for j in second.data] == [jobs[0].id] and not second.has_more
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [
        j.id for j in reversed(jobs)
    ]  # auto-paging

    # The oldest job runs first; wait until it is training, then cancel it.
    wait_for(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(jobs[0].id, limit=5)),
        120, what="the first job to train",
    )  # fmt: skip
    running = client.fine_tuning.jobs.retrieve(jobs[0].id)
    assert running.status == "running" and running.estimated_finish > running.created_at
    # What `auto` became: LoRA's rate below 1B parameters x 1, rank 8 (< 1,000 examples).
    hp = running.method.supervised.hyperparameters
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier) == (500, 2, 1.0)
    assert hp.tunewise["lora_rank"] == 8 and hp.tunewise["learning_rate"] == 1e-3

    cancelled = client.fine_tuning.jobs.cancel(jobs[0].id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None

    def owner():
        from tunewise.serve.jobs import get_job, read_registry

        return read_registry(project, lambda conn: get_job(conn, jobs[0].id))["owner"]

    log = log_path(project, jobs[0].id)
    wait_for(lambda: not owner_alive(owner()), 30, what="the cancelled job's process to end", log=log)
    wait_for(
        lambda: "Training stopped: the job was cancelled" in [e.message for e in all_events(client, jobs[0].id)],
        10, what="the runner to record the cancellation", log=log,
    )  # fmt: skip
    from tunewise.registry.runs import RunStore

    assert RunStore(project).get(jobs[0].id).status == "cancelled"
    for queued in jobs[1:]:
        assert client.fine_tuning.jobs.cancel(queued.id).status == "cancelled"
    assert (
        client.fine_tuning.jobs.retrieve(jobs[0].id).status == "cancelled"
    )  # the runner did not overwrite it
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.cancel("ftjob-missing")


def test_failed_job_reports_its_error_and_the_server_goes_on(server, client, project, tmp_path):
    broken = tmp_path / "broken-model"  # passes the request's checks, fails when training loads it
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    server.app.state.trainable.append(str(broken))  # allowed by the operator, as `--train-base` does
    train = upload(client, chat_lines(4))
    job = client.fine_tuning.jobs.create(model=str(broken), training_file=train.id)
    done = wait_status(client, job.id, ("succeeded", "failed", "cancelled"), timeout=120)
    assert done.status == "failed" and done.error.code in ("training_failed", "internal_error")
    assert done.error.message and done.fine_tuned_model is None and done.finished_at is not None
    last = client.fine_tuning.jobs.list_events(job.id, limit=1).data[0]
    assert last.level == "error" and last.message.startswith("Fine-tuning failed")
    assert client.files.retrieve(train.id).id == train.id  # the server still answers
    from tunewise.registry.runs import RunStore
    from tunewise.serve.jobs import public_message

    run = RunStore(project).get(job.id)  # failed before training began: the runner finished its run
    # The run's record keeps the server's paths; the job's error, which the client reads, shows them relative.
    assert (run.kind, run.status, public_message(project, run.error)) == ("job", "failed", done.error.message)
    assert str(project.root) not in done.error.message


# --- restart ------------------------------------------------------------------------------------------

LAUNCHER = textwrap.dedent(
    """
    import socket, sys
    from pathlib import Path

    import uvicorn

    from tunewise.project import Project
    from tunewise.serve.app import create_app
    from tunewise.serve.inference import ServeSettings

    project, port_file = Project(Path(sys.argv[1])), Path(sys.argv[2])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port_file.write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(create_app(project, settings=ServeSettings(base="tiny:random")), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    """
)


def start_server(project: Project, api_key: str, tmp_path: Path) -> tuple[subprocess.Popen, object]:
    """`create_app(project)` under uvicorn in a process of its own; returns it and a client once it answers."""
    port_file = tmp_path / f"port-{time.monotonic_ns()}"
    launcher = tmp_path / "launch_server.py"
    launcher.write_text(LAUNCHER)
    log = open(tmp_path / "server.log", "ab")
    # A session of its own, so the test can SIGKILL the server and its training process together.
    proc = subprocess.Popen(
        [sys.executable, str(launcher), str(project.root), str(port_file)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    wait_for(lambda: port_file.is_file() and port_file.read_text(), 60, 0.1, "the server's port")
    port = int(port_file.read_text())
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=2)
    wait_for(lambda: _answers(client), 60, what="the server to answer")
    return proc, client


def test_server_killed_mid_job_resumes_from_checkpoint(project, api_key, tmp_path):
    """SIGKILL the server and its training process; the next server resumes the job from its checkpoint.
    Then stop that server gracefully (SIGTERM) mid-job: the job stays resumable, and a third server finishes it."""
    from tunewise.serve.jobs import get_job, read_registry
    from tunewise.serve.worker import owner_alive

    def row():
        return read_registry(project, lambda conn: get_job(conn, job.id))

    def resumed() -> list[int]:
        return [
            json.loads(e["data"])["resumed_from_step"]
            for e in _events(project, job.id)
            if e["message"].startswith("Resumed from checkpoint at step")
        ]

    proc, client = start_server(project, api_key, tmp_path)
    try:
        train = upload(client, chat_lines(8))
        # 8 examples / 2 x 100 epochs = 400 steps (~10 s on one core), a checkpoint every 40
        job = client.fine_tuning.jobs.create(
            model="tiny:random", training_file=train.id, method=supervised(n_epochs=100, batch_size=2)
        )
        first = wait_for(
            lambda: list(client.fine_tuning.jobs.checkpoints.list(job.id)), 120, 0.5, "a checkpoint"
        )
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its training process, with no chance to clean up
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert row()["status"] == "running"  # nothing recorded the kill
    killed_at = first[0].step_number
    assert 0 < killed_at < 400

    proc, client = start_server(project, api_key, tmp_path)
    try:
        wait_for(resumed, 120, what="the job to resume")
        assert resumed()[0] >= killed_at
        wait_for(
            lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number > resumed()[0],
            120, what="a checkpoint after the resume",
        )  # fmt: skip
        proc.send_signal(signal.SIGTERM)  # a graceful shutdown: the worker stops the job, resumable
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    stopped = row()
    assert stopped["status"] == "running" and not owner_alive(stopped["owner"])
    messages = [e["message"] for e in _events(project, job.id)]
    assert messages[-1].startswith("Training interrupted at step ")
    # Between that stop and the next start, result.json tells where training stands (not 'cancelled, 0 steps').
    interrupted = json.loads((project.runs_dir / job.id / "result.json").read_text())
    assert interrupted["status"] == "interrupted" and "resumes from the checkpoint" in interrupted["error"]
    assert interrupted["steps"] >= interrupted["resumes_from_step"] >= resumed()[0] >= killed_at
    assert f"Training interrupted at step {interrupted['steps']} " in messages[-1]
    from tunewise.registry.runs import RunStore

    assert RunStore(project).get(job.id).status == "running"

    proc, client = start_server(project, api_key, tmp_path)
    try:
        done = wait_status(client, job.id, ("succeeded", "failed", "cancelled"))
        assert done.status == "succeeded", done.error
        steps = [
            e.data["resumed_from_step"]
            for e in all_events(client, job.id)
            if e.message.startswith("Resumed from checkpoint at step")
        ]
        assert len(steps) == 2 and killed_at <= steps[0] < steps[1] < 400
        assert done.fine_tuned_model in [m.id for m in client.models.list()]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    run_dir = project.runs_dir / job.id
    logged = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 401))  # every step once: each resumed run replaced what it redid
    assert row()["attempts"] == 3


def _events(project: Project, job_id: str) -> list[dict]:
    from tunewise.serve.jobs import read_registry

    return read_registry(
        project,
        lambda conn: [
            dict(r)
            for r in conn.execute("SELECT * FROM fine_tuning_events WHERE job_id = ? ORDER BY id", (job_id,))
        ],
    )


def _answers(client) -> bool:
    try:
        client.files.list()
        return True
    except openai.APIConnectionError:
        return False
