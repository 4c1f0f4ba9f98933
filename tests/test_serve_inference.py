"""`tunewise serve`, inference half: the real server (uvicorn on a free loopback port, in a thread) driven by the
official `openai` client. Answers are checked against `LocalEngine` run directly on the same tiny model; the
batcher is paused where a test needs requests to queue up deterministically."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tunewise.project import Project  # noqa: E402
from tunewise.serve.inference import ServeSettings  # noqa: E402

BASE = "tiny:random"
CHAT = [{"role": "user", "content": "the film was good"}]


@contextmanager
def running(project: Project, settings: ServeSettings, no_auth: bool = False) -> Iterator[tuple[str, object]]:
    """A real server on 127.0.0.1:<free port>; yields (base URL, the FastAPI app)."""
    from tunewise.serve.app import bind, make_server

    sock = bind("127.0.0.1", 0)
    # The fine-tuning job worker stays off: these tests are about inference (tests/test_serve_jobs.py runs it).
    server = make_server(project, settings, sock, no_auth=no_auth, start_worker=False)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", server.config.app
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# --- fixtures: one project with a trained adapter and a key, one server for most tests -------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return Project(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def adapter_run(project, tmp_path_factory) -> Path:
    """A real LoRA run on the tiny model (a few seconds): its answers differ from the base model's."""
    from tests.test_train import write_chat
    from tunewise.train import TrainConfig, run

    data = tmp_path_factory.mktemp("data")
    config = TrainConfig(
        data=[str(write_chat(data / "train.jsonl", 32))],
        base=BASE,
        epochs=3,
        batch_size=8,
        learning_rate=2e-2,
        precision="float32",
        threads=1,
        progress=False,
    )
    result = run(config, project)
    assert result.status == "succeeded"
    return Path(result.run_dir)


@pytest.fixture(scope="module")
def key(project) -> str:
    from tunewise.serve.auth import create_key

    return create_key(project, "tests")[1]


@pytest.fixture(scope="module")
def served(project, adapter_run, key) -> Iterator[tuple[str, object]]:
    settings = ServeSettings(
        base=BASE,
        adapters={"sentiment": adapter_run.name},
        preload=True,
        max_tokens_cap=64,
        max_batch_size=8,
    )
    with running(project, settings) as pair:
        yield pair


@pytest.fixture(scope="module")
def api(served, key) -> openai.OpenAI:
    return client(served[0], key)


@pytest.fixture(scope="module")
def engine():
    """LocalEngine over the same tiny model, called directly: the reference for the server's answers."""
    from tunewise.evaluate.engine import LocalEngine
    from tunewise.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(BASE)
    model = load_model(BASE, tokenizer=tokenizer)
    model.eval()
    return LocalEngine(model, tokenizer)


def sampled(engine, chat, max_new_tokens=24, seed=7, temperature=1.0, top_p=1.0, stop=()):
    from tunewise.evaluate.engine import SamplingParams

    params = SamplingParams(max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop)
    return engine.generate([chat], params=[params])[0]


# --- the engine's per-request settings (evaluate/engine.py: SamplingParams, on_token) ----------------------


def test_per_prompt_settings_do_not_depend_on_the_batch(engine):
    from tunewise.evaluate.engine import SamplingParams

    other = [{"role": "user", "content": "something else entirely"}]
    mixed = engine.generate(
        [other, CHAT, other],
        params=[
            SamplingParams(5),
            SamplingParams(24, temperature=1.0, top_p=0.9, seed=4),
            SamplingParams(24),
        ],
    )
    alone = sampled(engine, CHAT, seed=4, top_p=0.9)
    assert mixed[1].text == alone.text and mixed[1].token_ids == alone.token_ids
    assert mixed[0].completion_tokens == 5 and mixed[0].finish_reason == "length"
    assert mixed[2].text == engine.generate([other], max_new_tokens=24)[0].text  # greedy as before


