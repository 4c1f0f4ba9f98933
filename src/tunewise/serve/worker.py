"""The fine-tuning job worker: one thread in the server that runs queued jobs one at a time, each in a child
process (`python -m tunewise.serve.runner`).

Why a process per job: cancelling is terminating it, a crash in training (out of memory, a segfault in a
kernel) cannot take the server down, and the training's threads and memory go away with it.

The registry is the only shared state. A job row's `owner` names the process that runs it as `pid:start-time`
(the start time tells a live process from a later one that reuses the pid). The worker:

1. claims work in one transaction: first a `running` job whose owner is gone (the server was killed or
   restarted while it ran), then the oldest `queued` job;
2. starts the runner, which resumes from the run's last checkpoint when the run directory already exists
   (`tunewise.train.loop.run(None, project, resume=...)`), so a restart loses at most `checkpoint_every` steps;
3. watches it: a job cancelled through the API has its process terminated; a process that exits without
   recording an outcome crashed, and its job fails with the exit code and the log's path.

`stop()` (server shutdown) terminates the running process and leaves its job `running`: the next server on the
project resumes it. A runner also gets SIGTERM when the server dies without a shutdown (PR_SET_PDEATHSIG on
Linux), so no training keeps running unsupervised.

Several workers, on several machines, can share one registry (PostgreSQL; `tunewise worker`). Each claims in
its own transaction, locking the rows it reads (`FOR UPDATE SKIP LOCKED`), so two workers never take the same
job. A job's `worker` column names its worker as `host:pid:start-time`, and the worker writes `heartbeat_at` every
`heartbeat_s` while the job runs. A `running` job is orphaned when its runner process is gone (a worker on the
same host checks the process table, as above) or, for a worker on another host, when its heartbeat is older than
`stale_after_s`: another worker then takes it over and resumes it from its last checkpoint. The project folder
(uploaded files, run directories, checkpoints) must be the same shared folder on every machine. A worker that
finds its job taken over (it was cut off longer than the timeout) kills its runner at once, without recording
anything, so that only the new owner writes the run.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tunewise.project import Project
from tunewise.serve.jobs import (
    add_event,
    get_job,
    public_message,
    read_registry,
    update_job,
    with_registry,
)

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # process starts per job (the first and the resumes) before the worker gives up on it
TERMINATE_GRACE_S = 5.0  # after SIGTERM (the runner writes result.json and exits), SIGKILL
HEARTBEAT_S = 10.0  # how often a worker says it is alive while it runs a job
STALE_AFTER_S = 60.0  # a job whose worker on another host has been silent this long is taken over


def process_identity(pid: int) -> str | None:
    """'pid:start-time' of a live process (a zombie is not live), or None when there is none.

    >>> process_identity(os.getpid()) is not None, process_identity(2**22 + 1)
    (True, None)
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if sys.platform.startswith("linux"):
            return None
        try:  # no /proc: the pid alone (a reused pid then looks alive; rare, and only delays a resume)
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"{pid}:?"
    # Fields after the command name, which is in parentheses and may hold spaces: state is field 3,
    # starttime field 22 (clock ticks since boot).
    rest = stat[stat.rindex(")") + 2 :].split()
    if rest[0] in ("Z", "X"):
        return None
    return f"{pid}:{rest[19]}"


def owner_alive(owner: str | None) -> bool:
    if not owner:
        return False
    pid = owner.split(":", 1)[0]
    return pid.isdigit() and process_identity(int(pid)) == owner


