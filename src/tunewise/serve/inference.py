"""The inference side of `tunewise serve`: settings, the model pool, and chat completions.

- `ModelPool` loads one base model once and serves, over it, any number of LoRA adapters (PEFT multi-adapter:
  each adapter's low-rank matrices sit beside the shared base weights, and a batch switches the active adapter,
  LoRAX-style; the base runs with adapters disabled). A full fine-tune (a run with `model/`) is a separate model.
  Models are named: the base by its spec name (`embedded:smollm2-135m-instruct`), a fine-tuning job's model
  `ft:<base>:<suffix>:<id>` (`serve.jobs.fine_tuned_models`), an explicit run or PEFT adapter folder (trained
  anywhere) by the name given to `tunewise serve --adapter NAME=RUN_OR_FOLDER`, a promoted run by its alias
  (`tunewise promote RUN --as NAME`, read from the registry on each request, so a promotion or a rollback
  needs no restart).
- `InferenceService` turns a chat request into a `batcher.Job` (validated, tokenized: every 400 comes before
  queueing), runs batches for the batcher (in its worker thread, the only thread that touches the models),
  and builds the OpenAI response objects (`chat.completion`, `chat.completion.chunk`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunewise.errors import TunewiseError
from tunewise.serve.auth import Caller
from tunewise.serve.batcher import Batcher, Job, QueueFull, Stopped
from tunewise.serve.errors import APIError

log = logging.getLogger(__name__)


@dataclass
class ServeSettings:
    """How the server runs: the model, the batcher and the limits (flags of `tunewise serve`)."""

    base: str | None = None  # None: the project's model.base, else the embedded model
    # model name -> training run (id or folder) or PEFT adapter folder
    adapters: dict[str, str] = field(default_factory=dict)
    max_batch_size: int = 16  # requests decoded together
    # continuous: a request joins the running batch of its model at the next decode step and leaves it as soon
    # as it ends; static: a batch runs until its last request ends (serve/batcher.py).
    batching: Literal["continuous", "static"] = "continuous"
    batch_wait_ms: float = 5.0  # static batching: how long the worker waits for companions to a lone request
    queue_size: int = 64  # waiting requests beyond which the server answers 429
    timeout_s: float = 120.0  # per request, queue wait included
    max_tokens_cap: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256  # when a request gives none
    max_body_bytes: int = 1 << 20  # a chat request body
    max_upload_bytes: int = 513 << 20  # /v1/files: OpenAI's 512 MB per file, plus the multipart envelope
    preload: bool = False  # load the base model at startup (the CLI does) instead of on the first request
    # torch threads for decoding (None: torch's choice, one per core). On a machine shared with other busy
    # processes, fewer threads than cores avoid OpenMP threads spinning while a sibling waits for a core.
    threads: int | None = None
    # The JSON loop guard (evaluate/loopguard.py) on free, non-streamed requests: the decoding the evaluation
    # measured (evaluation.json_guard is on by default), so the served model answers as it was judged. Streamed
    # tokens cannot be taken back, and a response_format grammar already keeps the JSON well-formed.
    json_guard: bool = True
    # Bases a fine-tuning job may name besides the served one (`--train-base`): the operator's allow-list.
    train_bases: tuple[str, ...] = ()
    # Connection limits (serve/limits.py): a request's headers within header_timeout_s of its first byte; its
    # body, after body_timeout_s, at min_body_rate bytes/s on average; open connections per client address and
    # in all (uvicorn's limit_concurrency, answered 503).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_rate: float = 8192.0
    max_connections_per_client: int = 64
    max_connections: int = 1024

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "max_batch_size",
            "queue_size",
            "max_tokens_cap",
            "default_max_tokens",
            "max_body_bytes",
            "max_connections_per_client",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.timeout_s <= 0:
            problems.append(f"timeout_s must be positive (got {self.timeout_s})")
        for name in ("header_timeout_s", "body_timeout_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive (got {getattr(self, name)})")
        if self.min_body_rate < 0:
            problems.append(f"min_body_rate must be >= 0 (got {self.min_body_rate})")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be at least 1 (got {self.threads})")
        if self.batching not in ("continuous", "static"):
            problems.append(f"batching must be 'continuous' or 'static' (got {self.batching!r})")
        if self.batch_wait_ms < 0:
            problems.append(f"batch_wait_ms must be >= 0 (got {self.batch_wait_ms})")
        if self.default_max_tokens > self.max_tokens_cap:
            self.default_max_tokens = self.max_tokens_cap
        if problems:
            raise TunewiseError("invalid serve settings: " + "; ".join(problems))


def default_base(project: Any) -> str:
    """The project's model.base (tunewise.yaml), else the embedded model."""
    from tunewise.spec import EMBEDDED_MODEL, load_spec

    if project is not None and Path(project.spec_path).is_file():
        return load_spec(project.spec_path).model.base
    return EMBEDDED_MODEL


