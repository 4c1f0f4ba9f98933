"""Connection limits of `tunewise serve`: read timeouts and a cap on each client's open connections.

uvicorn bounds what it can: the keep-alive wait between requests (`timeout_keep_alive`), the size of a request's
line and headers (h11's 16 KiB, answered 400) and the server's concurrent connections and requests
(`limit_concurrency`, answered 503). It has no read timeout: a client that sends half its headers, or trickles
its body a byte at a time, holds a connection (and a task) for as long as it likes. `guarded_protocol` adds:

- a header timeout: a request's line and headers must arrive within `header_timeout_s` of its first byte (or of
  the connection's opening); else 408 and the connection is closed;
- a body timeout: after `body_timeout_s`, a body must have come at an average of at least `min_body_rate`
  bytes per second since its headers (a large upload on a slow link passes; a byte every 10 s does not); else
  408 (or, when the response has started, a plain close). Time while the server itself stops reading (the app is
  behind) does not count against the client;
- a cap of `max_connections_per_client` open connections per client address: the next one is answered 429
  with `Retry-After` and closed, while other clients still get in.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tunewise.serve.errors import error_body


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_rate: float = 8192.0  # bytes per second, averaged over the body once body_timeout_s has passed
    max_connections_per_client: int = 64


def raw_response(
    status: int, reason: str, message: str, code: str, extra: dict[str, str] | None = None
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, with an OpenAI error body (written straight to
    the socket: these answers come before or instead of a request the HTTP state machine would accept).

    >>> raw_response(408, "Request Timeout", "too slow", "request_timeout").split(b"\\r\\n")[0]
    b'HTTP/1.1 408 Request Timeout'
    """
    kind = "rate_limit_error" if status == 429 else "timeout_error"
    body = json.dumps(error_body(message, kind, code=code)).encode()
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "connection": "close",
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def guarded_protocol(limits: ConnectionLimits) -> type:
    """uvicorn's h11 protocol with the limits above (pass it as `uvicorn.Config(http=...)`); each call makes a
    class with its own per-client counts, so two servers in one process do not share them."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_per_client: Counter[str] = Counter()

    class GuardedH11Protocol(H11Protocol):
        counts = open_per_client

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._timer: Any = None
            self._phase: str | None = None
            self._body_started = 0.0
            self._body_bytes = 0
            self._host = self.client[0] if self.client else "?"
            if self.counts[self._host] >= limits.max_connections_per_client:
                self._host = None  # not counted: connection_lost must not release another connection's slot
                cap = limits.max_connections_per_client
                transport.write(
                    raw_response(
                        429, "Too Many Requests",
                        f"too many connections from your address (at most {cap} open at once); "
                        "close some or retry later",
                        "too_many_connections", {"retry-after": "1"},
                    )
                )  # fmt: skip
                transport.close()
                return
            self.counts[self._host] += 1
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            if getattr(self, "_host", None) is not None:
                self.counts[self._host] -= 1
                if self.counts[self._host] <= 0:
                    del self.counts[self._host]
                self._host = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._phase == "body":
                self._body_bytes += len(data)
            super().data_received(data)
            self._watch(fresh_bytes=bool(data))

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        # --- the timers ------------------------------------------------------------------------------------

        def _watch(self, fresh_bytes: bool = False) -> None:
            """Arm the timer that fits where the request stands (h11's view of the client's side)."""
            if self.transport is None or self.transport.is_closing():
                return
            state = self.conn.their_state
            if state is h11.IDLE:
                # Waiting for a request: a fresh connection, or bytes of the next request, start the header
                # clock (once: more bytes do not restart it); an idle keep-alive connection without bytes is
                # uvicorn's timeout_keep_alive's.
                if self._phase == "headers":
                    return
                if self.cycle is None or fresh_bytes or self.conn.trailing_data[0]:
                    self._phase = "headers"
                    self._arm(limits.header_timeout_s)
                else:
                    self._cancel()
            elif state is h11.SEND_BODY:
                if self._phase != "body":
                    self._phase = "body"
                    self._body_started = self.loop.time()
                    self._body_bytes = 0
                self._arm(self._body_deadline() - self.loop.time())
            else:  # the request is in (DONE), or the connection is ending: nothing to wait for
                self._cancel()

        def _body_deadline(self) -> float:
            needed = self._body_bytes / limits.min_body_rate if limits.min_body_rate > 0 else 0.0
            return self._body_started + max(limits.body_timeout_s, needed)

        def _arm(self, delay: float) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_later(max(0.0, delay), self._expired)

        def _cancel(self) -> None:
            if getattr(self, "_timer", None) is not None:
                self._timer.cancel()
            self._timer = None
            self._phase = None

        def _expired(self) -> None:
            self._timer = None
            if self.transport.is_closing():
                return
            if self._phase == "body":
                if self.flow.read_paused:
                    # The server stopped reading (the app is behind), not the client: the body's clock starts
                    # again, so the time spent paused is never held against the client.
                    self._body_started, self._body_bytes = self.loop.time(), 0
                    self._arm(limits.body_timeout_s)
                    return
                if self.loop.time() < self._body_deadline():  # bytes came since the timer was armed
                    self._arm(self._body_deadline() - self.loop.time())
                    return
                what = f"the request body did not arrive in time (under {limits.min_body_rate:g} bytes/s)"
            else:
                what = f"the request's headers did not arrive within {limits.header_timeout_s:g} s"
            self.logger.info("closing a connection from %s: %s", self.client and self.client[0], what)
            # Waiting for headers, no response is under way (an earlier request's is complete); waiting for a
            # body, the response may have started (an app that answers before reading): then only close.
            if self._phase == "headers" or self.cycle is None or not self.cycle.response_started:
                self.transport.write(raw_response(408, "Request Timeout", what, "request_timeout"))
            self._phase = None
            self.transport.close()

    return GuardedH11Protocol
