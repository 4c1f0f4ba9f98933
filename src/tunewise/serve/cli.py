"""`tunewise serve` and `tunewise keys`: parse, call `serve.app` / `serve.auth`, render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunewise.cli import app, err, out, print_json
from tunewise.errors import TunewiseError
from tunewise.project import project_or_cwd

keys_app = typer.Typer(help="Create, list and revoke API keys for `tunewise serve`.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _adapters(values: list[str] | None) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for value in values or []:
        name, sep, run = value.partition("=")
        if not sep or not name.strip() or not run.strip():
            raise TunewiseError(
                f"--adapter {value!r} is not NAME=RUN",
                hint="e.g. --adapter support=train-2025 or support=./my-adapter",
            )
        if name.strip() in adapters:
            raise TunewiseError(f"--adapter name '{name.strip()}' is given twice")
        adapters[name.strip()] = run.strip()
    return adapters


SERVE_HELP = """Serve the base model and its fine-tuned adapters over OpenAI's API (chat completions, models,
files, fine-tuning jobs). Requests need an API key (`tunewise keys create`) unless --no-auth, which is only
allowed on a loopback host.

Examples:

  tunewise serve --no-auth

  tunewise serve --host 0.0.0.0 --port 8000 --adapter support=train-20250101-120000-ab12

  tunewise serve --no-auth --adapter mine=./my-lora   (a PEFT adapter folder trained anywhere)

  tunewise serve --engine vllm --adapter support=train-20250101-120000-ab12   (vLLM decodes, on a GPU)

  tunewise serve --host 0.0.0.0 --registry postgresql://team@db.internal/tunewise   (one of several servers on a
  team's shared registry)

