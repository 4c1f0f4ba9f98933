"""The run store: the one place that creates, updates, finishes, lists and finds runs.

A run is a folder `.tunewise/runs/<id>/` and a row of the registry's `runs` table. Every kind goes through here:

    train      `tunewise train` (train/records.py), and the pipeline's train stage
    eval       `tunewise eval` (evaluate/run.py), and the pipeline's baseline and evaluate stages
    pipeline   `tunewise run`, from its first stage to its last (pipeline/run.py)
    job        a fine-tuning job of the jobs API (serve/runner.py); its id is the job's id
    index      a build of the retrieval index over the knowledge documents (rag/index.py); reuse records none

The folder holds `config.json` (what the run was asked), the files the run writes (`metrics.jsonl`,
`records.jsonl`, `summary.json`, ...) and `result.json` (status, error, final numbers), written even when the run
fails or is cancelled. Every file is written atomically (tunewise/fileio.py). The row repeats config and result
for queries and adds the key figures `tunewise runs` shows: losses, tokens and seconds for training, accuracy
per arm for an evaluation, the verdict for a pipeline run. An evaluation's model calls (tokens and latency of
every answer and sample) are rows of `model_calls`; `tunewise runs show` sums them per arm.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.fileio import append_jsonl, atomic_write_json, atomic_write_jsonl
from tunewise.project import Project
from tunewise.registry.db import utc_now

KINDS = ("train", "eval", "pipeline", "job", "index")
STATUSES = ("running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
SHOWN_MATCHES = 10  # ids listed when a prefix is ambiguous


def new_run_id(kind: str) -> str:
    """`<kind>-<UTC time>-<4 hex>`: sorts by start time, unique enough for runs started by hand.

    >>> rid = new_run_id("train")
    >>> rid.startswith("train-") and len(rid) == len("train-20261203-101500-abcd")
    True
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{kind}-{stamp}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Run:
    """One row of the `runs` table."""

    id: str
    kind: str
    status: str
    created_at: str
    path: Path
    config: dict[str, Any]
    name: str | None = None
    finished_at: str | None = None
    dataset_versions: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        """Wall time from start to finish (to the second); None while running."""
        if self.finished_at is None:
            return None
        start, end = (datetime.fromisoformat(t) for t in (self.created_at, self.finished_at))
        return (end - start).total_seconds()

    @property
    def error(self) -> str | None:
        return (self.result or {}).get("error")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["seconds"] = self.seconds
        return out


@dataclass(frozen=True)
class ModelCall:
    """One call of a model during an evaluation: the scored answer (sample 0) or a consistency sample."""

    arm: str
    example_id: str
    sample: int
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: float | None


@dataclass
class Recording:
    """A run being recorded by `RunStore.recording`: the body sets what `finish` records when it ends."""

    run: Run
    result: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    dataset_versions: list[str | None] | None = None  # None: keep those given when the run was created