def test_on_token_streams_every_token_and_can_abort_a_row(engine):
    from tunewise.evaluate.engine import SamplingParams

    seen: dict[int, list[int]] = {0: [], 1: []}

    def on_token(i: int, token: int) -> bool:
        seen[i].append(token)
        return i == 1 and len(seen[1]) == 3  # prompt 1's client goes away after 3 tokens

    params = [SamplingParams(12, temperature=1.0, seed=1)] * 2
    out = engine.generate([CHAT, CHAT], params=params, on_token=on_token)
    assert list(out[0].token_ids) == seen[0] and out[0].completion_tokens == 12
    assert out[1].finish_reason == "abort" and len(out[1].token_ids) == 3


# --- the API -------------------------------------------------------------------------------------------------


def test_models_lists_the_base_and_the_adapter(api):
    ids = [m.id for m in api.models.list().data]
    assert ids == [BASE, "sentiment"]
    assert api.models.retrieve("sentiment").id == "sentiment"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("nope")


def test_greedy_answer_and_usage_equal_the_engine(api, engine):
    reply = api.chat.completions.create(model=BASE, messages=CHAT, temperature=0, max_tokens=16)
    direct = engine.generate([CHAT], max_new_tokens=16)[0]
    assert reply.choices[0].message.content == direct.text
    assert reply.choices[0].finish_reason == direct.finish_reason
    # Usage: the rendered prompt's tokens, and every generated token (end-of-turn included).
    tokenizer = engine.tokenizer
    rendered = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert reply.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert reply.usage.completion_tokens == len(direct.token_ids) == direct.completion_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_seeded_sampling_with_top_p_equals_the_engine(api, engine):
    reply = api.chat.completions.create(
        model=BASE, messages=CHAT, temperature=0.9, top_p=0.8, seed=11, max_tokens=24
    )
    direct = sampled(engine, CHAT, seed=11, temperature=0.9, top_p=0.8)
    assert reply.choices[0].message.content == direct.text
    assert len(direct.text) > 20  # a random model's sample: varied text, so the comparison means something


def test_stream_concatenates_to_the_non_streamed_answer(api):
    kwargs = dict(model=BASE, messages=CHAT, temperature=1.0, seed=3, max_tokens=24)
    whole = api.chat.completions.create(**kwargs)
    chunks = list(api.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert len(chunks) > 5  # streamed token by token, not in one piece


def test_stop_strings_cut_the_answer_streamed_or_not(api, engine):
    full = sampled(engine, CHAT, seed=5).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.find(stop)]
    kwargs = dict(
        model=BASE, messages=CHAT, temperature=1.0, seed=5, max_tokens=24, stop=[stop, "never-seen"]
    )
    reply = api.chat.completions.create(**kwargs)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or "" for c in api.chat.completions.create(**kwargs, stream=True)
    )
    assert streamed == expected


def test_the_adapter_answers_like_the_merged_training_run(api, project, adapter_run):
    from tunewise.evaluate.engine import LocalEngine
    from tunewise.evaluate.run import load_fine_tuned

    chat = [{"role": "user", "content": "really awful"}]
    base = api.chat.completions.create(model=BASE, messages=chat, temperature=0, max_tokens=8)
    tuned = api.chat.completions.create(model="sentiment", messages=chat, temperature=0, max_tokens=8)
    assert tuned.choices[0].message.content != base.choices[0].message.content
    model, tokenizer, _ = load_fine_tuned(project, adapter_run.name)
    merged = LocalEngine(model, tokenizer).generate([chat], max_new_tokens=8)[0]
    assert tuned.choices[0].message.content == merged.text
    # And the base is still the base after the adapter ran (adapters are switched, not merged in).
    again = api.chat.completions.create(model=BASE, messages=chat, temperature=0, max_tokens=8)
    assert again.choices[0].message.content == base.choices[0].message.content