Then: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY).chat.completions.create(model=..., messages=[...])"""


@app.command(help=SERVE_HELP)
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Accept requests without a key (loopback only)."),
    base: str | None = typer.Option(
        None, "--base", help="Base model (default: model.base of tunewise.yaml)."
    ),
    adapter: list[str] | None = typer.Option(
        None,
        "--adapter",
        help="NAME=RUN: serve a training run (id or folder), or a PEFT adapter folder (adapter_config.json + "
        "adapter_model.safetensors) on the base it names, as model NAME; repeatable.",
    ),
    max_batch_size: int = typer.Option(16, "--max-batch-size", help="Requests decoded together."),
    batching: str = typer.Option(
        "continuous",
        "--batching",
        metavar="continuous|static",
        help="continuous: a request joins its model's running batch at the next decode step and leaves it when "
        "it ends; static: a batch runs until its last request ends, newcomers wait for the next one.",
    ),
    queue_size: int = typer.Option(64, "--queue-size", help="Waiting requests before 429."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds per request, queue wait included."),
    max_tokens_cap: int = typer.Option(1024, "--max-tokens-cap", help="The largest max_tokens allowed."),
    threads: int | None = typer.Option(
        None, "--threads", help="torch threads for decoding (default: one per core; fewer on a busy machine)."
    ),
    project_dir: Path | None = typer.Option(
        None, "--project", help="Project folder (default: found upward)."
    ),
    registry: str | None = typer.Option(
        None,
        "--registry",
        help="A shared registry's PostgreSQL URL, for several servers and workers on one team's keys, files and "
        "jobs (default: TUNEWISE_REGISTRY, then registry: in tunewise.yaml, else the project's SQLite file).",
    ),
    no_jobs: bool = typer.Option(False, "--no-jobs", help="Do not run fine-tuning jobs in this server."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (and uvicorn's info)."),
    json_guard: bool = typer.Option(
        True,
        "--json-guard/--no-json-guard",
        help="Stop non-streamed answers from looping inside JSON, as the evaluation decoded them.",
    ),
    train_base: list[str] | None = typer.Option(
        None,
        "--train-base",
        help="A base fine-tuning jobs may name besides the served one (embedded:..., or a model folder); "
        "repeatable. Clients never pick a path.",
    ),
    engine: str = typer.Option(
        "local",
        "--engine",
        metavar="local|vllm",
        help="local: tunewise's own batched decoding; vllm: vLLM's OpenAI server decodes the base and the "
        "adapters (the vllm package, a GPU), tunewise keeps keys, models and jobs in front.",
    ),
    engine_arg: list[str] | None = typer.Option(
        None,
        "--engine-arg",
        metavar="ARG",
        help="With --engine vllm: an argument for vLLM's server, e.g. --engine-arg=--gpu-memory-utilization=0.8; "
        "repeatable.",
    ),
    header_timeout: float = typer.Option(
        10.0, "--header-timeout", help="Seconds a request's headers may take from its first byte (then 408)."
    ),
    body_timeout: float = typer.Option(
        30.0,
        "--body-timeout",
        help="Seconds a request body may take before it must average --min-body-rate (then 408).",
    ),
    min_body_rate: float = typer.Option(
        8192.0, "--min-body-rate", help="Bytes per second a body must average once --body-timeout has passed."
    ),
    max_connections_per_client: int = typer.Option(
        64, "--max-connections-per-client", help="Open connections per client address (then 429)."
    ),
    max_connections: int = typer.Option(
        1024, "--max-connections", help="Open connections and requests in all (then 503)."
    ),
    capture: list[str] | None = typer.Option(
        None,
        "--capture",
        help="MODEL: record this model's chat completions (redacted) for `tunewise traffic export` and "
        "`tunewise drift`; repeatable. Off by default.",
    ),
    capture_raw: bool = typer.Option(
        False,
        "--capture-raw",
        help="Record captured traffic without masking e-mails, phones and card numbers.",
    ),
    capture_max_rows: int = typer.Option(
        100_000, "--capture-max-rows", min=1, help="Captured rows kept per model."
    ),
    capture_max_days: float = typer.Option(
        90.0, "--capture-max-days", min=0.01, help="Days captured rows are kept."
    ),
) -> None:
    from tunewise.serve.app import bind, check_auth, make_server
    from tunewise.serve.auth import list_keys
    from tunewise.serve.inference import ServeSettings

    if batching not in ("continuous", "static"):
        raise TunewiseError(
            f"unknown batching '{batching}'", hint="use --batching continuous or --batching static"
        )
    if engine not in ("local", "vllm"):
        raise TunewiseError(f"unknown engine '{engine}'", hint="use --engine local or --engine vllm")
    if engine == "vllm":
        from tunewise.serve.vllm import check_vllm

        check_vllm()  # before a port is bound or a model read
    check_auth(host, no_auth)
    import dataclasses

    project = dataclasses.replace(project_or_cwd(project_dir), registry_url=registry)
    project.registry().close()  # reach the registry (and migrate it) before loading a model
    settings = ServeSettings(
        base=base,
        adapters=_adapters(adapter),
        max_batch_size=max_batch_size,
        batching=batching,
        queue_size=queue_size,
        timeout_s=timeout,
        max_tokens_cap=max_tokens_cap,
        threads=threads,
        json_guard=json_guard,
        preload=engine == "local",  # with vLLM, tunewise loads no weights to decode
        train_bases=tuple(train_base or ()),
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        min_body_rate=min_body_rate,
        max_connections_per_client=max_connections_per_client,
        max_connections=max_connections,
    )
    from tunewise.lifecycle.capture import CaptureSettings

    captured = CaptureSettings(
        models=tuple(capture or ()),
        redact=not capture_raw,
        max_rows=capture_max_rows,
        max_days=capture_max_days,
    )
    sock = bind(host, port)
    server = make_server(
        project,
        settings,
        sock,
        no_auth=no_auth,
        access_log=access_log,
        start_worker=not no_jobs,
        capture=captured if captured.models else None,
    )
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{bound}/v1"
    pool = server.config.app.state.inference.pool
    names = [m.id for m in pool.list()]
    err.print(f"tunewise serve: {url}  (models: {', '.join(names)})", highlight=False)
    location = project.registry_location()
    if location:
        from tunewise.registry.postgres import redact

        err.print(f"registry: {redact(location)}", highlight=False, markup=False)
    if not no_auth and not any(k["revoked_at"] is None for k in list_keys(project)):
        err.print("warning: no API key exists yet; create one with `tunewise keys create`", highlight=False)
    key = '"not-needed"' if no_auth else "KEY"
    err.print(
        f'  from openai import OpenAI; client = OpenAI(base_url="{url}", api_key={key})\n'
        f'  client.chat.completions.create(model="{names[0]}", messages=[{{"role": "user", "content": "Hi"}}])',
        highlight=False,
        markup=False,
    )
    if captured.models:
        unknown = [m for m in captured.models if m not in names]
        if unknown:
            err.print(
                f"warning: --capture {', '.join(unknown)}: not a served model name ({', '.join(names)}); "
                "its traffic is recorded only if clients send that name",
                highlight=False,
            )
        how = "raw" if capture_raw else "redacted"
        err.print(f"capturing traffic ({how}) of: {', '.join(captured.models)}", highlight=False)
    if engine == "local":
        err.print("loading the model, then serving; Ctrl+C stops", highlight=False)
        server.run(sockets=[sock])
        return
    process = _start_vllm(server.config.app, engine_arg or [])
    try:
        err.print("vLLM is up; serving; Ctrl+C stops", highlight=False)
        server.run(sockets=[sock])
    finally:
        from tunewise.serve.vllm import stop_vllm

        stop_vllm(process)


def _start_vllm(app: Any, extra: list[str]) -> Any:
    """Start vLLM on a free loopback port with the base and the --adapter adapters; the app forwards to it."""
    import socket

    from tunewise.models.loading import resolve_base
    from tunewise.serve.vllm import Upstream, start_vllm, vllm_command

    pool = app.state.inference.pool
    full = [name for name, served in pool.explicit.items() if served.kind == "full"]
    if full:
        raise TunewiseError(
            f"--adapter {full[0]} is a model fine-tuned in full; --engine vllm serves the base and its adapters",
            hint="serve it with the local engine, or as a base of its own: --base FOLDER",
        )
    adapters = {name: served.weights for name, served in pool.explicit.items()}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = vllm_command(resolve_base(pool.base), pool.base, adapters, port, extra=extra)
    err.print("starting vLLM: " + " ".join(argv), highlight=False, markup=False)
    process = start_vllm(argv, port)
    app.state.upstream = Upstream(f"http://127.0.0.1:{port}", loaded=set(adapters))
    return process


WORKER_HELP = """Run queued fine-tuning jobs from the project's registry, one at a time, each in its own process,
without serving anything: start one on each GPU machine. Workers share a PostgreSQL registry (--registry, the
TUNEWISE_REGISTRY environment variable, or `registry:` in tunewise.yaml) and the project folder (a shared
mount at the same path). A job whose worker stops sending heartbeats for --stale-after seconds is taken over by
another worker and resumes from its last checkpoint. Ctrl+C stops the worker; its job resumes elsewhere.