def _is_runner(pid: int, job_id: str) -> bool:
    """Whether `pid` is the runner of `job_id` (so that a signal never reaches another process)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"tunewise.serve.runner" in cmdline and job_id.encode() in cmdline


def stop_job_process(job: dict[str, Any], sig: int = signal.SIGTERM) -> bool:
    """Signal the runner of `job` if it is alive; returns whether a signal was sent."""
    owner = job.get("owner")
    if not owner_alive(owner):
        return False
    pid = int(owner.split(":", 1)[0])
    if pid == os.getpid() or not _is_runner(pid, job["id"]):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def log_path(project: Project, job_id: str) -> Path:
    return project.state_dir / "jobs" / f"{job_id}.log"


class JobWorker:
    """Runs the project's fine-tuning jobs, one at a time, each in its own process."""

    def __init__(
        self,
        project: Project,
        poll_s: float = 0.5,
        *,
        host: str | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_after_s: float = STALE_AFTER_S,
    ):
        """`host`: the machine's name in the `worker` column (default: its host name); workers that give the same
        name must run on the same machine, since they check each other's processes in its process table."""
        if stale_after_s <= heartbeat_s:
            raise ValueError(f"stale_after_s ({stale_after_s}) must exceed heartbeat_s ({heartbeat_s})")
        self.project = project
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.host = host or socket.gethostname()
        self.identity = process_identity(os.getpid()) or f"{os.getpid()}:?"
        self.worker_id = f"{self.host}:{self.identity}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._job_id: str | None = None
        self._child_owner: str | None = None
        self._beat = 0.0  # time.monotonic() of the last heartbeat written

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="tunewise-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = TERMINATE_GRACE_S + 2) -> None:
        """Stop taking jobs and terminate the running one, leaving it `running` so that a restart resumes it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def current_job(self) -> str | None:
        return self._job_id

    # --- the loop ---------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._proc is None:
                    self._start_next()
                else:
                    self._watch()
            except Exception:  # a bug here must not end the worker: log it and keep serving jobs
                log.exception("job worker error")
            self._stop.wait(self.poll_s)
        if self._proc is not None:
            job_id = self._job_id
            log.info("stopping job %s for shutdown; it resumes when the server starts again", job_id)
            self._terminate()
            # Stale at once: a worker on another host need not wait out the timeout to take the job over.
            try:
                with_registry(
                    self.project,
                    lambda conn: conn.execute(
                        "UPDATE fine_tuning_jobs SET heartbeat_at = 0 WHERE id = ? AND worker = ?",
                        (job_id, self.worker_id),
                    ),
                )
            except Exception:  # the registry unreachable: the job is taken over once the timeout passes
                log.exception("job %s: could not release it", job_id)

    def run_forever(self) -> None:
        """Run jobs in this thread until stop() is called (from a signal handler) or the process is interrupted."""
        try:
            self._loop()
        finally:
            self._stop.set()

    def _orphaned(self, row: Any, now: float) -> bool:
        """Whether a `running` job has lost its worker: its process is gone (same host), or its worker's
        heartbeat is older than the timeout (another host)."""
        host = row["worker"].rsplit(":", 2)[0] if row["worker"] else None
        if host is None or host == self.host:
            return not owner_alive(row["owner"])
        return row["heartbeat_at"] is None or row["heartbeat_at"] < now - self.stale_after_s

    def _claim(self) -> dict[str, Any] | None:
        """Take the next job: an orphaned `running` one (resume) before the oldest `queued` one."""

        def claim(registry: Any) -> dict[str, Any] | None:
            with registry.transaction() as conn:
                # The database's clock, not this machine's: heartbeats from several machines are compared.
                now = conn.execute(f"SELECT {registry.clock}").fetchone()[0]
                return claim_in(conn, registry.skip_locked, int(now))

        def claim_in(conn: Any, skip_locked: str, now: int) -> dict[str, Any] | None:
            columns = "id, owner, attempts, worker, heartbeat_at"
            for row in conn.execute(
                f"SELECT {columns} FROM fine_tuning_jobs WHERE status = 'running' ORDER BY rowid"
            ).fetchall():
                if not self._orphaned(row, now):
                    continue
                # Lock only a job to take over, and look again once locked: another worker may have taken it.
                row = conn.execute(
                    f"SELECT {columns} FROM fine_tuning_jobs WHERE id = ? AND status = 'running'"
                    + skip_locked,
                    (row["id"],),
                ).fetchone()
                if row is None or not self._orphaned(row, now):
                    continue
                if row["attempts"] >= MAX_ATTEMPTS:
                    message = public_message(
                        self.project,
                        f"gave up after {row['attempts']} attempts to run the job; "
                        f"see {log_path(self.project, row['id'])}",
                    )
                    update_job(
                        conn, row["id"], ("running",), status="failed", finished_at=int(time.time()),
                        error={"code": "too_many_attempts", "message": message, "param": None},
                    )  # fmt: skip
                    add_event(conn, row["id"], message, level="error")
                    continue
                conn.execute(
                    "UPDATE fine_tuning_jobs SET owner = ?, worker = ?, heartbeat_at = ?, attempts = attempts + 1"
                    " WHERE id = ?",
                    (self.identity, self.worker_id, now, row["id"]),
                )
                previous = row["worker"].rsplit(":", 2)[0] if row["worker"] else None
                if previous is None or previous == self.host:
                    reason = "The job's training process stopped (server restart); resuming the job"
                elif row["heartbeat_at"] == 0:
                    reason = f"The job's worker on {previous} was stopped; resuming the job on {self.host}"
                else:
                    reason = (
                        f"The job's worker on {previous} stopped (no heartbeat for over "
                        f"{self.stale_after_s:g} s); resuming the job on {self.host}"
                    )
                add_event(conn, row["id"], reason)
                return get_job(conn, row["id"])
            row = conn.execute(
                "SELECT id FROM fine_tuning_jobs WHERE status = 'queued' ORDER BY rowid LIMIT 1" + skip_locked
            ).fetchone()
            if row is None:
                return None
            update_job(
                conn, row["id"], ("queued",), status="running", owner=self.identity, worker=self.worker_id,
                heartbeat_at=now,
            )  # fmt: skip
            conn.execute("UPDATE fine_tuning_jobs SET attempts = attempts + 1 WHERE id = ?", (row["id"],))
            return get_job(conn, row["id"])

        waiting = read_registry(
            self.project,
            lambda conn: conn.execute(
                "SELECT 1 FROM fine_tuning_jobs WHERE status IN ('queued', 'running') LIMIT 1"
            ).fetchone(),
        )
        if not waiting:
            return None
        # Idle polls only read: the write lock (SQLite) or the row locks (PostgreSQL) are taken when there is
        # something to claim.
        registry = self.project.registry()
        try:
            job = claim(registry)
        finally:
            registry.close()
        if job is not None:
            self._beat = time.monotonic()
        return job

    def _start_next(self) -> None:
        job = self._claim()
        if job is None:
            return
        path = log_path(self.project, job["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "tunewise.serve.runner", str(self.project.root), job["id"],
            "--parent", str(os.getpid()),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        location = self.project.registry_location()
        if location:  # --registry reaches the runner by the environment, never its command line (a password)
            env["TUNEWISE_REGISTRY"] = location
        with open(path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        self._job_id = job["id"]
        # A runner that already exited has no start time to read: the bare pid still names it for _watch.
        self._child_owner = process_identity(self._proc.pid) or f"{self._proc.pid}:?"
        log.info("job %s: started runner pid %d (log: %s)", job["id"], self._proc.pid, path)
        with_registry(
            self.project,
            lambda conn: conn.execute(
                "UPDATE fine_tuning_jobs SET owner = ? WHERE id = ? AND owner = ?",
                (self._child_owner, job["id"], self.identity),
            ),
        )

    def _watch(self) -> None:
        assert self._proc is not None and self._job_id is not None
        code = self._proc.poll()
        job = read_registry(self.project, lambda conn: get_job(conn, self._job_id))
        if code is None:
            if job is not None and job["status"] == "running" and job["worker"] not in (None, self.worker_id):
                # Cut off past the timeout: another worker resumed the job. Kill, do not terminate: the runner
                # would record an interruption over the new owner's run.
                log.warning("job %s: taken over by %s; killing its process", self._job_id, job["worker"])
                assert self._proc is not None
                self._proc.kill()
                self._proc.wait()
                self._proc, self._job_id = None, None
            elif job is None or job["status"] != "running":  # cancelled through the API
                log.info("job %s: %s; stopping its process", self._job_id, job and job["status"])
                self._terminate()
            elif time.monotonic() - self._beat >= self.heartbeat_s:
                registry = self.project.registry()
                try:
                    with registry.transaction() as conn:
                        conn.execute(
                            f"UPDATE fine_tuning_jobs SET heartbeat_at = {registry.clock} WHERE id = ? AND worker = ?",
                            (self._job_id, self.worker_id),
                        )
                finally:
                    registry.close()
                self._beat = time.monotonic()
            return
        job_id, self._proc, self._job_id = self._job_id, None, None
        if job is not None and job["status"] == "running" and job["owner"] == self._child_owner:
            # The runner records every outcome it can (success, failure, interruption) before it exits;
            # a `running` job with a dead runner means the process itself died (killed, out of memory).
            message = public_message(
                self.project,
                f"the training process exited with code {code} without finishing the job; "
                f"see {log_path(self.project, job_id)}",
            )

            def fail(conn: Any) -> None:
                if update_job(
                    conn, job_id, ("running",), status="failed", finished_at=int(time.time()),
                    estimated_finish=None, error={"code": "process_exited", "message": message, "param": None},
                ):  # fmt: skip
                    add_event(conn, job_id, message, level="error")

            with_registry(self.project, fail)
            log.error("job %s: %s", job_id, message)

    def _terminate(self) -> None:
        """SIGTERM the runner (it records where it stopped and exits); SIGKILL after a grace period."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc, self._job_id = None, None
