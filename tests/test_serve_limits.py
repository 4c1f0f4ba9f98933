"""The connection limits of `tunewise serve` (serve/limits.py), with raw sockets against the real server on a
free loopback port: a client that sends half its headers, or trickles its body, is answered 408 and closed once
the (short, test-set) timeout passes; the connection after a client's cap is answered 429 and closed while
another client address still gets in. Outcomes are asserted, never how long they took."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.test_serve_inference import BASE, running  # noqa: E402
from tunewise.project import Project  # noqa: E402
from tunewise.serve.inference import ServeSettings  # noqa: E402

PATIENCE_S = 60.0  # socket timeouts: far above every limit set here, so a slow machine only waits longer


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> Iterator[int]:
    """A server with short read timeouts; yields its port."""
    settings = ServeSettings(
        base=BASE,
        header_timeout_s=0.5,
        body_timeout_s=0.5,
        min_body_rate=1000.0,
        max_connections_per_client=64,
    )
    with running(Project(tmp_path_factory.mktemp("strict")), settings, no_auth=True) as (url, _):
        yield int(url.rsplit(":", 1)[1].split("/")[0])


@pytest.fixture(scope="module")
def capped(tmp_path_factory) -> Iterator[tuple[int, object]]:
    """A server with patient timeouts and at most 3 connections per client address; yields (port, app)."""
    settings = ServeSettings(base=BASE, header_timeout_s=60, body_timeout_s=60, max_connections_per_client=3)
    with running(Project(tmp_path_factory.mktemp("capped")), settings, no_auth=True) as (url, app):
        yield int(url.rsplit(":", 1)[1].split("/")[0]), app


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S, source_address=(source, 0))
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def get_models(sock: socket.socket) -> bytes:
    """One keep-alive GET /v1/models on `sock`; returns the response head and body."""
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(
        next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_half_sent_headers_are_answered_408_and_closed(strict):
    with connect(strict) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: appl")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code": "request_timeout"' in answer and b"headers" in answer


def test_a_connection_that_sends_nothing_is_closed(strict):
    with connect(strict) as sock:
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_half_a_second_request_on_a_kept_alive_connection_is_closed(strict):
    with connect(strict) as sock:
        assert get_models(sock).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /v1/mod")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_trickled_body_is_answered_408_and_closed(strict):
    body = b'{"model": "tiny:random", "messages": [{"role": "user", "content": "hi"}]}'
    with connect(strict) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        stop = threading.Event()

        def trickle() -> None:  # a byte at a time, far under min_body_rate
            for byte in body:
                if stop.wait(0.2):
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            answer = read_until_closed(sock)
        finally:
            stop.set()
            thread.join(PATIENCE_S)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"request body" in answer


def test_a_body_sent_at_once_is_answered(strict):
    body = b'{"model": "tiny:random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'
    with connect(strict) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"chat.completion"' in answer


def test_a_client_over_its_connection_cap_is_refused_and_another_client_gets_in(capped):
    port, app = capped
    held = [connect(port) for _ in range(3)]
    try:
        for sock in held:  # each has been served once and stays open (keep-alive): three slots taken
            assert get_models(sock).startswith(b"HTTP/1.1 200 ")
        with connect(port) as fourth:
            refused = read_until_closed(fourth)
        assert refused.startswith(b"HTTP/1.1 429 ")
        assert b"retry-after: 1" in refused.lower() and b"too_many_connections" in refused
        with connect(port, source="127.0.0.2") as other:  # another address on the loopback network
            assert get_models(other).startswith(b"HTTP/1.1 200 ")
        for sock in held:  # the three still work
            assert get_models(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        held[0].close()
    # A closed connection frees its slot (once the server has seen it close).
    deadline = time.monotonic() + PATIENCE_S

    def admitted() -> bool:
        with connect(port) as sock:
            try:
                return get_models(sock).startswith(b"HTTP/1.1 200 ")
            except (ConnectionError, OSError):
                return False

    while not admitted():
        assert time.monotonic() < deadline, "a slot was never freed"
        time.sleep(0.05)
    for sock in held[1:]:
        sock.close()