# --- requests -----------------------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The body of `POST /v1/chat/completions`. Fields tunewise cannot honour (n > 1, logprobs, tools,
    penalties, logit_bias) are a 400 naming the field when set to anything but their default; other unknown
    fields (`user`, `metadata`, ...) are accepted and ignored, as OpenAI's own server does with most of them."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


def _unsupported(req: ChatCompletionRequest) -> None:
    checks = [
        ("n", req.n != 1, "n > 1 is not supported: send n requests (with different seeds)"),
        ("logprobs", bool(req.logprobs) or req.top_logprobs is not None, "logprobs are not supported"),
        ("tools", bool(req.tools) or bool(req.functions), "tool calling is not supported"),
        ("frequency_penalty", bool(req.frequency_penalty), "frequency_penalty is not supported"),
        ("presence_penalty", bool(req.presence_penalty), "presence_penalty is not supported"),
        ("logit_bias", bool(req.logit_bias), "logit_bias is not supported"),
    ]
    for param, bad, message in checks:
        if bad:
            raise APIError(400, message, param=param, code="unsupported_parameter")


def _messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The chat as the chat template wants it: text content only; `developer` is the newer name of `system`."""
    out = []
    for i, message in enumerate(req.messages):
        if message.role in ("tool", "function"):
            raise APIError(
                400, f"messages[{i}]: role '{message.role}' is not supported", param=f"messages[{i}].role"
            )
        content = message.content
        if isinstance(content, list):
            texts = []
            for k, part in enumerate(content):
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(
                        400,
                        f"messages[{i}].content[{k}]: only text parts are supported (got type {part.get('type')!r})",
                        param=f"messages[{i}].content",
                    )
                texts.append(part["text"])
            content = "".join(texts)
        role = "system" if message.role == "developer" else message.role
        out.append({"role": role, "content": _text(content or "", f"messages[{i}].content")})
    return out


def _text(value: str, param: str) -> str:
    """`value`, if it is text the tokenizer can take: JSON's escapes can spell lone UTF-16 surrogates
    (`"\\ud800"`), which are no characters and have no UTF-8 encoding."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(
            400,
            f"{param} holds a lone surrogate code point (U+{ord(value[exc.start]):04X} at character {exc.start}), "
            "which is not text: send UTF-8",
            param=param,
        ) from None
    return value


def _sampling(req: ChatCompletionRequest) -> None:
    """What the sampler cannot take, as a 400 naming the field (pydantic checked the plain ranges)."""
    from tunewise.evaluate.engine import MIN_TEMPERATURE, SEED_RANGE

    if req.temperature is not None and 0 < req.temperature < MIN_TEMPERATURE:
        raise APIError(
            400,
            f"temperature must be 0 (greedy decoding) or at least {MIN_TEMPERATURE:g} (got {req.temperature:g})",
            param="temperature",
        )
    if req.seed is not None and not SEED_RANGE[0] <= req.seed <= SEED_RANGE[1]:
        raise APIError(
            400,
            f"seed must be a 64-bit integer, from {SEED_RANGE[0]} to {SEED_RANGE[1]} (got {req.seed})",
            param="seed",
        )


def _stops(req: ChatCompletionRequest) -> tuple[str, ...]:
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stops) > 4:
        raise APIError(400, f"at most 4 stop sequences (got {len(stops)})", param="stop")
    if any(not s for s in stops):
        raise APIError(400, "a stop sequence must not be empty", param="stop")
    return tuple(_text(s, "stop") for s in stops)


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt's token ids, exactly as `LocalEngine.encode` renders a chat (template + generation prompt)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# --- models ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A model name the server answers to."""

    id: str
    kind: Literal["base", "adapter", "full"]
    run_dir: Path | None = None
    created: int = 0
    owned_by: str = "tunewise"
    folder: Path | None = None  # the adapter or model folder, when not the run's adapter/ or model/
    # A fine-tuning job's model belongs to the job's key (None: the operator); the base and the --adapter models
    # are the operator's offer to every key.
    private: bool = False
    api_key_id: int | None = None

    def visible_to(self, who: Caller | None) -> bool:
        return who is None or not self.private or who.sees(self.api_key_id)

    @property
    def weights(self) -> Path:
        """The folder to load: the adapter (kind adapter) or the model (kind full)."""
        if self.folder is not None:
            return self.folder
        assert self.run_dir is not None
        return self.run_dir / ("adapter" if self.kind == "adapter" else "model")

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