def test_response_format_constrains_the_answer(api):
    pytest.importorskip("xgrammar")
    reply = api.chat.completions.create(
        model=BASE,
        messages=CHAT,
        max_tokens=16,
        seed=0,
        response_format={"type": "regex", "pattern": "(positive|negative)"},
    )
    assert reply.choices[0].message.content in ("positive", "negative")
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=BASE, messages=CHAT, response_format={"type": "xml"})
    assert exc.value.body["param"] == "response_format"


def test_fine_tuning_job_models_are_listed_and_served(api, served, adapter_run, monkeypatch):
    """An `ft:` model from `serve.jobs.fine_tuned_models` (the jobs half's registry) is listed and answers as
    the run's adapter; one trained on another base is not listed."""
    import tunewise.serve.jobs as jobs

    name = "ft:tiny:random:unit:abcd1234"
    made = [
        {
            "id": name,
            "created": 1700000000,
            "owned_by": "tunewise",
            "run_dir": str(adapter_run),
            "base": BASE,
        },
        {
            "id": "ft:other:x:1",
            "created": 1,
            "owned_by": "tunewise",
            "run_dir": str(adapter_run),
            "base": "other",
        },
    ]
    owner = served[1].state.keys.verify(api.api_key)["id"]  # a job's model is its key's
    for m in made:
        m["api_key_id"] = owner
    monkeypatch.setattr(jobs, "fine_tuned_models", lambda project: made)
    assert [m.id for m in api.models.list().data] == [BASE, "sentiment", name]
    chat = [{"role": "user", "content": "quite dull"}]
    ft = api.chat.completions.create(model=name, messages=chat, temperature=0, max_tokens=8)
    explicit = api.chat.completions.create(model="sentiment", messages=chat, temperature=0, max_tokens=8)
    assert ft.choices[0].message.content == explicit.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="ft:other:x:1", messages=chat)


def test_concurrent_requests_are_decoded_in_one_batch(api, served):
    """Six requests for two models, queued while the worker is held, then released: one pass of the worker (one
    engine call per model) serves them all, and each answer equals the same request sent alone."""
    batcher = served[1].state.inference.batcher
    prompts = [[{"role": "user", "content": f"review number {i} was {w}"}] for i, w in enumerate("abcdef")]
    models = [BASE, "sentiment"] * 3
    alone = [
        api.chat.completions.create(model=m, messages=p, temperature=0, max_tokens=12)
        .choices[0]
        .message.content
        for m, p in zip(models, prompts)
    ]
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        reply = api.chat.completions.create(
            model=models[i], messages=prompts[i], temperature=0, max_tokens=12
        )
        answers[i] = reply.choices[0].message.content

    before = batcher.batches
    with batcher.paused():
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        wait_until(lambda: batcher.waiting == 6)
    for t in threads:
        t.join(60)
    assert [answers[i] for i in range(6)] == alone
    assert batcher.batches - before == 2  # one batch per model, not six
    assert batcher.largest_batch >= 3


def test_a_client_that_disconnects_mid_stream_does_not_break_its_batch(api, served):
    batcher = served[1].state.inference.batcher
    result: dict[str, object] = {}

    def other() -> None:
        result["reply"] = api.chat.completions.create(
            model=BASE, messages=CHAT, temperature=1, seed=1, max_tokens=48
        )

    with batcher.paused():
        stream = api.chat.completions.create(
            model=BASE, messages=CHAT, temperature=1, seed=2, max_tokens=48, stream=True
        )
        thread = threading.Thread(target=other)
        thread.start()
        wait_until(lambda: batcher.waiting == 2)
    chunks = iter(stream)
    next(chunks), next(chunks)
    stream.close()  # the client goes away after two chunks
    thread.join(60)
    assert result["reply"].usage.completion_tokens == 48 or result["reply"].choices[0].finish_reason == "stop"
    assert (
        api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=4).choices[0].message.content
        is not None
    )


# --- errors ----------------------------------------------------------------------------------------------------


