"""`tunewise worker` on a PostgreSQL registry, on a real server the test starts (tests/postgres_server.py): two
workers claim distinct jobs (row locks, SKIP LOCKED), and when a worker process is SIGKILLed mid-job, another
worker takes the job over once its heartbeat is stale and resumes it from its last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from postgres_server import postgres_server

from tunewise.project import Project

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from test_registry_pg import ApiServer  # noqa: E402
from test_serve_jobs import chat_lines, supervised, upload, wait_for  # noqa: E402

pg = pytest.fixture(scope="module")(postgres_server)


@pytest.fixture
def project(pg, tmp_path, monkeypatch) -> Project:
    # One torch thread per training process: the machine is small and shared (see test_serve_jobs.py).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return Project(tmp_path, registry_url=pg.new_database())


def _job(project: Project, job_id: str) -> dict:
    from tunewise.serve.jobs import get_job, read_registry

    return read_registry(project, lambda conn: get_job(conn, job_id))


def _events(project: Project, job_id: str) -> list[dict]:
    from tunewise.serve.jobs import read_registry

    return read_registry(
        project,
        lambda conn: [
            dict(r)
            for r in conn.execute("SELECT * FROM fine_tuning_events WHERE job_id = ? ORDER BY id", (job_id,))
        ],
    )


def test_two_workers_claim_distinct_jobs_and_take_over_a_stale_one(project):
    from tunewise.serve.auth import create_key
    from tunewise.serve.worker import JobWorker

    key = create_key(project, "team")[1]
    with ApiServer(project) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0)
        train = upload(client, chat_lines(8))
        jobs = [
            client.fine_tuning.jobs.create(
                model="tiny:random", training_file=train.id, method=supervised()
            ).id
            for _ in range(3)
        ]
    a = JobWorker(project, host="gpu-a", heartbeat_s=1, stale_after_s=30)
    b = JobWorker(project, host="gpu-b", heartbeat_s=1, stale_after_s=30)

    # Another worker's claim holds the oldest job's row: b skips it rather than wait, and takes the next one.
    holder = project.registry()
    with holder.transaction() as conn:
        conn.execute("SELECT id FROM fine_tuning_jobs WHERE id = ? FOR UPDATE", (jobs[0],))
        claimed_b = b._claim()
        assert claimed_b is not None and claimed_b["id"] == jobs[1]
    holder.close()
    assert a._claim()["id"] == jobs[0]

    # The last job, claimed by both at once: exactly one gets it.
    got: list = []
    threads = [threading.Thread(target=lambda w=w: got.append(w._claim())) for w in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((j["id"] if j else "") for j in got) == ["", jobs[2]]
    rows = [_job(project, j) for j in jobs]
    assert [r["status"] for r in rows] == ["running"] * 3 and [r["attempts"] for r in rows] == [1, 1, 1]
    assert rows[0]["worker"] == a.worker_id and rows[1]["worker"] == b.worker_id
    assert a.worker_id.startswith("gpu-a:") and all(r["heartbeat_at"] >= time.time() - 60 for r in rows)
    assert a._claim() is None and b._claim() is None  # every job has a live worker

    # a falls silent past the timeout on its first job: b takes it over.
    from tunewise.serve.jobs import with_registry

    with_registry(
        project,
        lambda conn: conn.execute(
            "UPDATE fine_tuning_jobs SET heartbeat_at = ? WHERE id = ?", (int(time.time()) - 31, jobs[0])
        ),
    )
    taken = b._claim()
    assert taken["id"] == jobs[0] and taken["worker"] == b.worker_id and taken["attempts"] == 2
    assert _events(project, jobs[0])[-1]["message"] == (
        "The job's worker on gpu-a stopped (no heartbeat for over 30 s); resuming the job on gpu-b"
    )

    # b is stopped (Ctrl+C, SIGTERM) while it runs that job: it releases the job, and a takes it at once.
    b._proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    b._job_id = jobs[0]
    b.stop()
    b.run_forever()  # returns at once: it stops the job's process and releases the job
    assert b._proc is None and _job(project, jobs[0])["heartbeat_at"] == 0
    taken = a._claim()
    assert taken["id"] == jobs[0] and taken["worker"] == a.worker_id and taken["attempts"] == 3
    assert (
        _events(project, jobs[0])[-1]["message"]
        == "The job's worker on gpu-b was stopped; resuming the job on gpu-a"
    )


def _start_worker(project: Project, name: str, tmp_path: Path) -> subprocess.Popen:
    """`tunewise worker` in a session of its own (so that a SIGKILL to its group takes its runner too)."""
    log = open(tmp_path / f"worker-{name}.log", "ab")
    cmd = [
        sys.executable, "-m", "tunewise", "worker", "--registry", project.registry_url, "--name", name,
        "--heartbeat", "0.5", "--stale-after", "3", "--poll", "0.2", "--project", str(project.root),
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _signal_runners(worker_pid: int, sig: int) -> None:
    """Send `sig` to the processes of the worker's session other than the worker: its job's runner."""
    runners = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        pid, session = int(stat.parent.name), int(fields[3])
        if session == worker_pid and pid != worker_pid:
            runners.append(pid)
    assert runners, "the worker has no running job process"
    for pid in runners:
        os.kill(pid, sig)


def test_a_killed_workers_job_resumes_on_another_worker(project, tmp_path):
    from tunewise.serve.auth import create_key
    from tunewise.serve.worker import log_path

    key = create_key(project, "team")[1]
    workers: list[subprocess.Popen] = []
    try:
        with ApiServer(project) as server:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0)
            train = upload(client, chat_lines(8))
            # 8 examples / 2 x 50 epochs = 200 steps, a checkpoint every 20
            job = client.fine_tuning.jobs.create(
                model="tiny:random", training_file=train.id, method=supervised(n_epochs=50, batch_size=2)
            ).id
            workers.append(_start_worker(project, "gpu-a", tmp_path))
            log = log_path(project, job)
            first = wait_for(
                lambda: list(client.fine_tuning.jobs.checkpoints.list(job)), 180, 0.3, "a checkpoint", log
            )
            # Freeze a's training process where it is, so that the job cannot finish on a however fast the
            # machine; a itself keeps its heartbeat going.
            _signal_runners(workers[0].pid, signal.SIGSTOP)
            assert _job(project, job)["worker"].startswith("gpu-a:")
            workers.append(_start_worker(project, "gpu-b", tmp_path))
            time.sleep(2)  # b looks at the queue while a is alive: the job stays a's
            assert _job(project, job)["worker"].startswith("gpu-a:")
            os.killpg(workers[0].pid, signal.SIGKILL)  # the worker and its training process: the machine died
            workers[0].wait(10)
            killed_at = first[0].step_number

            done = wait_for(
                lambda: client.fine_tuning.jobs.retrieve(job).status in ("succeeded", "failed", "cancelled"),
                300, 0.5, "the job to finish on gpu-b", log,
            )  # fmt: skip
            assert done
            final = client.fine_tuning.jobs.retrieve(job)
            assert final.status == "succeeded", final.error
        row = _job(project, job)
        assert row["worker"].startswith("gpu-b:") and row["attempts"] == 2
        messages = [e["message"] for e in _events(project, job)]
        takeover = "The job's worker on gpu-a stopped (no heartbeat for over 3 s); resuming the job on gpu-b"
        assert takeover in messages
        resumed = [
            json.loads(e["data"])["resumed_from_step"]
            for e in _events(project, job)
            if e["message"].startswith("Resumed from checkpoint at step")
        ]
        assert len(resumed) == 1 and 0 < killed_at <= resumed[0] < 200
        assert messages.index(takeover) < messages.index(f"Resumed from checkpoint at step {resumed[0]}")
        logged = [
            json.loads(x)["step"] for x in (project.runs_dir / job / "metrics.jsonl").read_text().splitlines()
        ]
        assert logged == list(range(1, 201))  # every step once: the resumed run replaced what it redid
        workers[1].send_signal(signal.SIGTERM)
        assert workers[1].wait(30) == 0
    finally:
        for proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_the_worker_command_refuses_bad_settings_in_one_line(run_cli, tmp_path):
    code, _, err = run_cli("worker", "--heartbeat", "10", "--stale-after", "5", "--project", str(tmp_path))
    assert code == 1 and "error: --stale-after 5 must be longer than --heartbeat 10" in err
    assert "Traceback" not in err
    code, _, err = run_cli("worker", "--name", "gpu:1", "--project", str(tmp_path))
    assert code == 1 and "error: --name 'gpu:1' must be a non-empty name without ':'" in err
    code, _, err = run_cli(
        "worker", "--registry", "postgresql://team:secret@127.0.0.1:1/t", "--project", str(tmp_path)
    )
    assert code == 1 and "cannot reach the registry at postgresql://team:***@127.0.0.1:1/t" in err
    assert "secret" not in err