Examples:

  TUNEWISE_REGISTRY=postgresql://team@db.internal/tunewise tunewise worker --project /mnt/shared/support

  tunewise worker --registry postgresql://team@db.internal/tunewise --name gpu-3 --stale-after 120"""


@app.command(help=WORKER_HELP)
def worker(
    registry: str | None = typer.Option(
        None, "--registry", help="The registry's PostgreSQL URL (default: TUNEWISE_REGISTRY, then the spec)."
    ),
    name: str | None = typer.Option(
        None, "--name", help="This machine's name in the jobs' `worker` column (default: the host name)."
    ),
    heartbeat: float = typer.Option(10.0, "--heartbeat", min=0.1, help="Seconds between heartbeats."),
    stale_after: float = typer.Option(
        60.0,
        "--stale-after",
        help="Seconds without a heartbeat after which another host's job is taken over.",
    ),
    poll: float = typer.Option(0.5, "--poll", min=0.05, help="Seconds between looks at the queue."),
    project_dir: Path | None = typer.Option(
        None, "--project", help="Project folder (default: found upward)."
    ),
) -> None:
    import dataclasses
    import signal

    from tunewise.registry.postgres import redact
    from tunewise.serve.worker import JobWorker

    if stale_after <= heartbeat:
        raise TunewiseError(
            f"--stale-after {stale_after:g} must be longer than --heartbeat {heartbeat:g}",
            hint="a few heartbeats long, e.g. --heartbeat 10 --stale-after 60",
        )
    if name is not None and (not name.strip() or ":" in name):
        raise TunewiseError(f"--name {name!r} must be a non-empty name without ':'", hint="e.g. --name gpu-3")
    project = dataclasses.replace(project_or_cwd(project_dir), registry_url=registry)
    project.registry().close()  # reach the registry (and migrate it) before waiting for work
    jobs = JobWorker(project, poll, host=name, heartbeat_s=heartbeat, stale_after_s=stale_after)
    location = project.registry_location()
    where = redact(location) if location else str(project.state_dir / "registry.sqlite3")
    err.print(f"tunewise worker {jobs.worker_id}: taking jobs from {where}; Ctrl+C stops", highlight=False)
    # Both signals end the loop between polls, so the running job is stopped and released, not abandoned.
    signal.signal(signal.SIGTERM, lambda *_: jobs.stop())
    signal.signal(signal.SIGINT, lambda *_: jobs.stop())
    jobs.run_forever()