class RunStore:
    """Runs of one project. Each method opens the registry, does its work in one transaction, closes it."""

    def __init__(self, project: Project):
        self.project = project

    def folder(self, run_id: str) -> Path:
        return self.project.runs_dir / run_id

    # --- creating ----------------------------------------------------------------------------------------

    def create(
        self,
        kind: str,
        config: Mapping[str, Any],
        *,
        run_id: str | None = None,
        name: str | None = None,
        dataset_versions: Iterable[str | None] = (),
    ) -> Run:
        """A new run: its id (`new_run_id(kind)` unless given), its folder with `config.json`, its row
        (status 'running')."""
        _check_kind(kind)
        run_id = run_id or new_run_id(kind)
        path = self.folder(run_id)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / "config.json", config)
        return self.register(
            kind, config, run_id=run_id, path=path, name=name, dataset_versions=dataset_versions
        )

    @contextmanager
    def recording(
        self,
        kind: str,
        config: Mapping[str, Any],
        *,
        run_id: str | None = None,
        name: str | None = None,
        dataset_versions: Iterable[str | None] = (),
    ) -> Iterator[Recording]:
        """Create a run, run the `with` body, finish it: 'succeeded' with the result and figures the body set,
        'cancelled' on Ctrl-C (KeyboardInterrupt), 'failed' with the error on any other exception (re-raised).

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     store = RunStore(Project(Path(folder)))
        ...     with store.recording("eval", {"arms": ["zero-shot"]}) as rec:
        ...         rec.figures = {"accuracy": {"zero-shot": 0.5}}
        ...     run = store.get(rec.run.id)
        >>> run.kind, run.status, run.figures
        ('eval', 'succeeded', {'accuracy': {'zero-shot': 0.5}})
        """
        run = self.create(kind, config, run_id=run_id, name=name, dataset_versions=dataset_versions)
        rec = Recording(run)
        try:
            yield rec
        except BaseException as exc:
            status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
            error = {"error": str(exc) or type(exc).__name__}
            self.finish(
                run,
                status,
                {**rec.result, **error},
                figures=rec.figures,
                dataset_versions=rec.dataset_versions,
            )
            raise
        self.finish(run, "succeeded", rec.result, figures=rec.figures, dataset_versions=rec.dataset_versions)

    def register(
        self,
        kind: str,
        config: Mapping[str, Any],
        *,
        run_id: str,
        path: Path | None = None,
        name: str | None = None,
        dataset_versions: Iterable[str | None] = (),
    ) -> Run:
        """The row of a run whose folder its own code writes (training writes config.json itself).

        Registering an id that exists again (a resumed run) sets it back to 'running' with the new config; its
        kind, start time and name stay, so a job's run stays a 'job' when training registers it as 'train'."""
        _check_kind(kind)
        versions = [v for v in dict.fromkeys(dataset_versions) if v]
        path = Path(path) if path is not None else self.folder(run_id)
        with self.project.registry() as registry, registry.transaction() as conn:
            conn.execute(
                "INSERT INTO runs (id, kind, name, status, created_at, finished_at, dataset_versions, config,"
                " result, figures, path) VALUES (?, ?, ?, 'running', ?, NULL, ?, ?, NULL, '{}', ?)"
                " ON CONFLICT(id) DO UPDATE SET status='running', finished_at=NULL, config=excluded.config,"
                " name=coalesce(runs.name, excluded.name), path=excluded.path,"
                " dataset_versions=CASE WHEN excluded.dataset_versions='[]' THEN runs.dataset_versions"
                " ELSE excluded.dataset_versions END",
                (run_id, kind, name, utc_now(), json.dumps(versions), _dumps(config), str(path)),
            )
            return _run(conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone())

    # --- the run's files -----------------------------------------------------------------------------------

    def write_json(self, run: Run, name: str, payload: Any) -> Path:
        """Write `name` in the run's folder as JSON, atomically; returns its path."""
        path = run.path / name
        atomic_write_json(path, payload)
        return path

    def write_jsonl(self, run: Run, name: str, records: Iterable[Any]) -> Path:
        path = run.path / name
        atomic_write_jsonl(path, records)
        return path

    def append_jsonl(self, run: Run, name: str, record: Any) -> Path:
        path = run.path / name
        append_jsonl(path, record)
        return path

    # --- status ------------------------------------------------------------------------------------------

    def set_status(self, run: Run | str, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown run status {status!r}; statuses: {', '.join(STATUSES)}")
        with self.project.registry() as registry, registry.transaction() as conn:
            conn.execute("UPDATE runs SET status=? WHERE id=?", (status, _id(run)))

    def finish(
        self,
        run: Run | str,
        status: str,
        result: Mapping[str, Any] | None = None,
        *,
        figures: Mapping[str, Any] | None = None,
        dataset_versions: Iterable[str | None] | None = None,
    ) -> Run:
        """End a run: write `result.json` ({**result, status, finished_at}) and set the row's status, result
        and finish time, and its key figures and dataset versions when given (None keeps those recorded)."""
        if status not in FINISHED:
            raise ValueError(f"a run finishes as {', '.join(FINISHED)}, not {status!r}")
        record = {**(result or {}), "status": status}
        record.setdefault("finished_at", utc_now())
        with self.project.registry() as registry:
            row = registry.conn.execute("SELECT path FROM runs WHERE id=?", (_id(run),)).fetchone()
            if row is None:
                raise KeyError(f"no run {_id(run)} in the registry")  # a bug: finish follows create/register
            atomic_write_json(Path(row["path"]) / "result.json", record)
            versions = None if dataset_versions is None else [v for v in dataset_versions if v]
            with registry.transaction() as conn:
                conn.execute(
                    "UPDATE runs SET status=?, finished_at=?, result=?, figures=coalesce(?, figures),"
                    " dataset_versions=coalesce(?, dataset_versions) WHERE id=?",
                    (
                        status,
                        record["finished_at"],
                        _dumps(record),
                        None if figures is None else _dumps(figures),
                        None if versions is None else json.dumps(list(dict.fromkeys(versions))),
                        _id(run),
                    ),
                )
                return _run(conn.execute("SELECT * FROM runs WHERE id=?", (_id(run),)).fetchone())

    # --- model calls ---------------------------------------------------------------------------------------

    def log_calls(self, run: Run | str, calls: Iterable[ModelCall]) -> None:
        now = utc_now()
        rows = [
            (_id(run), c.arm, c.example_id, c.sample, c.prompt_tokens, c.completion_tokens, c.latency_ms, now)
            for c in calls
        ]
        with self.project.registry() as registry, registry.transaction() as conn:
            conn.executemany(
                "INSERT INTO model_calls (run_id, arm, example_id, sample, prompt_tokens, completion_tokens,"
                " latency_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def call_totals(self, run: Run | str) -> dict[str, dict[str, Any]]:
        """Per arm: model calls, prompt and completion tokens summed over them, mean latency in ms."""
        with self.project.registry() as registry:
            rows = registry.conn.execute(
                "SELECT arm, count(*) AS calls, sum(prompt_tokens) AS prompt_tokens,"
                " sum(completion_tokens) AS completion_tokens, avg(latency_ms) AS latency_ms"
                " FROM model_calls WHERE run_id=? GROUP BY arm ORDER BY min(id)",
                (_id(run),),
            ).fetchall()
        return {r["arm"]: {k: r[k] for k in r.keys() if k != "arm"} for r in rows}

    # --- finding -------------------------------------------------------------------------------------------

    def list(
        self, *, kind: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[Run]:
        """Runs, newest first (in the same second: the later recorded first), of one kind and status if given."""
        where, args = _filters(kind=kind, status=status)
        sql = f"SELECT * FROM runs {where} ORDER BY created_at DESC, rowid DESC"
        if limit is not None:
            sql, args = sql + " LIMIT ?", [*args, limit]
        with self.project.registry() as registry:
            return [_run(r) for r in registry.conn.execute(sql, args).fetchall()]

    def get(self, ref: str, *, kinds: Collection[str] | None = None) -> Run:
        """The run whose id is `ref`, or starts with it (a run folder's path works too); an unknown or ambiguous
        reference is a TunewiseError that says what to type."""
        ref = Path(ref).name if "/" in ref else ref.strip()
        where, args = _filters(kinds=kinds)
        with self.project.registry() as registry:
            exact = registry.conn.execute(
                f"SELECT * FROM runs {where}{' AND' if where else ' WHERE'} id=?", [*args, ref]
            ).fetchone()
            if exact is not None:
                return _run(exact)
            rows = (
                registry.conn.execute(
                    f"SELECT * FROM runs {where}{' AND' if where else ' WHERE'} substr(id, 1, ?)=?"
                    " ORDER BY created_at DESC, rowid DESC",
                    [*args, len(ref), ref],
                ).fetchall()
                if ref
                else []
            )
        what = f"{' or '.join(kinds)} run" if kinds else "run"
        listing = "tunewise runs" + (f" --kind {next(iter(kinds))}" if kinds and len(kinds) == 1 else "")
        if not rows:
            raise TunewiseError(
                f"no {what} '{ref}' in {self.project.root}", hint=f"list the runs with `{listing}`"
            )
        if len(rows) > 1:
            ids = [r["id"] for r in rows[:SHOWN_MATCHES]]
            more = f" and {len(rows) - len(ids)} more" if len(rows) > len(ids) else ""
            raise TunewiseError(
                f"'{ref}' matches {len(rows)} {what}s: {', '.join(ids)}{more}",
                hint="type more of the run id",
            )
        return _run(rows[0])


# --- key figures: what `tunewise runs` shows for each kind --------------------------------------------------


def train_figures(result: Mapping[str, Any], metrics: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A training run's figures from its result (train/loop.py's TrainResult) and its metrics.jsonl lines:
    steps, last training loss, held-out loss after training, tokens trained on (all steps), seconds.

    >>> train_figures({"steps": 2, "train_loss_last": 1.5, "eval_after": {"eval_loss": 1.75}, "wall_s": 3.0},
    ...               [{"step": 0, "eval_loss": 2.0}, {"step": 1, "loss": 2.1, "tokens": 100},
    ...                {"step": 2, "loss": 1.5, "tokens": 80}])
    {'steps': 2, 'train_loss': 1.5, 'validation_loss': 1.75, 'tokens': 180, 'seconds': 3.0}
    >>> train_figures({"status": "failed", "steps": 0, "wall_s": 0.5})
    {'steps': 0, 'seconds': 0.5}
    """
    tokens = sum(m.get("tokens", 0) for m in metrics if "loss" in m)
    figures = {
        "steps": result.get("steps"),
        "train_loss": result.get("train_loss_last"),
        "validation_loss": (result.get("eval_after") or {}).get("eval_loss"),
        "tokens": tokens or None,
        "seconds": result.get("wall_s"),
    }
    return {k: v for k, v in figures.items() if v is not None}


def eval_figures(summary: Mapping[str, Any]) -> dict[str, Any]:
    """An evaluation's figures: held-out examples, and accuracy per arm in the summary's order
    (evaluate/summary.py).

    >>> eval_figures({"n_examples": 4, "arms": [{"name": "zero-shot", "accuracy": {"value": 0.5}},
    ...                                         {"name": "few-shot", "accuracy": {"value": 0.75}}]})
    {'examples': 4, 'accuracy': {'zero-shot': 0.5, 'few-shot': 0.75}}
    """
    return {
        "examples": summary.get("n_examples"),
        "accuracy": {a["name"]: a["accuracy"]["value"] for a in summary.get("arms", [])},
    }


def pipeline_figures(verdict: str | None, stages: Mapping[str, str]) -> dict[str, Any]:
    """A pipeline run's figures: the verdict's recommendation (None when no verdict was reached) and what
    happened to each stage ('ran', 'skipped', 'not needed').

    >>> pipeline_figures("fine-tune", {"data": "skipped", "train": "ran"})
    {'verdict': 'fine-tune', 'stages': {'data': 'skipped', 'train': 'ran'}}
    """
    return {"verdict": verdict, "stages": dict(stages)}


def describe_figures(kind: str, figures: Mapping[str, Any]) -> str:
    """One line of a run's key figures, as `tunewise runs` prints them.

    >>> describe_figures("train", {"steps": 4, "train_loss": 1.234, "validation_loss": 1.5, "tokens": 12345,
    ...                            "seconds": 42.0})
    'loss 1.234, validation 1.500, 12,345 tokens, 42 s'
    >>> describe_figures("eval", {"examples": 4, "accuracy": {"zero-shot": 0.5, "few-shot": 0.75}})
    'zero-shot 50.0%, few-shot 75.0% on 4 examples'
    >>> describe_figures("pipeline", {"verdict": "keep prompting", "stages": {"data": "ran"}})
    'verdict: keep prompting'
    >>> describe_figures("pipeline", {"verdict": None, "stages": {"data": "ran"}})
    'no verdict'
    >>> describe_figures("index", {"version": "0a1b2c3d4e5f6a7b", "documents": 92, "chunks": 2410,
    ...                            "seconds": 95.2})
    'version 0a1b2c3d4e5f6a7b, 92 documents, 2,410 chunks, 95 s'
    """
    parts: list[str] = []
    if kind == "index":
        parts += [f"version {figures['version']}"] if "version" in figures else []
        parts += [f"{figures[k]:,} {k}" for k in ("documents", "chunks") if k in figures]
    if "train_loss" in figures:
        parts.append(f"loss {figures['train_loss']:.3f}")
    if "validation_loss" in figures:
        parts.append(f"validation {figures['validation_loss']:.3f}")
    if "tokens" in figures:
        parts.append(f"{figures['tokens']:,} tokens")
    if "seconds" in figures:
        parts.append(f"{figures['seconds']:.0f} s")
    for arm, value in (figures.get("accuracy") or {}).items():
        parts.append(f"{arm} {value:.1%}")
    if figures.get("accuracy") and figures.get("examples"):
        parts[-1] += f" on {figures['examples']} examples"
    if kind == "pipeline" and "stages" in figures:
        parts.append(f"verdict: {figures['verdict']}" if figures.get("verdict") else "no verdict")
    return ", ".join(parts)


# --- rows --------------------------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}; kinds: {', '.join(KINDS)}")


def _id(run: Run | str) -> str:
    return run.id if isinstance(run, Run) else run


def _dumps(payload: Any) -> str:
    return json.dumps(payload, default=str)


def _filters(
    *, kind: str | None = None, status: str | None = None, kinds: Collection[str] | None = None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if kind is not None:
        clauses.append("kind=?")
        args.append(kind)
    if kinds:
        clauses.append(f"kind IN ({', '.join('?' * len(kinds))})")
        args.extend(kinds)
    if status is not None:
        clauses.append("status=?")
        args.append(status)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), args


def _run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        created_at=row["created_at"],
        path=Path(row["path"]),
        config=json.loads(row["config"]),
        name=row["name"],
        finished_at=row["finished_at"],
        dataset_versions=json.loads(row["dataset_versions"]),
        result=json.loads(row["result"]) if row["result"] else None,
        figures=json.loads(row["figures"]),
    )
