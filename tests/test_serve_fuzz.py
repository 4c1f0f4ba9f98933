"""Fuzzing the chat endpoint's request body (hypothesis) against the real server on the tiny model: random JSON
(hostile numbers, unicode, nesting, wrong types, fields that almost make sense) and hostile raw bytes. No
request may get a 500, and a bad request sent beside a fixed good greedy one, in the same batch when both
queue, never changes the good one's answer. Derandomized, so CI sees the same examples every run."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.test_serve_inference import BASE, CHAT, running, wait_until  # noqa: E402
from tunewise.project import Project  # noqa: E402
from tunewise.serve.inference import ServeSettings  # noqa: E402

GOOD = {"model": BASE, "messages": CHAT, "temperature": 0, "max_tokens": 8}

HOSTILE_NUMBERS = st.sampled_from(
    [0, -1, 1, 2, 1e308, -1e308, 5e-324, -0.0, 1e-300, 2**31, 2**63, 2**64, -(2**63) - 1, 2**70, 10**30, 0.5]
)
LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    HOSTILE_NUMBERS,
    st.text(max_size=16),
)
ANY = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
TEXT = st.text(max_size=24)  # any code point but lone surrogates (JSON cannot carry those unescaped)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "usr", ""]) | ANY,
        "content": TEXT
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), max_size=2)
        | ANY,
    },
    optional={"name": TEXT | ANY, "weight": HOSTILE_NUMBERS},
)
RESPONSE_FORMAT = st.sampled_from(
    [
        {"type": "text"},
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}},
        {"type": "regex", "regex": "(("},
        {"type": "json_schema"},
    ]
)
FIELDS = {
    "model": st.just(BASE) | st.sampled_from(["ft:none", "", "../etc/passwd", BASE + "\x00"]) | ANY,
    "messages": st.lists(MESSAGE, max_size=3) | ANY,
    "temperature": HOSTILE_NUMBERS | ANY,
    "top_p": HOSTILE_NUMBERS | ANY,
    "seed": HOSTILE_NUMBERS | ANY,
    "max_tokens": st.integers(-3, 12) | ANY,
    "max_completion_tokens": st.integers(-3, 12) | ANY,
    "stop": TEXT | st.lists(TEXT, max_size=5) | ANY,
    "response_format": RESPONSE_FORMAT | ANY,
    "stream": st.booleans() | ANY,
    "n": HOSTILE_NUMBERS | ANY,
    "logprobs": ANY,
    "tools": ANY,
    "user": ANY,
}
# Valid requests (so that fuzzed ones decode beside the good one), then one field made hostile; any mix of the
# fields; any JSON at all.
VALID = st.fixed_dictionaries(
    {"model": st.just(BASE), "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": TEXT}), min_size=1, max_size=2)},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "seed": st.integers(0, 2**32),
        "max_tokens": st.integers(1, 12),
        "stop": st.lists(TEXT.filter(bool), max_size=2),
        "stream": st.booleans(),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
    },
)  # fmt: skip
ONE_HOSTILE = st.sampled_from(sorted(FIELDS)).flatmap(lambda k: FIELDS[k].map(lambda v: {k: v}))
BODY = st.one_of(
    VALID,
    st.builds(lambda body, hostile: {**body, **hostile}, VALID, ONE_HOSTILE),
    st.fixed_dictionaries({}, optional=FIELDS),
    st.dictionaries(st.text(max_size=12), ANY, max_size=4),
    ANY,
)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, object]]:
    settings = ServeSettings(base=BASE, preload=True, max_tokens_cap=12, max_batch_size=4)
    with running(Project(tmp_path_factory.mktemp("fuzz")), settings, no_auth=True) as pair:
        yield pair


@pytest.fixture(scope="module")
def http(served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def reference(http) -> str:
    answer = http.post("/chat/completions", json=GOOD)
    assert answer.status_code == 200
    return answer.json()["choices"][0]["message"]["content"]


def check(response: httpx.Response) -> None:
    """Not a 500, every answer in OpenAI's shape; a stream carries no server error either."""
    assert response.status_code != 500 and response.status_code < 600, response.text[:500]
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert '"server_error"' not in response.text, response.text[:500]


def beside_good(served, http, send) -> tuple[httpx.Response, str]:
    """`send()` and the good request, queued together while the batcher is held; returns the bad request's
    response and the good request's answer."""
    batcher = served[1].state.inference.batcher
    out: dict[str, object] = {}

    def bad() -> None:
        out["bad"] = send()

    def good() -> None:
        out["good"] = http.post("/chat/completions", json=GOOD)

    with batcher.paused():
        before = batcher.waiting
        threads = [threading.Thread(target=bad), threading.Thread(target=good)]
        for t in threads:
            t.start()
        # The good one queues; the bad one is answered at once (a 400) or queues beside it.
        wait_until(
            lambda: batcher.waiting - before >= 2 or ("bad" in out and batcher.waiting - before >= 1), 60
        )
    for t in threads:
        t.join(120)
    good_answer = out["good"]
    assert isinstance(good_answer, httpx.Response) and good_answer.status_code == 200, good_answer
    return out["bad"], good_answer.json()["choices"][0]["message"]["content"]  # type: ignore[return-value]


@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=BODY)
def test_no_body_gets_a_500_or_changes_another_answer(served, http, reference, body):
    bad, good = beside_good(served, http, lambda: http.post("/chat/completions", json=body))
    check(bad)
    assert good == reference


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # nesting past Python's recursion limit
        b'{"model": "tiny:random", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model": "tiny:random", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        b'{"model": "tiny:random", "messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}',
        b'{"model": "tiny:random", "messages": [{"role": "user", "content": "hi"}], "seed": ' + b"9" * 5000 + b"}",
        b'{"model": "tiny:random", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "tiny:random", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b'{"model": "tiny:random", "model": 3, "messages": []}',
        b"",
        b"null",
        b"\x00" * 64,
    ],
    ids=[
        "deep-nesting", "deep-messages", "nan", "infinity", "5000-digit-int", "lone-surrogate", "invalid-utf8",
        "duplicate-key", "empty", "null", "nul-bytes",
    ],
)  # fmt: skip
def test_hostile_raw_bodies_are_refused_without_a_500(served, http, reference, raw):
    headers = {"Content-Type": "application/json"}
    bad, good = beside_good(
        served, http, lambda: http.post("/chat/completions", content=raw, headers=headers)
    )
    check(bad)
    assert bad.status_code == 400, bad.text[:300]
    assert good == reference


def test_the_fuzzed_bodies_reach_the_model_sometimes(served, http):
    """The strategy is not all noise: the bodies it draws first are valid requests that decode, beside the good
    one (else the test above would only ever see 400s)."""
    answered = []

    @settings(max_examples=10, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(body=BODY)
    def probe(body):
        if http.post("/chat/completions", json=body).status_code == 200:
            answered.append(json.dumps(body))

    probe()
    assert len(answered) >= 3, answered