@keys_app.command(
    "create",
    help="Create an API key; it is printed once and only its hash is stored. A key sees only the files, jobs and "
    "models made with it; an --admin key sees all.\n\nExample: tunewise keys create --name laptop",
)
def keys_create(
    name: str = typer.Option("default", "--name", help="A label for the key."),
    admin: bool = typer.Option(
        False, "--admin", help="The key sees every key's files, jobs and models (an operator's key)."
    ),
    project_dir: Path | None = typer.Option(
        None, "--project", help="Project folder (default: found upward)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the key and its record as JSON."),
) -> None:
    from tunewise.serve.auth import create_key

    row, key = create_key(project_or_cwd(project_dir), name, admin=admin)
    if as_json:
        print_json({**row, "key": key})
        return
    out.print(key, highlight=False)
    err.print(
        f"{'admin ' if admin else ''}key {row['id']} ({row['name']}) created; it is shown only now: store it "
        "(e.g. OPENAI_API_KEY)",
        highlight=False,
    )


@keys_app.command(
    "list", help="List API keys (prefix, name, dates; never the keys).\n\nExample: tunewise keys list"
)
def keys_list(
    project_dir: Path | None = typer.Option(
        None, "--project", help="Project folder (default: found upward)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    from rich.table import Table

    from tunewise.serve.auth import list_keys

    rows = list_keys(project_or_cwd(project_dir))
    if as_json:
        print_json(rows)
        return
    if not rows:
        err.print("no API keys; create one with `tunewise keys create`", highlight=False)
        return
    table = Table("id", "name", "prefix", "admin", "created", "last used", "revoked")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["name"],
            r["prefix"] + "...",
            "yes" if r.get("admin") else "-",
            r["created_at"],
            r["last_used_at"] or "-",
            r["revoked_at"] or "-",
        )
    out.print(table)


@keys_app.command(
    "revoke",
    help="Revoke an API key by id (or prefix); it stops working at once.\n\nExample: tunewise keys revoke 2",
)
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key's id from `tunewise keys list`, or its prefix."),
    project_dir: Path | None = typer.Option(
        None, "--project", help="Project folder (default: found upward)."
    ),
) -> None:
    from tunewise.serve.auth import revoke_key

    row = revoke_key(project_or_cwd(project_dir), key_id)
    out.print(
        f"key {row['id']} ({row['name']}, {row['prefix']}...) revoked at {row['revoked_at']}", highlight=False
    )
