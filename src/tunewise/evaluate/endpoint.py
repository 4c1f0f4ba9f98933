"""The HTTP engine: any OpenAI-compatible chat completions API as an arm (a hosted GPT-4o-class model, a vLLM
server, `tunewise serve`).

It answers the same `generate()` / `sample()` calls as the local engine, so an endpoint is prompted and scored
exactly like a local arm. What differs, and why:
- requests go out concurrently (`concurrency` at a time, from a thread pool): a remote API's latency is
  mostly waiting, so one request at a time would make a 500-example evaluation take minutes for nothing;
- transient failures (connection errors, timeouts, 408/409/429/5xx) are retried with exponential backoff
  and jitter, honouring `Retry-After`, by the official `openai` client itself (`max_retries`); the retries
  each answer took are recorded;
- a request the server rejects outright (wrong key, unknown model, bad request) stops the arm at once with
  an error naming the endpoint: retrying a configuration mistake 500 times helps nobody;
- a request still failing after its retries becomes an empty answer with `finish_reason="error"`: it is
  scored as wrong (the endpoint did not answer) and counted, instead of throwing away the answers that
  did arrive;
- tokens come from the API's `usage` fields (the provider's own tokenizer, which is what it bills); latency is
  the wall time of the request as the client saw it, retries and backoff included.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.evaluate.engine import Generation

log = logging.getLogger(__name__)

# A chat: a list of {"role", "content"} messages.
Chat = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class EndpointConfig:
    """Where the endpoint is and how hard to push it."""

    name: str
    base_url: str
    model: str
    api_key_env: str | None = None  # the environment variable holding the key; None: the server needs none
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4

    def api_key(self) -> str:
        if self.api_key_env is None:
            # The openai client insists on a key; servers without auth (vLLM, `tunewise serve --no-auth`)
            # ignore it.
            return "not-needed"
        key = os.environ.get(self.api_key_env)
        if not key:
            raise TunewiseError(
                f"endpoint '{self.name}': the environment variable {self.api_key_env} is not set",
                hint=f"export {self.api_key_env}=... (the API key for {self.base_url})",
            )
        return key


class EndpointEngine:
    """Chat completions over HTTP with concurrency and retries (see the module docstring)."""

    def __init__(self, config: EndpointConfig, client: Any | None = None):
        if config.concurrency < 1:
            raise TunewiseError(f"endpoint '{config.name}': concurrency must be at least 1")
        if config.max_retries < 0:
            raise TunewiseError(f"endpoint '{config.name}': max_retries must be 0 or more")
        self.config = config
        if client is None:
            import openai

            client = openai.OpenAI(
                base_url=config.base_url,
                api_key=config.api_key(),
                timeout=config.timeout_s,
                max_retries=config.max_retries,
            )
        self.client = client
        self._lock = threading.Lock()
        self.retries = 0  # retries taken by all requests so far
        self.errors = 0  # requests that failed after their retries

    # --- the engine interface ---------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Chat],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> list[Generation]:
        """One completion per chat, results in the order of `prompts`. `seed` is passed on (servers that honour
        it make sampled answers reproducible); each prompt gets `seed + its index` so samples differ."""
        if max_new_tokens < 1:
            raise TunewiseError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not prompts:
            return []
        jobs = [(list(p), temperature, seed + i) for i, p in enumerate(prompts)]
        return self._run_all(jobs, max_new_tokens)

    def sample(
        self,
        prompts: Sequence[Chat],
        n: int,
        temperature: float = 0.7,
        seed: int = 0,
        max_new_tokens: int = 64,
    ) -> list[list[Generation]]:
        """n sampled completions per prompt, as n separate requests: many servers ignore or refuse `n > 1`."""
        if n < 1:
            raise TunewiseError(f"n must be at least 1, got {n}")
        if temperature <= 0:
            raise TunewiseError("sampling needs temperature > 0 (temperature 0 is greedy)")
        flat = self.generate(
            [p for p in prompts for _ in range(n)],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    # --- internals ----------------------------------------------------------------------------------------

    def _run_all(self, jobs: list[tuple[list, float, int]], max_new_tokens: int) -> list[Generation]:
        results: list[Generation | None] = [None] * len(jobs)
        with ThreadPoolExecutor(
            max_workers=min(self.config.concurrency, len(jobs)), thread_name_prefix="endpoint"
        ) as pool:
            futures = {
                pool.submit(self._one, messages, max_new_tokens, temperature, seed): i
                for i, (messages, temperature, seed) in enumerate(jobs)
            }
            try:
                for future, i in futures.items():
                    results[i] = future.result()  # re-raises a fatal error (bad key, unknown model, ...)
            except BaseException:
                for future in futures:
                    future.cancel()  # do not send the requests still queued
                raise
        return [r for r in results if r is not None]

    def _one(self, messages: list, max_new_tokens: int, temperature: float, seed: int) -> Generation:
        import openai

        started = time.perf_counter()
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.config.model,
                messages=messages,
                max_tokens=max_new_tokens,
                temperature=temperature,
                seed=seed,
            )
        except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError) as exc:
            # Still failing after the client's retries: a transient failure that did not pass.
            with self._lock:
                self.errors += 1
                self.retries += self.config.max_retries
            log.warning("endpoint %s: request failed after retries: %s", self.config.name, exc)
            return Generation("", (), 0, 0, (time.perf_counter() - started) * 1000.0, "error")
        except openai.APIStatusError as exc:
            raise self._fatal(exc) from None
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        with self._lock:
            self.retries += getattr(raw, "retries_taken", 0)
        reply = raw.parse()
        if not reply.choices:
            raise TunewiseError(
                f"endpoint '{self.config.name}' returned no choices",
                hint="is base_url an OpenAI-compatible chat completions API?",
            )
        choice = reply.choices[0]
        usage = reply.usage
        if usage is None:
            raise TunewiseError(
                f"endpoint '{self.config.name}' returned no usage (token counts)",
                hint="tunewise prices an arm by its measured tokens; use a server that reports usage",
            )
        return Generation(
            text=choice.message.content or "",
            token_ids=(),
            prompt_tokens=int(usage.prompt_tokens),
            completion_tokens=int(usage.completion_tokens),
            latency_ms=elapsed_ms,
            finish_reason=choice.finish_reason or "stop",
        )

    def _fatal(self, exc: Any) -> TunewiseError:
        """A clear error for a request the server refused (no retry can fix it)."""
        status = getattr(exc, "status_code", None)
        name, url = self.config.name, self.config.base_url
        body = getattr(exc, "message", str(exc))
        if status == 401:
            where = f"${self.config.api_key_env}" if self.config.api_key_env else "no key (api_key_env unset)"
            return TunewiseError(
                f"endpoint '{name}' ({url}) rejected the API key from {where}",
                hint="check the key, or set evaluation.endpoints[].api_key_env to the right variable",
            )
        if status == 404:
            return TunewiseError(
                f"endpoint '{name}' ({url}) does not know model '{self.config.model}' (404): {body}",
                hint="check evaluation.endpoints[].model against the server's /v1/models",
            )
        return TunewiseError(
            f"endpoint '{name}' ({url}) refused the request ({status}): {body}",
            hint="check base_url and model; the server's message above says what it expected",
        )
