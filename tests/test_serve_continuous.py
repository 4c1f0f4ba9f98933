"""Continuous batching in `tunewise serve` (serve/batcher.py, evaluate/continuous.py: OpenBatch): a request joins
the running batch of its model at the next decode step and leaves it when it ends.

The real server on the tiny model, driven by the official `openai` client. Arrivals are placed at known decode
steps, never by time: the worker thread is held inside a streamed request's k-th token event until the test's
next request is waiting in the queue. The order of the events the worker emits is then what the tests assert."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from tests.test_serve_inference import BASE, client, running, wait_until  # noqa: E402
from tunewise.project import Project  # noqa: E402
from tunewise.serve.batcher import Batcher, Job  # noqa: E402
from tunewise.serve.inference import ServeSettings  # noqa: E402

FILM = [{"role": "user", "content": "the film was good"}]
STORY = [{"role": "user", "content": "tell me a story"}]
HELLO = [{"role": "user", "content": "hello"}]
COUNT = [{"role": "user", "content": "one two three"}]
LONG = [{"role": "user", "content": "a " * 40}]  # 71 prompt tokens: wider than the cache when it arrives
BAD = [{"role": "user", "content": "the service was slow and the food was cold but the staff apologised"}]


@pytest.fixture(scope="module")
def continuous(tmp_path_factory) -> Iterator[tuple[str, object]]:
    settings = ServeSettings(base=BASE, preload=True, max_tokens_cap=64, max_batch_size=8)
    assert settings.batching == "continuous"  # the default
    with running(Project(tmp_path_factory.mktemp("continuous")), settings, no_auth=True) as pair:
        yield pair


@pytest.fixture(scope="module")
def api(continuous) -> openai.OpenAI:
    return client(continuous[0], "not-needed")


class Events:
    """Every event the worker emits, as (max_tokens of its request, kind, value): each test gives its requests
    distinct max_tokens. `hold(label, n, until)` holds the worker inside request `label`'s n-th token event
    until `until(job)` is true; `reached(label, n)` is set when it gets there."""

    def __init__(self) -> None:
        self.log: list[tuple[int, str, object]] = []
        self.lock = threading.Lock()
        self.tokens: dict[int, int] = {}
        self.holds: dict[tuple[int, int], tuple[object, threading.Event]] = {}
        self.failures: list[str] = []

    def hold(self, label: int, n: int, until) -> threading.Event:
        reached = threading.Event()
        self.holds[(label, n)] = (until, reached)
        return reached

    def record(self, job: Job, kind: str, value: object) -> None:
        label = job.params.max_new_tokens
        with self.lock:
            self.log.append((label, kind, value))
            n = self.tokens[label] = self.tokens.get(label, 0) + (kind == "token")
        held = self.holds.pop((label, n), None) if kind == "token" else None
        if held is not None:
            until, reached = held
            reached.set()
            try:
                wait_until(lambda: until(job), timeout=60)
            except AssertionError:
                self.failures.append(f"held at request {label}'s token {n}: the condition never came true")

    def clear(self) -> None:
        with self.lock:
            self.log.clear()
            self.tokens.clear()

    def kinds(self) -> list[tuple[int, str]]:
        return [(label, kind) for label, kind, _ in self.log]

    def done(self, label: int):
        return next(value for lab, kind, value in self.log if lab == label and kind == "done")


@pytest.fixture
def events(monkeypatch) -> Events:
    recorded = Events()
    emit = Job.emit

    def recording(job: Job, kind: str, value: object) -> None:
        recorded.record(job, kind, value)
        emit(job, kind, value)

    monkeypatch.setattr(Job, "emit", recording)
    return recorded


def ask(api: openai.OpenAI, messages, max_tokens: int, **kwargs) -> str:
    reply = api.chat.completions.create(model=BASE, messages=messages, max_tokens=max_tokens, **kwargs)
    return reply.choices[0].message.content


def streamed(api: openai.OpenAI, messages, max_tokens: int, **kwargs) -> str:
    chunks = api.chat.completions.create(
        model=BASE, messages=messages, max_tokens=max_tokens, stream=True, **kwargs
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@contextmanager
def background(fn, *args, **kwargs) -> Iterator[dict]:
    """Run fn in a thread; the dict holds its result (or error) once the block ends."""
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = fn(*args, **kwargs)
        except Exception as exc:  # handed to the test, which asserts on it
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield out
    finally:
        thread.join(120)
        assert not thread.is_alive()


def newcomer_order(api, batcher, events: Events) -> list[tuple[int, str]]:
    """A streamed request of 40 tokens; at its 3rd token, a request of 5 tokens arrives. The order of events."""
    reached = events.hold(40, 3, lambda job: batcher.waiting >= 1)
    with background(streamed, api, FILM, 40, temperature=0) as long:
        assert reached.wait(60)
        short = ask(api, STORY, 5, temperature=0)
    assert not events.failures and "error" not in long
    assert short == ask(api, STORY, 5, temperature=0)  # the same answer alone
    return events.kinds()


# --- a newcomer joins the running batch ---------------------------------------------------------------------


def test_a_request_gets_its_answer_while_a_longer_batch_decodes(api, continuous, events):
    batcher = continuous[1].state.inference.batcher
    before = batcher.batches
    order = newcomer_order(api, batcher, events)
    short_done, long_done = order.index((5, "done")), order.index((40, "done"))
    assert short_done < long_done
    # It joined after the long request's 3rd token: its 1st token came from its prefill, its 5th (the last) in
    # the step of the long one's 7th.
    assert order[:short_done].count((40, "token")) == 7
    assert order.count((40, "token")) == 40
    assert batcher.batches - before == 2  # the shared batch, then the lone check of the short answer


def test_static_batching_makes_the_newcomer_wait_for_the_batch(tmp_path, events):
    settings = ServeSettings(base=BASE, preload=True, max_tokens_cap=64, max_batch_size=8, batching="static")
    with running(Project(tmp_path), settings, no_auth=True) as (url, app):
        order = newcomer_order(client(url, "x"), app.state.inference.batcher, events)
    assert order.index((40, "done")) < order.index((5, "done"))  # it waited for the whole batch
    assert order.count((40, "token")) == 40


def test_batching_setting_and_option_name_the_choices(run_cli, tmp_path):
    from tunewise.errors import TunewiseError

    with pytest.raises(TunewiseError, match="batching must be 'continuous' or 'static'"):
        ServeSettings(batching="dynamic")
    code, _, err = run_cli("serve", "--batching", "dynamic", "--project", tmp_path)
    assert code == 1 and "unknown batching 'dynamic'" in err and "--batching static" in err


# --- answers do not depend on when a request arrives -------------------------------------------------------------


def test_interleaved_arrivals_give_the_answers_of_lone_requests(api, continuous, events, monkeypatch):
    """A streamed request of 30 tokens; a second arrives at its 2nd token, a prompt wider than the cache (71
    tokens) at its 6th, a greedy and a seeded sampled one at its 9th. Each answer, streamed or not, equals the
    same request sent alone."""
    from tunewise.evaluate.continuous import ContinuousBatch

    batcher = continuous[1].state.inference.batcher
    alone = {
        30: ask(api, FILM, 30, temperature=0),
        12: ask(api, STORY, 12, temperature=0),
        10: ask(api, LONG, 10, temperature=0),
        8: ask(api, HELLO, 8, temperature=0),
        14: ask(api, COUNT, 14, temperature=1, seed=5, top_p=0.9),
    }
    events.clear()
    shifts: list[int] = []
    make_room = ContinuousBatch.make_room

    def recording(self, width: int) -> None:
        shifts.append(width - (self.length - self.prefix_len))
        make_room(self, width)

    monkeypatch.setattr(ContinuousBatch, "make_room", recording)
    second = events.hold(30, 2, lambda job: batcher.waiting >= 1)
    sixth = events.hold(30, 6, lambda job: batcher.waiting >= 1)
    ninth = events.hold(30, 9, lambda job: batcher.waiting >= 2)
    with background(streamed, api, FILM, 30, temperature=0) as a:
        assert second.wait(60)
        with background(ask, api, STORY, 12, temperature=0) as b:
            assert sixth.wait(60)
            with background(streamed, api, LONG, 10, temperature=0) as c:
                assert ninth.wait(60)
                with background(ask, api, HELLO, 8, temperature=0) as d:
                    with background(ask, api, COUNT, 14, temperature=1, seed=5, top_p=0.9) as e:
                        pass
    assert not events.failures
    got = {30: a, 12: b, 10: c, 8: d, 14: e}
    assert {k: v.get("result", v.get("error")) for k, v in got.items()} == alone
    assert max(shifts) > 0  # the wide prompt moved the cache's columns to fit
    order = events.kinds()
    # Each newcomer ended before the first request: they were decoded beside it, not after it.
    assert all(order.index((k, "done")) < order.index((30, "done")) for k in (12, 8))


def test_constrained_and_free_requests_share_a_batch(api, continuous):
    batcher = continuous[1].state.inference.batcher
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "verdict",
            "schema": {
                "type": "object",
                "properties": {"good": {"type": "boolean"}},
                "required": ["good"],
                "additionalProperties": False,
            },
        },
    }
    mood = {
        "type": "json_schema",
        "json_schema": {
            "name": "mood",
            "schema": {
                "type": "object",
                "properties": {"mood": {"enum": ["up", "down"]}},
                "required": ["mood"],
                "additionalProperties": False,
            },
        },
    }
    requests = [
        (FILM, 64, {"response_format": schema}),
        (STORY, 60, {"response_format": mood}),
        (HELLO, 16, {}),
    ]
    alone = [ask(api, m, n, temperature=0, **kw) for m, n, kw in requests]
    before = batcher.batches
    with batcher.paused():
        threads = [background(ask, api, m, n, temperature=0, **kw) for m, n, kw in requests]
        outs = [t.__enter__() for t in threads]
        wait_until(lambda: batcher.waiting == 3)
    for t in threads:
        t.__exit__(None, None, None)
    assert [o.get("result", o.get("error")) for o in outs] == alone
    assert batcher.batches - before == 1
    assert isinstance(json.loads(alone[0])["good"], bool)
    assert json.loads(alone[1])["mood"] in ("up", "down")


# --- cancellation and failures ---------------------------------------------------------------------------------


def test_a_client_gone_mid_batch_drops_its_row_and_the_others_go_on(api, continuous, events):
    batcher = continuous[1].state.inference.batcher
    alone = ask(api, STORY, 30, temperature=0)
    events.clear()
    reached = events.hold(40, 4, lambda job: job.cancelled)  # the worker waits until the server notices
    with batcher.paused():
        stream = api.chat.completions.create(
            model=BASE, messages=FILM, max_tokens=40, temperature=0, stream=True
        )
        other_thread = background(ask, api, STORY, 30, temperature=0)
        other = other_thread.__enter__()
        wait_until(lambda: batcher.waiting == 2)
    chunks = iter(stream)
    next(chunks), next(chunks)
    assert reached.wait(60)
    stream.close()  # the client goes away
    other_thread.__exit__(None, None, None)
    assert other["result"] == alone
    assert not events.failures
    gone = events.done(40)
    assert gone.finish_reason == "abort" and gone.completion_tokens == 5  # dropped at its next token
    assert events.done(30).completion_tokens == 30


def test_a_request_whose_prefill_fails_fails_alone(api, continuous, monkeypatch):
    from tunewise.serve.inference import encode_chat

    inference = continuous[1].state.inference
    batcher, pool = inference.batcher, inference.pool
    engine = pool.engine_for(pool.resolve(BASE))[0]
    bad = encode_chat(pool.tokenizer, BAD)
    alone = [ask(api, FILM, 8, temperature=0), ask(api, STORY, 9, temperature=0)]
    forward = engine._forward

    def failing(input_ids, attention_mask, position_ids, cache):
        if input_ids.shape[1] >= len(bad) and any(row[-len(bad) :].tolist() == bad for row in input_ids):
            raise RuntimeError("this prompt breaks the model")
        return forward(input_ids, attention_mask, position_ids, cache)

    monkeypatch.setattr(engine, "_forward", failing)
    with batcher.paused():
        good = [background(ask, api, FILM, 8, temperature=0), background(ask, api, STORY, 9, temperature=0)]
        broken = background(ask, api, BAD, 10, temperature=0)
        outs = [t.__enter__() for t in [good[0], broken, good[1]]]
        wait_until(lambda: batcher.waiting == 3)
    for t in [good[0], broken, good[1]]:
        t.__exit__(None, None, None)
    assert [outs[0]["result"], outs[2]["result"]] == alone
    assert isinstance(outs[1]["error"], openai.InternalServerError)
    assert "this prompt breaks the model" in outs[1]["error"].body["message"]


def test_a_request_that_breaks_a_decode_step_fails_alone(api, continuous, monkeypatch):
    """A failure in a decode step cannot be pinned on a row: the batch's requests are decoded again in static
    batches, its halves apart, and so on until the one that fails is alone. A streamed request's replayed tokens are not sent
    twice: its stream equals its answer alone."""
    from tunewise.evaluate import engine as engine_module

    batcher = continuous[1].state.inference.batcher
    alone = [ask(api, FILM, 8, temperature=0), streamed(api, STORY, 9, temperature=0)]
    choose = engine_module._PerPrompt.choose

    def failing(self, logits, prompts):
        if any(self.params[i].seed == 666 for i in prompts):
            raise RuntimeError("sampling failed")
        return choose(self, logits, prompts)

    monkeypatch.setattr(engine_module._PerPrompt, "choose", failing)
    before = batcher.batches
    with batcher.paused():
        threads = [
            background(ask, api, FILM, 8, temperature=0),
            background(ask, api, HELLO, 10, temperature=0, seed=666),
            background(streamed, api, STORY, 9, temperature=0),
        ]
        outs = []
        for n, t in enumerate(
            threads, 1
        ):  # one at a time: the batch's rows, and so its halves, in this order
            outs.append(t.__enter__())
            wait_until(lambda n=n: batcher.waiting == n)
    for t in threads:
        t.__exit__(None, None, None)
    assert [outs[0].get("result"), outs[2].get("result")] == alone
    assert isinstance(outs[1]["error"], openai.InternalServerError)
    # The continuous batch, then static ones, its halves apart: [film], [hello, story], [hello], [story].
    assert batcher.batches - before == 5


# --- the fair rule between models (the batcher alone, over a scripted batch) ---------------------------------------


class ScriptedBatch:
    """Rows that end after their request's max_new_tokens steps; every admission is logged as (model, prompts)."""

    def __init__(self, model: str, on_token, admissions: list, on_step) -> None:
        self.model, self.on_token, self.admissions, self.on_step = model, on_token, admissions, on_step
        self.left: dict[int, int] = {}
        self.ended: list[tuple[int, object]] = []
        self.next = 0
        self.steps = 0

    def rows(self) -> int:
        return len(self.left)

    def room(self) -> int:
        return 4 - len(self.left)

    def admit(self, jobs: list[Job]) -> list[int]:
        self.admissions.append((self.model, [job.prompt_ids[0] for job in jobs]))
        keys = list(range(self.next, self.next + len(jobs)))
        self.next += len(jobs)
        for key, job in zip(keys, jobs):
            self.left[key] = job.params.max_new_tokens
        return keys

    def step(self) -> None:
        self.steps += 1
        self.on_step(self.model, self.steps)
        for key in list(self.left):
            self.on_token(key, 1)
            self.left[key] -= 1
            if not self.left[key]:
                del self.left[key]
                self.ended.append((key, "answer"))

    def take_finished(self) -> list[tuple[int, object]]:
        ended, self.ended = self.ended, []
        return ended


