"""The FastAPI application of `tunewise serve`.

Routes (all under /v1, all behind `require_key` unless the server runs with --no-auth on loopback):

- `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` (this module, `inference`)
- `/v1/files` (`serve.files`), `/v1/fine_tuning/jobs` (`serve.jobs`, whose worker runs in the lifespan)
- `GET /docs` and `GET /openapi.json`, behind a key too (the API's shape is no business of strangers)

Each key sees its own files, jobs and fine-tuned models (`serve.auth.Caller`); `make_server` adds the connection
limits of `serve.limits`.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from tunewise.project import Project
from tunewise.serve.auth import KeyStore, caller, require_key
from tunewise.serve.errors import BodySizeLimit, install_handlers
from tunewise.serve.files import router as files_router
from tunewise.serve.inference import ChatCompletionRequest, InferenceService, ServeSettings
from tunewise.serve.jobs import router as jobs_router
from tunewise.serve.jobs import trainable_bases
from tunewise.serve.worker import JobWorker

log = logging.getLogger(__name__)


def create_app(
    project: Project,
    *,
    no_auth: bool = False,
    settings: ServeSettings | None = None,
    start_worker: bool = True,
    capture: Any = None,
) -> FastAPI:
    """The API over `project`. `start_worker`: run the fine-tuning job worker in the lifespan. `capture` (a
    `lifecycle.capture.CaptureSettings`) records the chat completions of the models it names."""
    settings = settings or ServeSettings()
    _check_train_bases(settings.train_bases)
    registry = project.registry()  # creates the registry and applies pending migrations (api_keys among them)
    registry.close()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.inference.start()
        worker = None
        if start_worker:
            worker = JobWorker(project)
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            app.state.inference.stop()
            app.state.keys.close()
            if getattr(app.state, "upstream", None) is not None:
                await app.state.upstream.close()

    # The built-in /docs, /redoc and /openapi.json are public; the routes below serve them behind a key.
    app = FastAPI(
        title="tunewise",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.project = project
    app.state.settings = settings
    app.state.no_auth = no_auth
    app.state.capture = capture
    app.state.keys = KeyStore(Path(project.state_dir) / "registry.sqlite3", project.registry_location())
    app.state.inference = InferenceService(project, settings)
    app.state.trainable = trainable_bases(app.state.inference.pool.base, settings.train_bases)
    install_handlers(app)
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, overrides={"/v1/files": settings.max_upload_bytes}
    )
    for router in (inference_router, files_router, jobs_router, docs_router):
        app.include_router(router)
    return app


def _check_train_bases(bases: tuple[str, ...]) -> None:
    """Each `--train-base` names a base training can load offline (checked at startup, by the operator)."""
    from tunewise.errors import TunewiseError
    from tunewise.models.embedded import NAME
    from tunewise.models.loading import EMBEDDED_PREFIX, TINY_MODEL, resolve_base

    for base in bases:
        if base in (TINY_MODEL, f"{EMBEDDED_PREFIX}{NAME}"):
            continue  # known names: resolving the embedded one would convert its weights now, for nothing
        try:
            resolve_base(base)
        except TunewiseError as exc:
            raise TunewiseError(f"--train-base {base}: {exc.message}", hint=exc.hint) from None


inference_router = APIRouter(dependencies=[Depends(require_key)])
docs_router = APIRouter(dependencies=[Depends(require_key)], include_in_schema=False)


@docs_router.get("/openapi.json")
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@docs_router.get("/docs")
async def docs() -> HTMLResponse:
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(openapi_url="/openapi.json", title="tunewise API")


@inference_router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": request.app.state.inference.models(caller(request))}


@inference_router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    service: InferenceService = request.app.state.inference
    who = caller(request)
    served = service.pool.resolve(model_id, who)  # 404 model_not_found
    return next((m for m in service.models(who) if m["id"] == served.id), served.to_dict())


@inference_router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
    """OpenAI's chat completions: validated and tokenized here, decoded by the batcher with other requests."""
    service: InferenceService = request.app.state.inference
    upstream = getattr(request.app.state, "upstream", None)
    if upstream is not None:  # --engine vllm: checked here, decoded by vLLM (serve/vllm.py)
        from tunewise.serve.vllm import forward_chat

        return await forward_chat(upstream, service.pool, body, caller(request))
    job = service.prepare(body, caller(request))
    service.submit(job)
    capture = request.app.state.capture
    if capture is not None and capture.captures(body.model):
        return await _captured(request.app.state.project, capture, service, job, body)
    if body.stream:
        return StreamingResponse(
            service.stream(job, body),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await service.complete(job, body)


async def _captured(project: Project, capture: Any, service: InferenceService, job: Any, body: Any) -> Any:
    """Answer as usual, then record the exchange (lifecycle/capture.py) off the event loop; a failed write is
    logged, never the client's problem. A stream is recorded once its last chunk went out."""
    import asyncio
    import json
    import time

    from tunewise.lifecycle.capture import Exchange, record

    started = time.perf_counter()
    messages = [m.model_dump() if hasattr(m, "model_dump") else dict(m) for m in body.messages]

    async def keep(text: str, usage: dict[str, Any] | None, finish: str | None) -> None:
        exchange = Exchange(
            model=body.model,
            messages=messages,
            response=text,
            latency_ms=(time.perf_counter() - started) * 1000,
            prompt_tokens=(usage or {}).get("prompt_tokens"),
            completion_tokens=(usage or {}).get("completion_tokens"),
            finish_reason=finish,
        )
        try:
            await asyncio.to_thread(record, project, exchange, capture)
        except Exception:
            log.warning("could not record a captured exchange of %s", body.model, exc_info=True)

    if not body.stream:
        answer = await service.complete(job, body)
        choice = answer["choices"][0]
        await keep(choice["message"].get("content") or "", answer.get("usage"), choice.get("finish_reason"))
        return answer

    async def stream() -> Any:
        parts: list[str] = []
        finish = usage = None
        async for event in service.stream(job, body):
            yield event
            payload = event.removeprefix("data: ").strip()
            if payload.startswith("{"):
                chunk = json.loads(payload)
                usage = chunk.get("usage") or usage
                for c in chunk.get("choices") or []:
                    parts.append((c.get("delta") or {}).get("content") or "")
                    finish = c.get("finish_reason") or finish
        # Without stream_options.include_usage the client got no usage chunk: count from the job itself.
        usage = usage or {"prompt_tokens": len(job.prompt_ids), "completion_tokens": len(job.sent)}
        await keep("".join(parts), usage, finish)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _version() -> str:
    from tunewise import __version__

    return __version__


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> Any:
    """A listening socket on host:port (port 0: a free one), so the real port is known before serving."""
    import errno
    import socket

    from tunewise.errors import TunewiseError

    if not 0 <= port <= 65535:
        raise TunewiseError(
            f"port {port} is out of range", hint="pick a --port from 0 (any free port) to 65535"
        )
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            # A name that does not resolve, or an address this machine does not have: the host is wrong.
            hint = (
                "check --host: an address of this machine, such as 127.0.0.1 (this machine only) or 0.0.0.0"
            )
        elif exc.errno == errno.EACCES:
            hint = "pick another --port (ports below 1024 need root)"
        else:
            hint = "pick another --port"
        raise TunewiseError(f"cannot listen on {host}:{port}: {exc.strerror}", hint=hint) from None
    sock.listen(2048)
    return sock


def check_auth(host: str, no_auth: bool) -> None:
    """--no-auth only where nobody else can connect."""
    from tunewise.errors import TunewiseError

    if no_auth and not is_loopback(host):
        raise TunewiseError(
            f"--no-auth is allowed only on a loopback host (127.0.0.1, ::1, localhost), not {host}: "
            "create a key with `tunewise keys create` and drop --no-auth"
        )


def make_server(
    project: Project,
    settings: ServeSettings,
    sock: Any,
    *,
    no_auth: bool = False,
    access_log: bool = False,
    start_worker: bool = True,
    capture: Any = None,
) -> Any:
    """A uvicorn server for the app on an already bound socket (`server.run(sockets=[sock])`)."""
    import uvicorn

    from tunewise.serve.limits import ConnectionLimits, guarded_protocol

    app = create_app(project, no_auth=no_auth, settings=settings, start_worker=start_worker, capture=capture)
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        min_body_rate=settings.min_body_rate,
        max_connections_per_client=settings.max_connections_per_client,
    )
    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits),
        limit_concurrency=settings.max_connections,
        log_level="info" if access_log else "warning",
        access_log=access_log,
        timeout_graceful_shutdown=5,
        # Keep-alive above the clients' pause between requests, so a load test does not reconnect each time.
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)