def test_wrong_missing_or_revoked_key_is_401(served, project):
    from tunewise.serve.auth import create_key, list_keys, revoke_key

    with pytest.raises(openai.AuthenticationError) as wrong:
        client(served[0], "tw-not-a-real-key-at-all").models.list()
    assert wrong.value.body["code"] == "invalid_api_key"
    missing = httpx.get(served[0] + "/models")
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
    row, revoked = create_key(project, "short-lived")
    assert client(served[0], revoked).models.list().data
    assert next(k for k in list_keys(project) if k["id"] == row["id"])["last_used_at"] is not None
    revoke_key(project, str(row["id"]))
    with pytest.raises(openai.AuthenticationError):
        client(served[0], revoked).models.list()


def test_unknown_model_is_404(api):
    with pytest.raises(openai.NotFoundError) as exc:
        api.chat.completions.create(model="ft:tiny:random:none:00000000", messages=CHAT)
    assert exc.value.body["code"] == "model_not_found" and exc.value.body["param"] == "model"


def test_max_tokens_over_the_cap_and_unsupported_fields_are_400(api):
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=65)
    assert exc.value.body["param"] == "max_tokens" and "cap of 64" in exc.value.body["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=BASE, messages=CHAT, n=2)
    assert exc.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=BASE, messages=CHAT, temperature=3)
    assert exc.value.body["param"] == "temperature"


def test_malformed_and_oversized_bodies_answer_in_openai_shape(served, key):
    url, headers = served[0] + "/chat/completions", {"Authorization": f"Bearer {key}"}
    bad = httpx.post(url, content=b'{"model": ', headers={**headers, "Content-Type": "application/json"})
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "param", "code"}
    assert "not valid JSON" in bad.json()["error"]["message"]
    big = httpx.post(
        url, json={"model": BASE, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}, headers=headers
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    unknown_url = httpx.get(served[0] + "/nothing-here", headers=headers)
    assert unknown_url.status_code == 404 and "error" in unknown_url.json()


def test_a_failing_batch_is_a_500_and_the_server_goes_on(api, served, monkeypatch):
    pool = served[1].state.inference.pool

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pool, "engine_for", broken)
    with pytest.raises(openai.InternalServerError) as exc:
        api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=4)
    assert exc.value.status_code == 500 and exc.value.body["type"] == "server_error"
    monkeypatch.undo()
    assert api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=4).usage.completion_tokens >= 1


def test_non_streamed_answers_get_the_json_loop_guard_the_evaluation_used(api, served, monkeypatch):
    from tests.test_loopguard import scripted_engine
    from tunewise.serve.inference import encode_chat

    inference = served[1].state.inference
    pool = inference.pool
    prompt = encode_chat(pool.tokenizer, CHAT)
    # The scripted model repeats `{"a":1},` forever after this prompt, as a small model's greedy decoding can.
    looping, _ = scripted_engine(pool.engine_for(pool.resolve(BASE))[0].model, pool.tokenizer, {len(prompt)})
    monkeypatch.setattr(pool, "engine_for", lambda served: (looping, contextlib.nullcontext()))

    guarded = api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=40, temperature=0)
    assert guarded.choices[0].message.content == '[{"a":1}]'
    assert guarded.choices[0].finish_reason == "stop"

    # Streamed tokens cannot be taken back: the stream shows the loop, cut at max_tokens.
    chunks = api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=40, temperature=0, stream=True)
    pieces = list(chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    assert streamed.startswith('[{"a":1},{"a":1},') and pieces[-1].choices[0].finish_reason == "length"

    monkeypatch.setattr(inference.settings, "json_guard", False)
    free = api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=40, temperature=0)
    assert free.choices[0].message.content.startswith('[{"a":1},{"a":1},')
    assert free.choices[0].finish_reason == "length"


# --- a small server: no auth, queue of one, short timeout ---------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Iterator[tuple[str, object]]:
    settings = ServeSettings(base=BASE, preload=True, queue_size=1, max_batch_size=1, timeout_s=1.5)
    with running(Project(tmp_path_factory.mktemp("small")), settings, no_auth=True) as pair:
        yield pair