class ModelPool:
    """The base model, loaded once, and the fine-tuned models over it (see the module docstring).

    `resolve` and `list` run on the event loop and touch no weights; `engine_for` and `load` run in the batcher's
    worker thread, the only thread that loads or runs models, so switching adapters needs no lock.
    """

    def __init__(self, project: Any, settings: ServeSettings):
        self.project = project
        self.settings = settings
        self.base = settings.base or default_base(project)
        self.started = int(time.time())
        self._tokenizer: Any = None
        self._tokenizer_lock = threading.Lock()
        self.model: Any = None  # the base model; LoRA layers are injected into it in place
        self.engine: Any = None  # LocalEngine over `model`
        self._peft: Any = None  # the PeftModel wrapping `model`, once an adapter is loaded
        self._adapters: dict[Path, str] = {}  # adapter folder -> PEFT adapter name
        self._full: dict[Path, Any] = {}  # model folder -> LocalEngine of a fully fine-tuned model
        self._resolved: dict[str, Served] = {}
        self._alias_cache: dict[
            tuple[str, str, str], Served | None
        ] = {}  # (name, run, since) -> what it serves
        self.explicit = {name: self._check_run(name, run) for name, run in settings.adapters.items()}

    def _check_run(self, name: str, run: str) -> Served:
        """An explicit `--adapter NAME=RUN_OR_FOLDER`, checked at startup: a training run that succeeded, or a
        PEFT adapter folder trained anywhere; either on this server's base."""
        from tunewise.evaluate.arms import find_fine_tuned

        if not name or name == self.base or name.startswith("ft:"):
            raise TunewiseError(
                f"--adapter name '{name}' is empty, the base model's name or starts with 'ft:'",
                hint="pick another name, e.g. --adapter support=RUN",
            )
        try:
            tuned = find_fine_tuned(self.project, run, self.base)
        except TunewiseError as exc:
            raise TunewiseError(f"--adapter {name}={run}: {exc.message}", hint=exc.hint) from None
        if tuned.run_dir is None:  # an adapter folder: its base was checked against this server's
            return Served(name, "adapter", None, int(tuned.folder.stat().st_mtime), folder=tuned.folder)
        if tuned.base != self.base:
            raise TunewiseError(
                f"--adapter {name}={run}: the run was trained on '{tuned.base}', the server serves '{self.base}'",
                hint=f"start the server with --base {tuned.base}",
            )
        return Served(name, tuned.kind, tuned.run_dir, int(tuned.run_dir.stat().st_mtime))  # type: ignore[arg-type]

    # --- names (event loop) -------------------------------------------------------------------------------

    def _fine_tuned(self) -> list[Served]:
        from tunewise.serve.jobs import fine_tuned_models

        out = []
        for m in fine_tuned_models(self.project):
            if m.get("base", self.base) != self.base:
                continue  # trained on another base: this server cannot serve it
            run_dir = Path(m["run_dir"])
            kind = "full" if m.get("method") == "full" or not (run_dir / "adapter").is_dir() else "adapter"
            out.append(
                Served(
                    m["id"], kind, run_dir, int(m["created"]), m.get("owned_by", "tunewise"),
                    private=True, api_key_id=m.get("api_key_id"),
                )
            )  # fmt: skip
        return out

    def _aliases(self, name: str | None = None) -> list[Served]:
        """The promoted names (`tunewise promote RUN --as NAME`, registry/aliases.py), or the one named `name`.
        Read from the registry on every call: a promotion or a rollback is answered from the next request on,
        with no restart. A name already taken (the base, an --adapter) keeps its meaning."""
        if self.project is None:
            return []
        from tunewise.registry.aliases import current, list_aliases

        registry = self.project.registry()
        try:
            rows = list_aliases(registry) if name is None else [a for a in [current(registry, name)] if a]
        finally:
            registry.close()
        out = []
        for row in rows:
            if row["name"] == self.base or row["name"] in self.explicit:
                continue
            served = self._alias_served(row["name"], row["run_id"], row["since"])
            if served is not None:
                out.append(served)
        return out

    def _alias_served(self, name: str, run_id: str, since: str) -> Served | None:
        key = (name, run_id, since)
        if key not in self._alias_cache:
            from datetime import datetime

            from tunewise.evaluate.arms import find_fine_tuned

            try:
                tuned = find_fine_tuned(self.project, run_id, self.base)
            except TunewiseError as exc:
                log.warning("alias %s: run %s cannot be served: %s", name, run_id, exc.message)
                tuned = None
            if tuned is not None and tuned.base not in (None, self.base):
                log.warning("alias %s: run %s was trained on %s, this server serves %s", name, run_id,
                            tuned.base, self.base)  # fmt: skip
                tuned = None
            self._alias_cache[key] = (
                None
                if tuned is None
                else Served(
                    name,
                    tuned.kind,
                    tuned.run_dir,
                    int(datetime.fromisoformat(since).timestamp()),
                    folder=tuned.folder,
                )  # fmt: skip
            )
        return self._alias_cache[key]

    def list(self, who: Caller | None = None) -> list[Served]:
        """The models `who` may use (None: all of them)."""
        fine_tuned = [m for m in self._fine_tuned() if m.visible_to(who)]
        return [
            Served(self.base, "base", None, self.started),
            *self.explicit.values(),
            *self._aliases(),
            *fine_tuned,
        ]

    def resolve(self, name: str, who: Caller | None = None) -> Served:
        """The model `name`; 404 when there is none, or `who` may not use it (the same answer)."""
        served = self._find(name)
        if served is None or not served.visible_to(who):
            raise APIError(
                404,
                f"the model '{name}' does not exist on this server (GET /v1/models lists the models)",
                param="model",
                code="model_not_found",
            )
        return served

    def _find(self, name: str) -> Served | None:
        if name == self.base:
            return Served(self.base, "base", None, self.started)
        if name in self.explicit:
            return self.explicit[name]
        if name in self._resolved:
            return self._resolved[name]
        if not name.startswith("ft:"):
            promoted = self._aliases(name)
            return promoted[0] if promoted else None
        if name.startswith("ft:"):
            for served in self._fine_tuned():
                if served.id == name:
                    self._resolved[name] = served
                    return served
        return None

    # --- weights (worker thread) --------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from tunewise.models.loading import load_tokenizer

                self._tokenizer = load_tokenizer(self.base)
            return self._tokenizer

    @property
    def context_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        return getattr(config, "max_position_embeddings", None)

    def load(self) -> None:
        if self.engine is not None:
            return
        from tunewise.evaluate.engine import LocalEngine
        from tunewise.models.loading import load_model
        from tunewise.runtime import tune_process

        tune_process()  # before any weight is loaded: oneDNN reads its cache sizes once
        if self.settings.threads is not None:
            import torch

            torch.set_num_threads(self.settings.threads)
        started = time.perf_counter()
        self.model = load_model(self.base, tokenizer=self.tokenizer)
        self.model.eval()
        self.engine = LocalEngine(self.model, self.tokenizer, max_batch_size=self.settings.max_batch_size)
        log.info("loaded %s in %.1f s", self.base, time.perf_counter() - started)

    def engine_for(self, served: Served) -> tuple[Any, AbstractContextManager]:
        """The engine that runs `served`, and the context to run it in (which adapter is active)."""
        self.load()
        if served.kind == "base":
            return self.engine, self._peft.disable_adapter() if self._peft is not None else nullcontext()
        if served.kind == "full":
            if served.weights not in self._full:
                from tunewise.evaluate.engine import LocalEngine
                from tunewise.models.loading import load_model

                model = load_model(str(served.weights))
                model.eval()
                self._full[served.weights] = LocalEngine(
                    model, self.tokenizer, max_batch_size=self.settings.max_batch_size
                )
            return self._full[served.weights], nullcontext()
        name = self._adapters.get(served.weights)
        if name is None:
            from peft import PeftModel

            name = f"adapter{len(self._adapters)}"  # PEFT adapter names may not hold '.' or ':'
            path = str(served.weights)
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            else:
                self._peft.load_adapter(path, adapter_name=name)
            self.model.eval()
            self._adapters[served.weights] = name
            log.info("loaded adapter %s from %s", served.id, path)
        self._peft.set_adapter(name)
        return self.engine, nullcontext()


