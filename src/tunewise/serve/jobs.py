"""OpenAI's fine-tuning jobs API over tunewise's training stage.

    POST /v1/fine_tuning/jobs                      create (validated now, then queued for the worker)
    GET  /v1/fine_tuning/jobs                      list, newest first (`after`, `limit`, `has_more`)
    GET  /v1/fine_tuning/jobs/{id}                 retrieve
    POST /v1/fine_tuning/jobs/{id}/cancel          cancel (a running job's process is stopped)
    GET  /v1/fine_tuning/jobs/{id}/events          `fine_tuning.job.event` objects, newest first
    GET  /v1/fine_tuning/jobs/{id}/checkpoints     `fine_tuning.job.checkpoint` objects, newest first

Jobs live in the registry (tables of migration 006_fine_tuning); `serve.worker.JobWorker` runs them one at a
time, each in its own process (`serve.runner`), which writes the job's events, checkpoints and final status.

Hyperparameters (`method.supervised.hyperparameters`, or the older top-level `hyperparameters`) map onto
`TrainConfig`:

- `n_epochs` -> `epochs`; `batch_size` -> `batch_size` (examples per optimizer step);
- `learning_rate_multiplier` -> `learning_rate` = multiplier x the rate the auto rule picks for the method and
  the model size (LoRA 1e-3, full 2e-5 for models under 1B parameters; `train.config.auto_learning_rate`);
- each may be `"auto"`: the training stage's auto rule decides, and the job shows the resolved values once it
  runs;
- tunewise's extension, under the key `tunewise`: `method` (`lora`, the default, or `full`), `lora_rank`,
  `lora_alpha`, `max_length`, `checkpoint_every`.

The model a job makes is named `ft:<base>:<suffix>:<8 hex of the job id>` (`ft:<base>::<8 hex>` without a
suffix), OpenAI's pattern with the base's name in place of the organisation's; `fine_tuned_models()` lists them
for `/v1/models` and chat.

A job belongs to the key that created it, and so do its events, checkpoints, result file and model: other keys
get 404, as for a job that does not exist (`serve.auth.Caller`). A job's base must be one the operator allows:
the model the server serves, or one given with `tunewise serve --train-base`; never a path the client picks.
"""

from __future__ import annotations

import json
import math
import random
import re
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tunewise.errors import nearest
from tunewise.project import Project
from tunewise.registry.db import lock_rows
from tunewise.serve.auth import Caller, caller, require_key
from tunewise.serve.errors import APIError
from tunewise.serve.files import require_file

router = APIRouter(dependencies=[Depends(require_key)])

