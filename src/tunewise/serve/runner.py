"""One fine-tuning job in its own process: `python -m tunewise.serve.runner PROJECT JOB_ID --parent PID`.

Started by `serve.worker.JobWorker`. It trains with the training stage (`tunewise.train.loop.run`) and writes
what the API shows into the registry, each in a short transaction: events (narration, one `metrics` event per
step), checkpoints, the resolved hyperparameters, the estimated finish, and the outcome.

The run directory is `.tunewise/runs/<job id>`. When it already holds a run (the job was interrupted by a
server restart), training resumes from its last checkpoint instead of starting again.

SIGTERM (a cancel, a server shutdown, or the server's death via PR_SET_PDEATHSIG) interrupts training the way
Ctrl-C does: the run records result.json and the runner exits. A cancelled job stays cancelled; any other job
stays `running`, to be resumed by the next worker, and its result.json says so: status `interrupted`, the step
training reached and the checkpoint step it resumes from (training itself would record `cancelled` with the
steps of the last attempt only).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.project import Project
from tunewise.registry.runs import RunStore
from tunewise.serve.jobs import (
    EXTRA,
    add_event,
    count_examples,
    get_job,
    public_message,
    train_values,
    update_job,
)

log = logging.getLogger("tunewise.serve.runner")


def _interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the run record where it stopped
    raise KeyboardInterrupt


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the server dies (Linux); exit at once if it is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit("the server that started this job is gone; its next start resumes the job")


class JobRun:
    """Training for one job, reporting into the registry as it goes."""

    def __init__(self, project: Project, job_id: str):
        self.project = project
        self.job_id = job_id
        # One connection for the whole run; each write is its own transaction.
        self.registry = project.registry()
        self.job = self._read()
        self.run_dir = project.runs_dir / self.job["run_id"]
        self.base_lr: float | None = None
        self.total_steps: int | None = None
        self.checkpoint_step = 0
        self.started = time.monotonic()
        self.start_step: int | None = None

    def _read(self) -> dict[str, Any]:
        job = get_job(self.registry.conn, self.job_id)
        if job is None:
            raise SystemExit(f"no job {self.job_id}")
        return job

    def write(self, fn: Any) -> Any:
        with self.registry.transaction() as conn:
            return fn(conn)

    def event(self, message: str, level: str = "info", type: str = "message", data: Any = None) -> None:
        """An event the job's key reads: the training's narration names the run folder, shown relative to the
        project."""
        shown = public_message(self.project, message)
        self.write(lambda conn: add_event(conn, self.job_id, shown, level, type, data))

    # --- the run --------------------------------------------------------------------------------------

    def run(self) -> int:
        if self.job["status"] != "running":
            return 0  # cancelled between the claim and this start
        try:
            self._train()
        except KeyboardInterrupt:
            if self._read()["status"] == "cancelled":
                self._close_run("cancelled", "the job was cancelled")
                self._record_stop(cancelled=True)
                self.event("Training stopped: the job was cancelled")
            else:
                step, resume_at = self._record_stop(cancelled=False)
                self.event(
                    f"Training interrupted at step {step} (the server stopped); the job resumes from its "
                    f"checkpoint at step {resume_at} when the server starts again",
                    level="warn",
                    data={"step": step, "resumes_from_step": resume_at},
                )
            return 0
        except TunewiseError as exc:
            self._fail("training_failed", str(exc))
            return 1
        except Exception as exc:
            log.exception("job %s failed", self.job_id)
            self._fail("internal_error", f"{type(exc).__name__}: {exc}")
            return 1
        self._succeed()
        return 0

    def _train(self) -> None:
        from tunewise.train import loop, records
        from tunewise.train.config import TrainConfig, auto_learning_rate

        # The job's run directory is named after the job, so that the job, its run directory and
        # `tunewise train --resume <job id>` agree.
        run_id = self.job["run_id"]
        if (self.run_dir / "result.json").is_file():
            if records.read_json(self.run_dir / "result.json").get("status") == "succeeded":
                return  # trained already; the process stopped before recording the outcome
        if (self.run_dir / "config.json").is_file():
            checkpoint = loop.latest_checkpoint(self.run_dir)
            step = records.read_json(checkpoint / "state.json")["step"] if checkpoint else 0
            self.checkpoint_step = step
            self.event(
                f"Resumed from checkpoint at step {step}"
                if step
                else "Restarted training from step 0 (no checkpoint yet)",
                data={"resumed_from_step": step},
            )
            self._load_base_lr()
            loop.run(None, self.project, resume=str(self.run_dir), narrate=self.narrate, on_step=self.on_step)
            return
        files = self.project.state_dir / "files"
        data = str(files / self.job["training_file"])
        valid = str(files / self.job["validation_file"]) if self.job["validation_file"] else None
        values = train_values(self.job, data, valid, count_examples(data))
        multiplier = self.job["hyperparameters"]["learning_rate_multiplier"]
        method = values["method"]
        # learning_rate_multiplier scales the rate the auto rule would pick for this method and model size.
        self.base_lr = auto_learning_rate(method, loop.param_count_hint(TrainConfig.from_dict(values)))
        if multiplier != "auto":
            values["learning_rate"] = multiplier * self.base_lr
        config = TrainConfig.from_dict(values)
        self.event("Fine-tuning job started")
        # A run of kind 'job' under the job's id: training registers the same id and keeps that kind.
        RunStore(self.project).register("job", values, run_id=run_id, name=self.job["model_name"])
        loop.run(config, self.project, narrate=self.narrate, on_step=self.on_step, run_id=run_id)

    def _load_base_lr(self) -> None:
        from tunewise.train import loop, records
        from tunewise.train.config import TrainConfig, auto_learning_rate

        config = TrainConfig.from_dict(records.read_json(self.run_dir / "config.json")["config"])
        self.base_lr = auto_learning_rate(config.method, loop.param_count_hint(config))

    def narrate(self, message: str) -> None:
        log.info("%s", message)
        self.event(message)

    def on_step(self, step: int, record: dict[str, Any]) -> None:
        """After every optimizer step: a metrics event, a checkpoint row when one was written, the estimate."""
        from tunewise.train import loop, records

        if self.total_steps is None:
            self._record_resolved(records.read_json(self.run_dir / "config.json"))
        if self.start_step is None:
            self.start_step, self.started = step - 1, time.monotonic() - record.get("step_s", 0.0)
        total = self.total_steps or step
        per_step = (time.monotonic() - self.started) / max(1, step - self.start_step)
        data = {
            "step": step,
            "total_steps": total,
            "train_loss": record["loss"],
            "learning_rate": record["lr"],
            "grad_norm": record["grad_norm"],
            "tokens": record["tokens"],
            "trained_tokens": record["trained_tokens"],
        }
        checkpoint = loop.latest_checkpoint(self.run_dir)
        new_checkpoint = None
        if checkpoint is not None and checkpoint.name == f"step-{step:06d}" and step > self.checkpoint_step:
            new_checkpoint = (step, checkpoint)

        def report(conn: Any) -> None:
            status = conn.execute(
                "SELECT status FROM fine_tuning_jobs WHERE id = ?", (self.job_id,)
            ).fetchone()
            if status is None or status[0] != "running":
                # Cancelled: stop now even if the worker's signal has not arrived yet. When it does arrive, it
                # must not interrupt the cleanup that records the cancellation, so it is ignored from here on.
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                raise KeyboardInterrupt
            add_event(
                conn,
                self.job_id,
                f"Step {step}/{total}: training loss={record['loss']:.4f}",
                type="metrics",
                data=data,
            )
            update_job(conn, self.job_id, estimated_finish=int(time.time() + per_step * (total - step)))
            if new_checkpoint is not None:
                self._add_checkpoint(conn, new_checkpoint[0], new_checkpoint[1], record)

        self.write(report)
        if new_checkpoint is not None:
            self.checkpoint_step = new_checkpoint[0]

    def _add_checkpoint(self, conn: Any, step: int, path: Path, record: dict[str, Any]) -> None:
        metrics = {"step": step, "train_loss": record["loss"], **self._eval_at(step)}
        name = f"{self.job['model_name']}:ckpt-step-{step}"
        conn.execute(
            "INSERT INTO fine_tuning_checkpoints"
            " (id, job_id, created_at, step_number, metrics, fine_tuned_model_checkpoint, path)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, step_number) DO UPDATE SET id = excluded.id,"
            " created_at = excluded.created_at, metrics = excluded.metrics,"
            " fine_tuned_model_checkpoint = excluded.fine_tuned_model_checkpoint, path = excluded.path",
            (f"ftckpt-{secrets.token_hex(12)}", self.job_id, int(time.time()), step,
             json.dumps(metrics), name, str(path)),
        )  # fmt: skip
        add_event(
            conn,
            self.job_id,
            f"Checkpoint created at step {step}",
            data={"step": step, "path": public_message(self.project, str(path))},
        )
        # Training keeps its last two checkpoints on disk (and the final model): list only those, as OpenAI
        # lists only the checkpoints it keeps.
        for row in conn.execute(
            "SELECT id, path FROM fine_tuning_checkpoints WHERE job_id = ?", (self.job_id,)
        ).fetchall():
            if not Path(row["path"]).exists():
                conn.execute("DELETE FROM fine_tuning_checkpoints WHERE id = ?", (row["id"],))

    def _eval_at(self, step: int) -> dict[str, float]:
        from tunewise.train import records

        for line in reversed(records.MetricsLog(self.run_dir / "metrics.jsonl").read()):
            if line.get("step") == step and "eval_loss" in line:
                return {"valid_loss": line["eval_loss"], "valid_mean_token_accuracy": line["eval_accuracy"]}
        return {}

    def _record_resolved(self, recorded: dict[str, Any]) -> None:
        resolved = recorded["resolved"]
        self.total_steps = recorded["steps"]
        shown: dict[str, Any] = {
            "n_epochs": resolved["epochs"],
            "batch_size": resolved["batch_size"],
            "learning_rate_multiplier": round(resolved["learning_rate"] / self.base_lr, 6)
            if self.base_lr
            else 1.0,
        }
        extra = {"method": recorded["config"]["method"], "learning_rate": resolved["learning_rate"]}
        if resolved.get("lora_rank") is not None:
            extra.update(lora_rank=resolved["lora_rank"], lora_alpha=resolved["lora_alpha"])
        extra.update(max_length=resolved["max_length"], checkpoint_every=recorded["checkpoint_every"])
        shown[EXTRA] = extra
        self.write(lambda conn: update_job(conn, self.job_id, resolved=shown))

    # --- outcomes -------------------------------------------------------------------------------------

    def _succeed(self) -> None:
        from tunewise.train import records

        steps = [r for r in records.MetricsLog(self.run_dir / "metrics.jsonl").read() if "loss" in r]
        trained_tokens = sum(r["tokens"] for r in steps)
        result_file = self._results_file(steps)
        output = self.run_dir / ("adapter" if (self.run_dir / "adapter").is_dir() else "model")
        name = self.job["model_name"]
        last = steps[-1] if steps else {"step": 0, "loss": None}

        def finish(conn: Any) -> None:
            if not update_job(
                conn, self.job_id, ("running",), status="succeeded", fine_tuned_model=name,
                finished_at=int(time.time()), estimated_finish=None, trained_tokens=trained_tokens,
                result_files=[result_file] if result_file else [],
            ):  # fmt: skip
                return  # cancelled at the last moment: the cancellation stands
            self._add_checkpoint(conn, last["step"], output, {"loss": last["loss"]})
            add_event(conn, self.job_id, f"New fine-tuned model created: {name}")
            add_event(conn, self.job_id, "The job has successfully completed")

        self.write(finish)

    def _results_file(self, steps: list[dict[str, Any]]) -> str | None:
        """OpenAI's step-metrics CSV, stored as a file with purpose `fine-tune-results`."""
        from tunewise.fileio import atomic_write_text
        from tunewise.serve.files import add_file, files_dir, new_file_id
        from tunewise.train import records

        log_lines = records.MetricsLog(self.run_dir / "metrics.jsonl").read()
        evals = {r["step"]: r for r in log_lines if "eval_loss" in r}
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", "train_loss", "learning_rate", "valid_loss", "valid_mean_token_accuracy"])
        for r in steps:
            e = evals.get(r["step"], {})
            writer.writerow(
                [r["step"], r["loss"], r["lr"], e.get("eval_loss", ""), e.get("eval_accuracy", "")]
            )
        file_id = new_file_id()
        path = files_dir(self.project) / file_id
        atomic_write_text(path, buffer.getvalue())
        add_file(
            self.project, path, "step_metrics.csv", "fine-tune-results", file_id, self.job.get("api_key_id")
        )
        return file_id

    def _record_stop(self, cancelled: bool) -> tuple[int, int]:
        """Make result.json tell where training stopped: the last step over every attempt and the checkpoint a
        resume starts from. A job that was not cancelled is `interrupted` (its run's row stays `running`, as the
        job does) until the next server resumes it. Returns (last step, checkpoint step)."""
        from tunewise.fileio import atomic_write_json
        from tunewise.train import loop, records

        path = self.run_dir / "result.json"
        steps = [r["step"] for r in records.MetricsLog(self.run_dir / "metrics.jsonl").read() if "loss" in r]
        step = max(steps, default=0)
        checkpoint = loop.latest_checkpoint(self.run_dir) if self.run_dir.is_dir() else None
        resume_at = records.read_json(checkpoint / "state.json")["step"] if checkpoint else 0
        if not path.is_file():
            return step, resume_at  # stopped before training started: nothing recorded, nothing to correct
        result = records.read_json(path)
        result.update(steps=step, resumes_from_step=resume_at)
        if not cancelled:
            result.update(
                status="interrupted",
                error=f"interrupted at step {step} (the server stopped); resumes from the checkpoint at step "
                f"{resume_at} when the server starts again",
            )
            result.pop("finished_at", None)
        atomic_write_json(path, result)
        with self.registry.transaction() as conn:
            if cancelled:
                conn.execute(
                    "UPDATE runs SET result = ? WHERE id = ?", (json.dumps(result), self.job["run_id"])
                )
            else:
                conn.execute(
                    "UPDATE runs SET status = 'running', finished_at = NULL, result = ? WHERE id = ?",
                    (json.dumps(result), self.job["run_id"]),
                )
        return step, resume_at

    def _close_run(self, status: str, error: str) -> None:
        """Finish the job's run when training stopped before recording its own outcome (it does, once started)."""
        store = RunStore(self.project)
        try:
            run = store.get(self.job["run_id"])
        except TunewiseError:
            return  # stopped before the run was registered
        if run.status == "running":
            store.finish(run, status, {"error": error})

    def _fail(self, code: str, message: str) -> None:
        self._close_run("failed", message)  # the run's own record keeps the full paths
        message = public_message(self.project, message)

        def fail(conn: Any) -> None:
            if update_job(
                conn, self.job_id, ("running",), status="failed", finished_at=int(time.time()),
                estimated_finish=None, error={"code": code, "message": message, "param": None},
            ):  # fmt: skip
                add_event(conn, self.job_id, f"Fine-tuning failed: {message}", level="error")

        self.write(fail)

    def close(self) -> None:
        self.registry.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunewise.serve.runner", description=__doc__.splitlines()[0]
    )
    parser.add_argument("project", type=Path)
    parser.add_argument("job_id")
    parser.add_argument("--parent", type=int, default=None, help="the server's pid: exit with it")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.parent is not None:
        _die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    job = JobRun(Project(args.project.resolve()), args.job_id)
    try:
        return job.run()
    finally:
        job.close()


if __name__ == "__main__":
    sys.exit(main())