# --- the service ----------------------------------------------------------------------------------------------


class InferenceService:
    def __init__(self, project: Any, settings: ServeSettings):
        self.settings = settings
        self.pool = ModelPool(project, settings)
        self.batcher = Batcher(
            self._execute,
            settings.max_batch_size,
            settings.queue_size,
            settings.batch_wait_ms / 1000.0,
            open_batch=self._open_batch if settings.batching == "continuous" else None,
        )

    def start(self) -> None:
        if self.settings.preload:
            self.pool.load()
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    def models(self, who: Caller | None = None) -> list[dict[str, Any]]:
        return [m.to_dict() for m in self.pool.list(who)]

    def prepare(self, req: ChatCompletionRequest, who: Caller | None = None) -> Job:
        """Validate and tokenize a request (every 400 and 404 happens here, before it takes a queue slot)."""
        from tunewise.evaluate.engine import SamplingParams

        _unsupported(req)
        _sampling(req)
        served = self.pool.resolve(req.model, who)
        messages = _messages(req)
        stops = _stops(req)
        constraint = _constraint(req.response_format)
        asked = req.max_completion_tokens or req.max_tokens
        cap = self.settings.max_tokens_cap
        if asked is not None and asked > cap:
            param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise APIError(400, f"{param} is {asked}, over this server's cap of {cap}", param=param)
        prompt_ids = encode_chat(self.pool.tokenizer, messages)
        max_tokens = asked or self.settings.default_max_tokens
        context = self.pool.context_length
        if context is not None and len(prompt_ids) + max_tokens > context:
            if asked is not None or len(prompt_ids) >= context:
                raise APIError(
                    400,
                    f"the prompt has {len(prompt_ids)} tokens and max_tokens is {max_tokens}: over the model's "
                    f"context of {context} tokens",
                    param="messages",
                    code="context_length_exceeded",
                )
            max_tokens = context - len(prompt_ids)
        temperature = 1.0 if req.temperature is None else req.temperature  # OpenAI's default
        seed = req.seed if req.seed is not None else int.from_bytes(uuid.uuid4().bytes[:7], "big")
        params = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=seed,
            stop=stops,
        )
        return Job(
            model=served.id,
            prompt_ids=prompt_ids,
            params=params,
            loop=asyncio.get_running_loop(),
            stream=req.stream,
            constraint=constraint,
            # The loop guard the evaluation decoded with, on free rows whose tokens are not streamed (a streamed
            # token cannot be taken back; a grammar already keeps JSON well-formed).
            json_guard=self.settings.json_guard and not req.stream and constraint is None,
        )

    def submit(self, job: Job) -> None:
        try:
            self.batcher.submit(job)
        except QueueFull as full:
            raise APIError(
                429,
                f"the server is busy: {full.waiting} requests are waiting (queue size {self.batcher.queue_size}); "
                f"retry after {full.retry_after} s",
                "rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(full.retry_after)},
            ) from None
        except Stopped:
            raise APIError(503, "the server is shutting down", "server_error") from None

    def _execute(self, model: str, jobs: list[Job], on_token: Callable[[int, int], bool]) -> list[Any]:
        """Run one batch (worker thread): the jobs of one model, each with its own settings."""
        engine, active = self.pool.engine_for(self.pool.resolve(model))
        constraints = [j.constraint for j in jobs]
        with active:
            return engine.generate(
                [j.prompt_ids for j in jobs],
                constraint=constraints if any(c is not None for c in constraints) else None,
                params=[j.params for j in jobs],
                on_token=on_token,
                json_guard=[j.json_guard for j in jobs],
            )

    @contextmanager
    def _open_batch(self, model: str, on_token: Callable[[int, int], bool]) -> Iterator[Any]:
        """A continuous batch of `model` (worker thread), its adapter active while the batch lives; None for a
        model whose cache layers continuous batching cannot rebuild (sliding-window or linear attention), which
        the batcher decodes in static batches."""
        from tunewise.evaluate.continuous import OpenBatch

        engine, active = self.pool.engine_for(self.pool.resolve(model))
        if not engine._plain_layers():
            yield None
            return
        with active:
            yield OpenBatch(engine, self.settings.max_batch_size, on_token)

    # --- responses -------------------------------------------------------------------------------------------

    def _remaining(self, job: Job) -> float:
        return job.submitted + self.settings.timeout_s - time.monotonic()

    async def _next_event(self, job: Job) -> tuple[str, Any]:
        """The job's next event; a timeout marks it cancelled (the engine drops its row) and raises 504."""
        try:
            return await asyncio.wait_for(job.events.get(), max(0.0, self._remaining(job)))
        except asyncio.TimeoutError:
            job.cancelled = True
            raise APIError(
                504,
                f"the request took longer than the server's timeout of {self.settings.timeout_s:g} s",
                "timeout_error",
                code="timeout",
            ) from None

    async def complete(self, job: Job, req: ChatCompletionRequest) -> dict[str, Any]:
        try:
            while True:
                kind, value = await self._next_event(job)
                if kind == "done":
                    return _completion(job, req, value)
                if kind == "error":
                    raise _batch_error(value)
        finally:
            job.cancelled = True  # finished, failed or abandoned: the worker need not serve it any more

    async def stream(self, job: Job, req: ChatCompletionRequest) -> AsyncIterator[str]:
        """Server-sent events: `chat.completion.chunk` objects, then `data: [DONE]`. A client that goes away
        cancels this generator, which cancels the job; the rest of its batch goes on."""
        import json

        cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            body = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": req.model,
                "system_fingerprint": None,
                "choices": choices,
            }
            if usage is not None:
                body["usage"] = usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def delta(content: dict[str, str], finish: str | None = None) -> str:
            return event([{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}])

        text = _TextStream(self.pool.tokenizer, job.params.stop)
        try:
            yield delta({"role": "assistant", "content": ""})
            while True:
                try:
                    kind, value = await self._next_event(job)
                    if kind == "error":
                        raise _batch_error(value)
                except APIError as exc:
                    # The status line went out with the first chunk: the error travels as an event.
                    yield f"data: {json.dumps(exc.body())}\n\n"
                    break
                if kind == "token":
                    piece = text.push(value)
                    if piece:
                        yield delta({"content": piece})
                    continue
                rest = text.finish(value.text)
                if rest:
                    yield delta({"content": rest})
                yield delta({}, _finish_reason(value))
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield event([], _usage(value))
                break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True