def test_no_auth_needs_no_key(small):
    assert httpx.get(small[0] + "/models").json()["data"][0]["id"] == BASE
    reply = client(small[0], "anything").chat.completions.create(model=BASE, messages=CHAT, max_tokens=4)
    assert reply.usage.completion_tokens >= 1


def test_a_full_queue_is_429_with_retry_after(small):
    api = client(small[0], "x")
    batcher = small[1].state.inference.batcher
    first: dict[str, object] = {}
    with batcher.paused():
        thread = threading.Thread(
            target=lambda: first.update(
                reply=api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=4)
            )
        )
        thread.start()
        wait_until(lambda: batcher.waiting == 1)
        with pytest.raises(openai.RateLimitError) as exc:
            api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=4)
    assert int(exc.value.response.headers["retry-after"]) >= 1
    assert exc.value.body["type"] == "rate_limit_error"
    thread.join(30)
    assert first["reply"].usage.completion_tokens >= 1  # the queued request was not lost


def test_a_request_over_the_timeout_is_504_and_is_dropped(small):
    api = client(small[0], "x")
    batcher = small[1].state.inference.batcher
    with batcher.paused():
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as exc:
            api.chat.completions.create(model=BASE, messages=CHAT, max_tokens=4)
        assert 1.4 < time.monotonic() - started < 10
    assert exc.value.status_code == 504 and exc.value.body["code"] == "timeout"
    before = batcher.requests
    wait_until(lambda: batcher.waiting == 0)
    time.sleep(0.1)
    assert batcher.requests == before  # the timed-out request was skipped, not decoded for nobody


# --- the CLI -------------------------------------------------------------------------------------------------


def test_cli_refuses_no_auth_off_loopback(run_cli, tmp_path):
    code, out, err = run_cli("serve", "--host", "0.0.0.0", "--no-auth", cwd=tmp_path)
    assert code == 1 and "--no-auth is allowed only on a loopback host" in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


def test_cli_rejects_a_port_out_of_range_and_names_the_option(run_cli, tmp_path):
    code, _, err = run_cli("serve", "--port", "99999", cwd=tmp_path)
    assert code == 2 and "--port" in err and "65535" in err and "Traceback" not in err


def test_cli_says_whether_the_host_or_the_port_is_wrong(run_cli, tmp_path):
    import socket

    # 192.0.2.1 is reserved for documentation (RFC 5737): no machine has it, and no DNS lookup is involved.
    code, _, err = run_cli("serve", "--host", "192.0.2.1", "--port", "0", cwd=tmp_path)
    assert code == 1 and "cannot listen on 192.0.2.1:0" in err and "check --host" in err
    with socket.socket() as taken:  # a port another socket listens on: SO_REUSEADDR does not let us share it
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = run_cli("serve", "--port", str(port), cwd=tmp_path)
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "pick another --port" in err
    assert "Traceback" not in err


def test_cli_keys_create_list_revoke(run_cli, tmp_path, small):
    code, out, _ = run_cli("keys", "create", "--name", "ci", cwd=tmp_path)
    assert code == 0
    key = out.strip()
    assert key.startswith("tw-") and len(key) > 40
    code, out, _ = run_cli("keys", "list", "--json", cwd=tmp_path)
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["ci"] and key.startswith(rows[0]["prefix"])
    assert "hash" not in rows[0] and key not in out  # only the hash is stored, and never shown
    stored = (tmp_path / ".tunewise" / "registry.sqlite3").read_bytes()
    assert key.encode() not in stored
    code, out, _ = run_cli("keys", "revoke", str(rows[0]["id"]), cwd=tmp_path)
    assert code == 0 and "revoked" in out
    code, out, _ = run_cli("keys", "list", "--json", cwd=tmp_path)
    assert json.loads(out)[0]["revoked_at"] is not None
