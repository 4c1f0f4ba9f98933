"""`tunewise serve` against hostile or careless requests: one request never fails another, and what the model
cannot take is a 400 naming the field (the real server on a free loopback port, the official `openai` client)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.test_serve_inference import BASE, CHAT, client, running, wait_until  # noqa: E402
from tunewise.project import Project  # noqa: E402
from tunewise.serve.inference import ServeSettings  # noqa: E402

PROMPTS = [[{"role": "user", "content": f"review {i}: the {w} was fine"}] for i, w in enumerate("abcdefg")]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return Project(tmp_path_factory.mktemp("hardening"))


@pytest.fixture(scope="module")
def key(project) -> str:
    from tunewise.serve.auth import create_key

    return create_key(project, "tests")[1]


@pytest.fixture(scope="module")
def served(project, key) -> Iterator[tuple[str, object]]:
    settings = ServeSettings(base=BASE, preload=True, max_tokens_cap=32, max_batch_size=8)
    with running(project, settings) as pair:
        yield pair


@pytest.fixture(scope="module")
def api(served, key) -> openai.OpenAI:
    return client(served[0], key)


def good(api, i: int, stream: bool = False) -> str:
    """Request i of seven: sampled with its own seed, every other one streamed when `stream`."""
    kwargs = dict(model=BASE, messages=PROMPTS[i], temperature=1.0, top_p=0.9, seed=100 + i, max_tokens=10)
    if stream and i % 2:
        chunks = api.chat.completions.create(**kwargs, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return api.chat.completions.create(**kwargs).choices[0].message.content


def together(api, served, poisoned: dict, stream: bool = False) -> tuple[list[str], Exception | None]:
    """The seven good requests and the poisoned one, queued while the worker is held so that all eight meet in
    one batch; returns the seven answers and what the poisoned request raised."""
    batcher = served[1].state.inference.batcher
    answers: dict[int, str] = {}
    failure: list[Exception] = []

    def ask(i: int) -> None:
        answers[i] = good(api, i, stream)

    def poison() -> None:
        try:
            api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=10, **poisoned)
        except openai.APIError as exc:
            failure.append(exc)

    before = batcher.waiting
    with batcher.paused():
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(7)] + [
            threading.Thread(target=poison)
        ]
        for t in threads:
            t.start()
        # A 400 never reaches the queue; a request that fails while decoding does.
        wait_until(lambda: batcher.waiting - before == 7 + ("seed" in poisoned and poisoned["seed"] == 666))
    for t in threads:
        t.join(120)
    return [answers[i] for i in range(7)], failure[0] if failure else None


@pytest.fixture(scope="module")
def alone(api) -> list[str]:
    """The seven answers, each request sent on its own."""
    return [good(api, i) for i in range(7)]


@pytest.mark.parametrize(
    ("poisoned", "param"),
    [({"temperature": 1e-300}, "temperature"), ({"temperature": 1.0, "seed": 2**70}, "seed")],
)
def test_settings_the_sampler_cannot_take_are_a_400_and_the_others_are_answered(
    api, served, alone, poisoned, param
):
    answers, failure = together(api, served, poisoned)
    assert answers == alone
    assert isinstance(failure, openai.BadRequestError)
    assert failure.body["param"] == param and failure.body["type"] == "invalid_request_error"


def test_a_tiny_top_p_keeps_the_most_likely_token(api):
    """top_p below float32's smallest number compared as 0 and kept no token at all; it keeps the first."""
    sampled = api.chat.completions.create(
        model=BASE, messages=CHAT, temperature=1.0, top_p=1e-300, max_tokens=10
    )
    greedy = api.chat.completions.create(model=BASE, messages=CHAT, temperature=0, max_tokens=10)
    assert sampled.choices[0].message.content == greedy.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_a_row_that_fails_while_decoding_fails_alone(api, served, alone, monkeypatch, stream):
    """A failure validation cannot foresee (here: the sampler raises for the row seeded 666, after a few tokens)
    fails its request alone with a 500; the batch's other seven get the answers they get without it, streamed
    ones included (their retried tokens are checked against those sent, not sent twice)."""
    from tunewise.evaluate import engine

    choose = engine._PerPrompt.choose
    calls = {"n": 0}

    def flaky(self, logits, prompts):
        calls["n"] += 1
        if calls["n"] > 3 and any(self.params[i].seed == 666 for i in prompts):
            raise RuntimeError("probability tensor contains either inf, nan or element < 0")
        return choose(self, logits, prompts)

    monkeypatch.setattr(engine._PerPrompt, "choose", flaky)
    batcher = served[1].state.inference.batcher
    before, served_before = batcher.batches, batcher.requests
    answers, failure = together(api, served, {"temperature": 1.0, "seed": 666}, stream=stream)
    assert answers == alone
    assert isinstance(failure, openai.InternalServerError)
    assert "probability tensor" in failure.body["message"]
    # 8 rows fail, then halves of 4 (one fails), 2 (one fails), 1 and 1: seven engine calls.
    assert batcher.batches - before == 7
    assert batcher.requests - served_before == 8  # each request counted once, where it was answered


def test_lone_surrogates_in_chat_text_are_a_400_naming_the_field(served, key):
    """JSON's escapes can spell a lone UTF-16 surrogate, which has no UTF-8 encoding (the tokenizer failed)."""
    url = served[0] + "/chat/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post(**body):
        # json.dumps writes a lone surrogate as the escape `\ud800`, as a careless client does.
        return httpx.post(url, content=json.dumps({"model": BASE, "max_tokens": 2, **body}), headers=headers)

    reply = post(
        messages=[{"role": "system", "content": "ok"}, {"role": "user", "content": "hi \ud800 there"}]
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "messages[1].content" and "U+D800 at character 3" in error["message"]
    parts = post(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}])
    assert parts.status_code == 400 and parts.json()["error"]["param"] == "messages[0].content"
    stop = post(messages=CHAT, stop=["\ud83d"])
    assert stop.status_code == 400 and stop.json()["error"]["param"] == "stop"
    assert post(messages=[{"role": "user", "content": "\ud83d\ude00"}]).status_code == 200  # a pair is fine


def test_a_fine_tuning_seed_outside_64_bits_is_a_400_naming_it(served, key):
    url, headers = served[0] + "/fine_tuning/jobs", {"Authorization": f"Bearer {key}"}
    for seed in (2**70, 2**64, -(2**63) - 1):
        reply = httpx.post(
            url, json={"model": BASE, "training_file": "file-x", "seed": seed}, headers=headers
        )
        assert reply.status_code == 400, seed
        assert (
            reply.json()["error"]["param"] == "seed"
            and reply.json()["error"]["type"] == "invalid_request_error"
        )
    # At the edge, the seed passes validation and the request fails on the next check: the missing file.
    edge = httpx.post(
        url, json={"model": BASE, "training_file": "file-x", "seed": 2**64 - 1}, headers=headers
    )
    assert edge.status_code == 404 and edge.json()["error"]["param"] == "training_file"


@pytest.mark.parametrize(
    ("response_format", "problem"),
    [
        ({"type": "regex", "pattern": "(("}, "regex '((': Regex parsing error at position"),
        ({"type": "regex", "pattern": "(a)\\1"}, "Backreference is not supported"),
        (
            {"type": "json_schema", "json_schema": {"name": "t", "schema": {"$ref": "#/nope"}}},
            "JSON Schema: Cannot find field 'nope'",
        ),
    ],
)
def test_a_grammar_constrained_decoding_cannot_enforce_is_a_400(api, served, response_format, problem):
    """It used to answer 200 with free text (the batch compiled it, failed, and decoded unconstrained)."""
    pytest.importorskip("xgrammar")
    batcher = served[1].state.inference.batcher
    before = batcher.requests
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=4, response_format=response_format)
    assert exc.value.body["param"] == "response_format" and problem in exc.value.body["message"]
    assert "/project/" not in exc.value.body["message"]  # xgrammar's source location is cut off
    assert batcher.requests == before  # refused before queueing


def test_sampling_params_refuse_what_the_sampler_cannot_take():
    from tunewise.errors import TunewiseError
    from tunewise.evaluate.engine import SamplingParams

    with pytest.raises(TunewiseError, match="temperature must be 0 .greedy. or at least 1e-06, got 1e-300"):
        SamplingParams(temperature=1e-300)
    with pytest.raises(TunewiseError, match="seed must be a 64-bit integer"):
        SamplingParams(temperature=1.0, seed=2**64)
    assert SamplingParams(temperature=1e-6, seed=-(2**63)).seed == -(2**63)  # the edges are taken