def _constraint(response_format: dict[str, Any] | None) -> Any:
    """The decoding constraint of `response_format` (json_object, json_schema, tunewise's regex), or None."""
    if response_format is None:
        return None
    from tunewise.evaluate.constrain import constraint_from_response_format, grammar_problem

    try:
        constraint = constraint_from_response_format(response_format)
    except TunewiseError as exc:
        raise APIError(400, str(exc), param="response_format") from None
    if constraint is not None:
        # Checked here, not when the batch compiles it: decoding freely instead would answer 200 with text the
        # client asked not to get.
        problem = grammar_problem(constraint)
        if problem is not None:
            what = f"regex {constraint.pattern!r}" if constraint.kind == "regex" else "JSON Schema"
            raise APIError(
                400,
                f"response_format: constrained decoding cannot enforce this {what}: {problem}",
                param="response_format",
            )
    return constraint


def _finish_reason(generation: Any) -> str:
    return "length" if generation.finish_reason == "length" else "stop"


def _usage(generation: Any) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }


def _completion(job: Job, req: ChatCompletionRequest, generation: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": generation.text, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(generation),
            }
        ],
        "usage": _usage(generation),
    }


def _batch_error(exc: BaseException) -> APIError:
    if isinstance(exc, Stopped):
        return APIError(503, "the server is shutting down; retry on the next one", "server_error")
    return APIError(
        500, f"generation failed ({type(exc).__name__}: {exc}); see the server log", "server_error"
    )


@dataclass
class _TextStream:
    """Streamed text that never shows what the final answer will not contain: an incomplete UTF-8 character
    (decoded as U+FFFD until its last byte arrives) or the start of a stop string (held back until it is
    clear it is not one). The deltas then concatenate to exactly the non-streamed text."""

    tokenizer: Any
    stops: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    sent: str = ""

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0:
                text = text[:at]
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        safe = text[: len(text) - hold]
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""
        piece, self.sent = safe[len(self.sent) :], safe
        return piece

    def finish(self, final: str) -> str:
        """What is left to send of the final text."""
        if not final.startswith(self.sent):  # not expected: decoding changed text already sent
            log.warning("streamed text diverged from the final text; sending the final text's remainder")
        return final[len(self.sent) :]