@pytest.mark.parametrize(
    "arrivals, admissions",
    [
        # Another model's request is older than the newcomer: the batch takes no one and drains first.
        (["b", "a"], [("a", [1]), ("b", [2]), ("a", [3])]),
        # The newcomer is older than the other model's request: it joins the running batch.
        (["a", "b"], [("a", [1]), ("a", [2]), ("b", [3])]),
    ],
)
def test_a_batch_admits_newcomers_only_while_no_other_model_waits_longer(arrivals, admissions):
    loop = asyncio.new_event_loop()
    log: list = []
    done = threading.Event()

    def job(model: str, n: int, steps: int) -> Job:
        return Job(model=model, prompt_ids=[n], params=SimpleNamespace(max_new_tokens=steps), loop=loop)

    def on_step(model: str, step: int) -> None:
        if model == "a" and step == 1 and len(log) == 1:  # the first batch's first step: two arrive
            for n, model_name in enumerate(arrivals, start=2):
                batcher.submit(job(model_name, n, 2))
        if sum(len(p) for _, p in log) == 3:
            done.set()

    @contextmanager
    def open_batch(model, on_token):
        yield ScriptedBatch(model, on_token, log, on_step)

    batcher = Batcher(lambda *a: [], max_batch_size=4, open_batch=open_batch)
    with batcher.paused():
        batcher.start()
        batcher.submit(job("a", 1, 3))
    try:
        assert done.wait(30)
        wait_until(lambda: batcher.requests == 3)
    finally:
        batcher.stop()
        loop.close()
    assert log == admissions
    assert batcher.batches == 3 - (arrivals == ["a", "b"])
