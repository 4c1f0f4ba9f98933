"""`tunewise serve --registry URL`: two real API server processes, each with a project folder of its own, on one
PostgreSQL database (tests/postgres_server.py): a file uploaded and a job created through one are listed by the
other, through the official `openai` client; an unreachable registry is one `error:` line without the password."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from postgres_server import postgres_server

from tunewise.project import Project

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from test_serve_jobs import chat_lines, supervised, upload, wait_for  # noqa: E402

pg = pytest.fixture(scope="module")(postgres_server)


def _serve(folder: Path, url: str, log: Path) -> subprocess.Popen:
    """`tunewise serve` on any free loopback port, on the registry `url`, running no jobs (they stay queued)."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "tunewise", "serve", "--port", "0", "--base", "tiny:random", "--threads", "1",
        "--no-jobs", "--registry", url, "--project", str(folder),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "wb"), env=env)


def _base_url(log: Path) -> str:
    found = re.search(r"tunewise serve: (http://127\.0\.0\.1:\d+/v1)", log.read_text())
    return found.group(1) if found else ""


def test_two_servers_on_one_registry_see_each_others_files_and_jobs(pg, tmp_path):
    from tunewise.serve.auth import create_key

    url = pg.new_database().replace("tunewise@", "tunewise:s3cret@")  # trust: any password is accepted
    key = create_key(Project(tmp_path / "a", registry_url=url), "team")[1]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    servers = [_serve(tmp_path / name, url, log) for name, log in zip("ab", logs)]
    try:
        clients = []
        for proc, log in zip(servers, logs):
            wait_for(lambda p=proc, f=log: p.poll() is not None or _base_url(f), 180, 0.2, "the address", log)
            assert proc.poll() is None, log.read_text()
            assert "registry: postgresql://tunewise:***@" in log.read_text()
            client = openai.OpenAI(base_url=_base_url(log), api_key=key, max_retries=0)
            # uvicorn starts listening once the address is printed: up when a request is answered.
            wait_for(lambda c=client: _answers(c), 60, 0.2, "the server to answer", log)
            clients.append(client)
        a, b = clients

        train = upload(a, chat_lines(8))
        job = a.fine_tuning.jobs.create(model="tiny:random", training_file=train.id, method=supervised())
        assert [(f.id, f.bytes, f.filename) for f in b.files.list()] == [
            (train.id, train.bytes, "train.jsonl")
        ]
        assert [(j.id, j.status, j.training_file) for j in b.fine_tuning.jobs.list()] == [
            (job.id, "queued", train.id)
        ]
        assert b.fine_tuning.jobs.retrieve(job.id).model == "tiny:random"
        # And the other way: a cancellation through b is what a reads.
        assert b.fine_tuning.jobs.cancel(job.id).status == "cancelled"
        assert a.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
        assert "s3cret" not in "".join(log.read_text() for log in logs)
    finally:
        for proc in servers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in servers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _answers(client) -> bool:
    try:
        client.models.list()
    except openai.APIConnectionError:
        return False
    return True


def test_serve_refuses_an_unreachable_registry_in_one_line(run_cli, tmp_path):
    code, _, err = run_cli(
        "serve",
        "--port",
        "0",
        "--registry",
        "postgresql://team:secret@127.0.0.1:1/t",
        "--project",
        str(tmp_path),
    )
    assert code == 1 and "Traceback" not in err
    assert "error: cannot reach the registry at postgresql://team:***@127.0.0.1:1/t" in err
    assert "secret" not in err
