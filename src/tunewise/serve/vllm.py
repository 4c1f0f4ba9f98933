"""`tunewise serve --engine vllm`: vLLM's OpenAI server decodes, tunewise stays in front of it.

vLLM (an existing engine built for traffic: continuous batching, paged attention, multi-LoRA) is started on a
loopback port with the base model and the served adapters as LoRA modules. tunewise keeps what it owns: API keys,
which key sees which fine-tuned model, the files and fine-tuning jobs API, and its model names. A chat completion
is checked and resolved by tunewise (401, 404 and 400 answered here, never by vLLM) and then forwarded,
streamed or not, to vLLM's /v1/chat/completions; an adapter that a fine-tuning job made after vLLM started is
loaded into it on first use (vLLM's /v1/load_lora_adapter, allowed by VLLM_ALLOW_RUNTIME_LORA_UPDATING).
Models fine-tuned in full (not adapters) are not served by this engine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError

log = logging.getLogger(__name__)

# vLLM accepts these values of --max-lora-rank; the adapters' largest rank is rounded up to one of them.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def vllm_missing() -> str | None:
    """Why `--engine vllm` cannot run here, or None when the vllm package is installed."""
    if importlib.util.find_spec("vllm") is None:
        return "--engine vllm needs the vllm package, which is not installed"
    return None


def check_vllm() -> None:
    why = vllm_missing()
    if why is not None:
        raise TunewiseError(
            why,
            hint="pip install vllm (Linux with an NVIDIA GPU), or leave out --engine to serve with tunewise's "
            "own engine",
        )


def adapter_rank(folder: Path) -> int:
    """The LoRA rank `r` of the PEFT adapter in `folder`."""
    try:
        return int(json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["r"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TunewiseError(f"cannot read the LoRA rank of {folder}: {exc}") from None


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds every rank.

    >>> max_lora_rank([4, 8]), max_lora_rank([12]), max_lora_rank([])
    (8, 16, 8)
    """
    largest = max(ranks, default=1)
    for allowed in VLLM_LORA_RANKS:
        if largest <= allowed:
            return allowed
    raise TunewiseError(f"LoRA rank {largest} is above vLLM's largest ({VLLM_LORA_RANKS[-1]})")


def vllm_command(
    base_folder: str, base_name: str, adapters: dict[str, Path], port: int, *, max_loras: int = 4,
    extra: list[str] | None = None, python: str = sys.executable,
) -> list[str]:  # fmt: skip
    """The command that starts vLLM's OpenAI server on 127.0.0.1:`port` with the base (answering to
    `base_name`, tunewise's name for it) and `adapters` (name -> PEFT folder) as LoRA modules.

    >>> vllm_command("/m/base", "embedded:smollm2", {}, 8001, python="python")  # doctest: +NORMALIZE_WHITESPACE
    ['python', '-m', 'vllm.entrypoints.openai.api_server', '--model', '/m/base', '--served-model-name',
     'embedded:smollm2', '--host', '127.0.0.1', '--port', '8001', '--enable-lora', '--max-loras', '4',
     '--max-lora-rank', '8']
    """
    ranks = [adapter_rank(folder) for folder in adapters.values()]
    argv = [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", base_folder,
        "--served-model-name", base_name, "--host", "127.0.0.1", "--port", str(port),
        "--enable-lora", "--max-loras", str(max(max_loras, len(adapters))), "--max-lora-rank", str(max_lora_rank(ranks)),
    ]  # fmt: skip
    if adapters:
        argv += ["--lora-modules", *(f"{name}={folder}" for name, folder in adapters.items())]
    return argv + list(extra or [])


def vllm_env() -> dict[str, str]:
    """The environment vLLM runs in: adapters made by later fine-tuning jobs may be loaded at run time."""
    return {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


def start_vllm(argv: list[str], port: int, timeout_s: float = 600.0) -> subprocess.Popen:
    """Start vLLM and wait until its /health answers (loading a model takes minutes); its output goes to
    tunewise's stderr. A vLLM that exits first is an error with its exit status."""
    import httpx

    process = subprocess.Popen(argv, env=vllm_env(), stdout=sys.stderr, stderr=sys.stderr)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TunewiseError(
                f"vLLM exited with status {process.returncode} while starting",
                hint="its messages above say why (a model vLLM does not support, too little GPU memory, ...)",
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    process.terminate()
    raise TunewiseError(f"vLLM did not answer on port {port} within {timeout_s:.0f} s")


def stop_vllm(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


class Upstream:
    """The vLLM server tunewise forwards chat completions to, and the adapters it has loaded."""

    def __init__(self, url: str, loaded: set[str] | None = None, timeout_s: float = 600.0):
        self.url = url.rstrip("/")
        self.loaded = set(loaded or ())
        self.timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self._client: Any = None

    @property
    def client(self) -> Any:
        import httpx

        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def ensure_adapter(self, name: str, folder: Path) -> None:
        """Load adapter `name` into vLLM once (a fine-tuning job's model, made after vLLM started)."""
        async with self._lock:
            if name in self.loaded:
                return
            response = await self.client.post(
                "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)}
            )
            if response.status_code != 200:
                from tunewise.serve.errors import APIError

                raise APIError(
                    502, f"the serving engine could not load the model '{name}': {response.text[:200]}"
                )
            self.loaded.add(name)

    async def chat(self, body: dict[str, Any], stream: bool) -> Any:
        """Forward a checked chat completion request; the engine's answer (status, JSON or event stream) is
        passed back as it is. An engine that does not answer, or answers with something other than JSON, is
        a 502 for the client, not a traceback."""
        import httpx
        from fastapi.responses import JSONResponse, StreamingResponse

        from tunewise.serve.errors import APIError

        try:
            if not stream:
                response = await self.client.post("/v1/chat/completions", json=body)
            else:
                request = self.client.build_request("POST", "/v1/chat/completions", json=body)
                response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise APIError(502, f"the serving engine (vLLM) is not answering: {type(exc).__name__}") from None
        if not stream:
            try:
                return JSONResponse(response.json(), status_code=response.status_code)
            except ValueError:
                raise APIError(
                    502,
                    f"the serving engine answered {response.status_code} without JSON: {response.text[:200]}",
                ) from None

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()

        return StreamingResponse(
            relay(),
            status_code=response.status_code,
            media_type=response.headers.get("content-type", "text/event-stream"),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


async def forward_chat(upstream: Upstream, pool: Any, body: Any, who: Any) -> Any:
    """A chat completion through vLLM: the model resolved as tunewise resolves it (404 for a model the key may
    not see), an adapter loaded where needed, then the request forwarded."""
    from tunewise.serve.errors import APIError

    served = pool.resolve(body.model, who)
    if served.kind == "full":
        raise APIError(
            400,
            f"the model '{served.id}' was fine-tuned in full; --engine vllm serves the base and its adapters",
            param="model",
        )
    if served.kind == "adapter":
        await upstream.ensure_adapter(served.id, served.weights)
    payload = body.model_dump(exclude_unset=True, exclude_none=True)
    payload["model"] = served.id
    return await upstream.chat(payload, bool(body.stream))