ACTIVE = ("validating_files", "queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
EXTRA = "tunewise"  # tunewise's own hyperparameters, inside `hyperparameters`
EXTRA_KEYS = ("method", "lora_rank", "lora_alpha", "max_length", "checkpoint_every")
SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CHECKPOINTS_PER_JOB = 10  # the default checkpoint interval aims at about this many per job


# --- the registry -------------------------------------------------------------------------------------


def now() -> int:
    return int(time.time())


def _decode(row: Any) -> dict[str, Any]:
    out = dict(row)
    for col in ("hyperparameters", "resolved", "error", "result_files", "metadata", "data", "metrics"):
        if isinstance(out.get(col), str):
            out[col] = json.loads(out[col])
    return out


def get_job(conn: Any, job_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone()
    return _decode(row) if row is not None else None


def add_event(
    conn: Any, job_id: str, message: str, level: str = "info", type: str = "message", data: Any = None
) -> None:
    conn.execute(
        "INSERT INTO fine_tuning_events (job_id, created_at, level, message, type, data) VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, now(), level, message, type, json.dumps(data) if data is not None else None),
    )


def update_job(conn: Any, job_id: str, where_status: tuple[str, ...] | None = None, **values: Any) -> bool:
    """Set columns of job `job_id` (JSON-encoding dicts and lists); with `where_status`, only from those states.

    Returns whether the row changed: a runner's final update loses to a cancellation that came first.
    """
    cols = ", ".join(f"{k} = ?" for k in values)
    args = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in values.values()]
    sql = f"UPDATE fine_tuning_jobs SET {cols} WHERE id = ?"
    args.append(job_id)
    if where_status:
        sql += f" AND status IN ({', '.join('?' * len(where_status))})"
        args.extend(where_status)
    return conn.execute(sql, args).rowcount == 1


def public_message(project: Project, text: str) -> str:
    """`text` as a client may read it: paths inside the project relative to it, so that a job's error names
    `.tunewise/jobs/<id>.log`, not where the server keeps the project.

    >>> public_message(Project(Path("/srv/p")), "failed; see /srv/p/.tunewise/jobs/ftjob-1.log")
    'failed; see .tunewise/jobs/ftjob-1.log'
    """
    root = str(project.root)
    return text.replace(root + "/", "").replace(root, ".")


def with_registry(project: Project, fn: Any) -> Any:
    """Run `fn(conn)` in one short write transaction on a fresh connection."""
    registry = project.registry()
    try:
        with registry.transaction() as conn:
            return fn(conn)
    finally:
        registry.close()


def read_registry(project: Project, fn: Any) -> Any:
    registry = project.registry()
    try:
        return fn(registry.conn)
    finally:
        registry.close()


# --- objects ------------------------------------------------------------------------------------------


def job_object(job: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI `fine_tuning.job` object of a registry row."""
    shown = {k: job["hyperparameters"].get(k, "auto") for k in OPENAI_HYPERPARAMETERS}
    if job.get("resolved"):  # once the run started: the values `auto` became
        shown.update({k: job["resolved"][k] for k in OPENAI_HYPERPARAMETERS if k in job["resolved"]})
    extra = dict(job["hyperparameters"].get(EXTRA) or {})
    if job.get("resolved"):
        extra.update(job["resolved"].get(EXTRA) or {})
    method_hp = {**shown, EXTRA: extra} if extra else dict(shown)
    return {
        "id": job["id"],
        "object": "fine_tuning.job",
        "created_at": job["created_at"],
        "model": job["model"],
        "fine_tuned_model": job["fine_tuned_model"],
        "finished_at": job["finished_at"],
        "status": job["status"],
        "training_file": job["training_file"],
        "validation_file": job["validation_file"],
        "hyperparameters": shown,
        "method": {"type": "supervised", "supervised": {"hyperparameters": method_hp}},
        "seed": job["seed"],
        "suffix": job["suffix"],
        "user_provided_suffix": job["suffix"],
        "error": job["error"],
        "trained_tokens": job["trained_tokens"],
        "result_files": job["result_files"] or [],
        "estimated_finish": job["estimated_finish"],
        "organization_id": "tunewise",
        "integrations": [],
        "metadata": job["metadata"],
    }


def event_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"ftevent-{row['id']}",
        "object": "fine_tuning.job.event",
        "created_at": row["created_at"],
        "level": row["level"],
        "message": row["message"],
        "type": row["type"],
        "data": row["data"] or {},
    }


def checkpoint_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "object": "fine_tuning.job.checkpoint",
        "created_at": row["created_at"],
        "fine_tuned_model_checkpoint": row["fine_tuned_model_checkpoint"],
        "fine_tuning_job_id": row["job_id"],
        "step_number": row["step_number"],
        "metrics": row["metrics"],
    }


def model_name(base: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's `ft:` name: base, suffix (may be empty), 8 characters of the job id.

    >>> model_name("tiny:random", "demo", "ftjob-0123456789abcdef01234567")
    'ft:tiny:random:demo:01234567'
    >>> model_name("/models/my-llama", None, "ftjob-0123456789abcdef01234567")
    'ft:my-llama::01234567'
    """
    label = base if ":" in base or "/" not in base else Path(base).name
    return f"ft:{label}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def fine_tuned_models(project: Project) -> list[dict[str, Any]]:
    """The models that succeeded jobs made, newest first, for `/v1/models` and chat.

    Each: `id` (the `ft:` name), `created` (unix seconds), `owned_by`, `run_dir` (holds `adapter/` for LoRA or
    `model/` for full fine-tuning), and `base`, `job_id`, `method`, `api_key_id` (the key that owns it; None: the
    operator).
    """
    if project.registry_location() is None and not (project.state_dir / "registry.sqlite3").is_file():
        return []

    def rows(conn: Any) -> list[dict[str, Any]]:
        return [
            _decode(r)
            for r in conn.execute(
                "SELECT * FROM fine_tuning_jobs WHERE status = 'succeeded' AND fine_tuned_model IS NOT NULL"
                " ORDER BY rowid DESC"
            ).fetchall()
        ]

    out = []
    for job in read_registry(project, rows):
        run_dir = project.runs_dir / job["run_id"]
        out.append(
            {
                "id": job["fine_tuned_model"],
                "created": job["finished_at"] or job["created_at"],
                "owned_by": "tunewise",
                "run_dir": str(run_dir),
                "base": job["model"],
                "api_key_id": job.get("api_key_id"),
                "job_id": job["id"],
                "method": (job["hyperparameters"].get(EXTRA) or {}).get("method", "lora"),
            }
        )
    return out


# --- creating a job -----------------------------------------------------------------------------------


class JobRequest(BaseModel):
    """The body of `POST /v1/fine_tuning/jobs`; an unknown field is a 400 naming it."""

    model_config = ConfigDict(extra="forbid")

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch.manual_seed takes
    hyperparameters: dict[str, Any] | None = None  # OpenAI's older place for them; same keys as in `method`
    method: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None


def trainable_bases(served_base: str, train_bases: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The bases a job may name: the model the server serves, then the operator's `--train-base` list.

    >>> trainable_bases("tiny:random", ["embedded:smollm2-135m-instruct", "tiny:random"])
    ['tiny:random', 'embedded:smollm2-135m-instruct']
    """
    return list(dict.fromkeys([served_base, *train_bases]))


def check_model(model: str, allowed: list[str]) -> None:
    """404 unless `model` is one of the `allowed` bases, compared as text: a client's string is never opened as
    a path, so the answer is the same whether or not such a file exists on the server."""
    listed = ", ".join(f"'{b}'" for b in allowed)
    if model in allowed:
        return
    if model.startswith("ft:"):
        raise APIError(
            400,
            f"model '{model}' is a fine-tuned model: continuing a fine-tuned model is not supported; "
            f"fine-tune its base instead ({listed})",
            param="model",
            code="model_not_supported",
        )
    raise APIError(
        404,
        f"model '{model}' cannot be fine-tuned on this server; the bases it trains: {listed}",
        param="model",
        code="model_not_found",
    )


def parse_hyperparameters(body: JobRequest) -> dict[str, Any]:
    """The requested hyperparameters, checked: {n_epochs, batch_size, learning_rate_multiplier, tunewise: {...}}."""
    hp: dict[str, Any] = dict(body.hyperparameters or {})
    param = "hyperparameters"
    if body.method is not None:
        method = dict(body.method)
        kind = method.get("type", "supervised")
        if kind != "supervised":
            raise APIError(
                400,
                f"method type '{kind}' is not supported: tunewise runs supervised fine-tuning only",
                param="method.type",
            )
        unknown = [k for k in method if k not in ("type", "supervised")]
        if unknown:
            raise APIError(400, f"unknown field method.{unknown[0]}", param=f"method.{unknown[0]}")
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict) or any(k != "hyperparameters" for k in supervised):
            raise APIError(
                400, "method.supervised may only hold 'hyperparameters'", param="method.supervised"
            )
        if hp and supervised.get("hyperparameters"):
            raise APIError(
                400,
                "give hyperparameters either in method or at the top level, not both",
                param="hyperparameters",
            )
        param = "method.supervised.hyperparameters"
        if not isinstance(supervised.get("hyperparameters") or {}, dict):
            raise APIError(400, f"{param} must be an object", param=param)
        hp = dict(supervised.get("hyperparameters") or hp)
    problems: list[str] = []
    valid = [*OPENAI_HYPERPARAMETERS, EXTRA]
    for key in hp:
        if key not in valid:
            guess = nearest(key, valid)
            problems.append(
                f"unknown hyperparameter '{key}'" + (f" (did you mean '{guess}'?)" if guess else "")
            )
    out: dict[str, Any] = {
        key: "auto" if hp.get(key) is None else hp[key] for key in ("n_epochs", "batch_size")
    }
    multiplier = hp.get("learning_rate_multiplier", "auto")
    if multiplier is None or multiplier == "auto":
        out["learning_rate_multiplier"] = "auto"
    elif (
        isinstance(multiplier, bool)
        or not isinstance(multiplier, (int, float))
        or not 1e-6 <= multiplier <= 1e3
    ):
        problems.append(
            f"learning_rate_multiplier must be 'auto' or a number in [1e-06, 1000] (got {multiplier!r})"
        )
    else:
        out["learning_rate_multiplier"] = float(multiplier)
    extra = hp.get(EXTRA) or {}
    if not isinstance(extra, dict):
        problems.append(f"{EXTRA} must be an object with any of {', '.join(EXTRA_KEYS)}")
        extra = {}
    for key in extra:
        if key not in EXTRA_KEYS:
            guess = nearest(key, EXTRA_KEYS)
            problems.append(
                f"unknown {EXTRA} setting '{key}'" + (f" (did you mean '{guess}'?)" if guess else "")
            )
    checked = {k: v for k, v in extra.items() if k in EXTRA_KEYS}
    config, found = _checked_config(out["n_epochs"], out["batch_size"], checked)
    problems.extend(found)
    if config is not None:  # 3.0 epochs in JSON is 3
        out["n_epochs"], out["batch_size"] = config.epochs, config.batch_size
    if checked:
        out[EXTRA] = checked
    if problems:
        raise APIError(400, f"{param}: " + "; ".join(dict.fromkeys(problems)), param=param)
    return out


def _checked_config(n_epochs: Any, batch_size: Any, extra: dict[str, Any]) -> tuple[Any, list[str]]:
    """The request's values checked by `TrainConfig` itself, so the API accepts exactly what the spec and
    `tunewise train` accept, with the same words; OpenAI's names replace tunewise's in the problems."""
    from tunewise.errors import ConfigError
    from tunewise.train.config import TrainConfig

    try:
        return TrainConfig(epochs=n_epochs, batch_size=batch_size, **extra), []
    except ConfigError as exc:
        renamed = {"epochs": "n_epochs", **{k: f"{EXTRA}.{k}" for k in EXTRA_KEYS}}
        return None, [
            next((renamed[k] + p[len(k) :] for k in renamed if p.startswith(f"{k}:")), p)
            for p in exc.problems
        ]


def count_examples(path: str | Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def train_values(job: dict[str, Any], data: str, eval_data: str | None, n_examples: int) -> dict[str, Any]:
    """`TrainConfig` values for a job (the learning rate is left to the runner: it needs the model size).

    The checkpoint interval aims at about ten checkpoints per job, so a restart loses little work.

    >>> v = train_values({"model": "tiny:random", "seed": 1, "hyperparameters": {"n_epochs": 4,
    ...     "batch_size": "auto", "learning_rate_multiplier": "auto"}}, "t.jsonl", None, 40)
    >>> v["epochs"], v["batch_size"], v["checkpoint_every"], v["method"]
    (4, 'auto', 4, 'lora')
    """
    from tunewise.train.config import AUTO, auto_batch_size, auto_epochs

    hp = job["hyperparameters"]
    extra = hp.get(EXTRA) or {}
    epochs = hp["n_epochs"] if hp["n_epochs"] != AUTO else auto_epochs(n_examples)
    batch = hp["batch_size"] if hp["batch_size"] != AUTO else auto_batch_size(n_examples)
    steps = math.ceil(n_examples / min(batch, n_examples)) * epochs
    values: dict[str, Any] = {
        "data": [data],
        "eval_data": [eval_data] if eval_data else [],
        "base": job["model"],
        "method": "lora",
        "epochs": hp["n_epochs"],
        "batch_size": hp["batch_size"],
        "seed": job["seed"],
        "checkpoint_every": max(1, steps // CHECKPOINTS_PER_JOB),
        "progress": False,
    }
    values.update(extra)  # tunewise's own settings carry TrainConfig's names (EXTRA_KEYS)
    return values


@router.post("/v1/fine_tuning/jobs")
def create_job(request: Request, body: JobRequest) -> dict:
    project: Project = request.app.state.project
    who = caller(request)
    check_model(body.model, request.app.state.trainable)
    training = require_file(project, body.training_file, "training_file", who)
    validation = (
        require_file(project, body.validation_file, "validation_file", who) if body.validation_file else None
    )
    for row, param in ((training, "training_file"), (validation, "validation_file")):
        if row is not None and row["purpose"] != "fine-tune":
            raise APIError(400, f"{row['id']} has purpose '{row['purpose']}', not 'fine-tune'", param=param)
    if body.suffix is not None and not SUFFIX.match(body.suffix):
        raise APIError(
            400,
            f"suffix '{body.suffix}' must be 1-64 letters, digits, '-', '_' or '.'",
            param="suffix",
        )
    if body.integrations:
        raise APIError(400, "integrations are not supported by tunewise", param="integrations")
    hyperparameters = parse_hyperparameters(body)
    job_id = f"ftjob-{secrets.token_hex(12)}"
    job = {
        "id": job_id,
        "created_at": now(),
        "model": body.model,
        "status": "queued",
        "training_file": body.training_file,
        "validation_file": body.validation_file,
        "hyperparameters": hyperparameters,
        "suffix": body.suffix,
        # OpenAI picks a seed when none is given and reports it; so does tunewise.
        "seed": body.seed if body.seed is not None else random.randrange(2**31),
        "run_id": job_id,  # the training run directory is .tunewise/runs/<job id>
        "model_name": model_name(body.model, body.suffix, job_id),
        "metadata": body.metadata,
        "api_key_id": who.key_id,
    }

    def insert(conn: Any) -> None:
        # The files, locked until the job is recorded: a deletion on another server waits and then sees the job.
        files = [f for f in (body.training_file, body.validation_file) if f]
        present = conn.execute(
            f"SELECT id FROM files WHERE id IN ({', '.join('?' * len(files))})" + lock_rows(conn, "SHARE"),
            files,
        ).fetchall()
        gone = sorted(set(files) - {r["id"] for r in present})
        if gone:
            param = "training_file" if gone[0] == body.training_file else "validation_file"
            raise APIError(
                404, f"no file with id '{gone[0]}' (it was deleted)", param=param, code="file_not_found"
            )
        cols = list(job)
        conn.execute(
            f"INSERT INTO fine_tuning_jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [json.dumps(job[c]) if isinstance(job[c], dict) else job[c] for c in cols],
        )
        names = body.training_file + (f" and {body.validation_file}" if body.validation_file else "")
        add_event(conn, job_id, f"Validated training file: {names}")
        add_event(conn, job_id, "Fine-tuning job queued")

    with_registry(project, insert)
    return job_object(read_registry(project, lambda conn: get_job(conn, job_id)))


# --- reading and cancelling ---------------------------------------------------------------------------


def require_job(project: Project, job_id: str, who: Caller | None = None) -> dict[str, Any]:
    """The job's row; 404 when it does not exist, or `who` (None: no check) may not see it."""
    job = read_registry(project, lambda conn: get_job(conn, job_id))
    if job is None or (who is not None and not who.sees(job.get("api_key_id"))):
        raise APIError(
            404, f"no fine-tuning job with id '{job_id}'", param="fine_tuning_job_id", code="not_found"
        )
    return job


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= 100:
        raise APIError(400, f"limit must be in 1..100 (got {limit})", param="limit")


def _page(
    table: str,
    where: str,
    args: list[Any],
    after_rowid: Any,
    limit: int,
    project: Project,
    key: str = "rowid",
) -> Any:
    """Rows newest first after the row `after_rowid` (an SQL expression giving its `key`, or None). `key` orders
    the rows: the insertion order (rowid), or an id that follows it."""
    sql = f"SELECT * FROM {table} WHERE {where}"
    if after_rowid is not None:
        sql += f" AND {key} < ({after_rowid[0]})"
        args = [*args, *after_rowid[1]]
    sql += f" ORDER BY {key} DESC LIMIT ?"
    rows = read_registry(project, lambda conn: conn.execute(sql, (*args, limit + 1)).fetchall())
    return [_decode(r) for r in rows[:limit]], len(rows) > limit


@router.get("/v1/fine_tuning/jobs")
def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> dict:
    _check_limit(limit)
    owned, args = caller(request).where()
    after_rowid = (
        (f"SELECT rowid FROM fine_tuning_jobs WHERE id = ? AND {owned}", [after, *args]) if after else None
    )
    rows, more = _page("fine_tuning_jobs", owned, args, after_rowid, limit, request.app.state.project)
    return {"object": "list", "data": [job_object(r) for r in rows], "has_more": more}


@router.get("/v1/fine_tuning/jobs/{job_id}")
def retrieve_job(request: Request, job_id: str) -> dict:
    return job_object(require_job(request.app.state.project, job_id, caller(request)))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(request: Request, job_id: str) -> dict:
    project: Project = request.app.state.project
    job = require_job(project, job_id, caller(request))
    if job["status"] in ("succeeded", "failed"):
        raise APIError(
            400, f"job {job_id} has already {job['status']}: nothing to cancel", param="fine_tuning_job_id"
        )

    def cancel(conn: Any) -> bool:
        changed = update_job(
            conn, job_id, ACTIVE, status="cancelled", finished_at=now(), estimated_finish=None
        )
        if changed:
            add_event(conn, job_id, "Job cancelled by request")
        return changed

    if with_registry(project, cancel) and job["status"] == "running":
        # The worker also notices within its poll interval; signalling here makes it immediate.
        from tunewise.serve.worker import stop_job_process

        stop_job_process(job)
    return job_object(require_job(project, job_id))


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def list_events(request: Request, job_id: str, after: str | None = None, limit: int = 20) -> dict:
    _check_limit(limit)
    project: Project = request.app.state.project
    require_job(project, job_id, caller(request))
    after_rowid = None
    if after is not None:
        number = after.removeprefix("ftevent-")
        if not number.isdigit():
            raise APIError(400, f"after must be an event id like ftevent-12 (got '{after}')", param="after")
        after_rowid = ("?", [int(number)])
    # Events page by their id (an autoincrement, so in insertion order), which their API ids carry.
    rows, more = _page("fine_tuning_events", "job_id = ?", [job_id], after_rowid, limit, project, key="id")
    return {"object": "list", "data": [event_object(r) for r in rows], "has_more": more}


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def list_checkpoints(request: Request, job_id: str, after: str | None = None, limit: int = 10) -> dict:
    _check_limit(limit)
    project: Project = request.app.state.project
    require_job(project, job_id, caller(request))
    after_rowid = ("SELECT rowid FROM fine_tuning_checkpoints WHERE id = ?", [after]) if after else None
    rows, more = _page("fine_tuning_checkpoints", "job_id = ?", [job_id], after_rowid, limit, project)
    data = [checkpoint_object(r) for r in rows]
    return {
        "object": "list",
        "data": data,
        "has_more": more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }
