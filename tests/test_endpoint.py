"""The endpoint arm: an OpenAI-compatible API evaluated like any other arm, through the official `openai` client,
against a real HTTP server on a loopback port.

The server here is a small stand-in with known behaviour (it answers sentiment by a keyword, reports usage,
and fails on demand), so the tests can assert exact accuracy, token counts, retries and concurrency.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402

from tests.test_evaluate_run import example  # noqa: E402
from tunewise.economics.plan import ArmTokens, CostRequest, build_options  # noqa: E402
from tunewise.economics.pricing import load_catalog  # noqa: E402
from tunewise.errors import TunewiseError  # noqa: E402
from tunewise.evaluate.endpoint import EndpointConfig, EndpointEngine  # noqa: E402
from tunewise.evaluate.run import run_evaluation  # noqa: E402
from tunewise.project import Project  # noqa: E402
from tunewise.scaffold import scaffold  # noqa: E402
from tunewise.spec import parse_spec  # noqa: E402

KEY = "sk-test-secret"


class StubAPI:
    """A chat completions server with known answers: 'positive' when the last user message says 'great'."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.02):
        self.fail_first = fail_first  # each distinct prompt fails this many times (503) before it succeeds
        self.delay_s = delay_s
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests: list[dict] = []
        self.app = FastAPI()
        self.app.post("/v1/chat/completions")(self.chat)

    async def chat(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        body = await request.json()
        if body["model"] != "stub-model":
            return _error(404, f"The model `{body['model']}` does not exist", "model_not_found")
        self.requests.append(body)
        question = body["messages"][-1]["content"]
        self.attempts[question] = self.attempts.get(question, 0) + 1
        if "doomed" in question or self.attempts[question] <= self.fail_first:
            # retry-after-ms keeps the client's backoff short in tests; real servers send Retry-After.
            return _error(503, "overloaded", None, headers={"retry-after-ms": "5"})
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(self.delay_s)
        self.in_flight -= 1
        answer = "positive" if "great" in question else "negative"
        words = sum(len(m["content"].split()) for m in body["messages"])
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": words, "completion_tokens": 1, "total_tokens": words + 1},
            }
        )


def _error(status: int, message: str, code: str | None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "error", "param": None, "code": code}},
        status_code=status,
        headers=headers,
    )


@pytest.fixture
def serve():
    """Start an app on a free loopback port (uvicorn, port 0); yields a function app -> base URL."""
    import uvicorn

    servers = []

    def start(app: FastAPI) -> str:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the test server did not start")
            thread.join(0.01)
        servers.append((server, thread))
        port = server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(5)


TRAIN = [example(f"great film {i}", "positive") for i in range(4)] + [
    example(f"awful plot {i}", "negative") for i in range(4)
]
HELD = [
    example("a great movie", "positive"),
    example("an awful movie", "negative"),
    example("great acting", "positive"),
    example("great idea, awful execution", "negative"),  # the stub gets this one wrong
]


def spec_for(url: str, **endpoint: object) -> str:
    fields = {"name": "stub", "base_url": url, "model": "stub-model", "api_key_env": "STUB_KEY"} | endpoint
    return f"""\
task: {{name: sentiment, target: "Given a short review, answer with its sentiment label."}}
contract: {{type: label, labels: [positive, negative]}}
system_prompt: Classify the review.
data: {{train: data/train.jsonl}}
model: {{base: "tiny:random"}}
evaluation:
  consistency_samples: 2
  max_new_tokens: 4
  few_shot_k: 2
  endpoints: [{json.dumps(fields)}]
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Project:
    monkeypatch.setenv("STUB_KEY", KEY)
    return scaffold(tmp_path / "p")


def test_endpoint_arm_is_scored_like_any_arm(serve, project):
    stub = StubAPI()
    url = serve(stub.app)
    spec = parse_spec(spec_for(url, prompt="few-shot", pricing="acme/gpt-4o"))
    result = run_evaluation(spec, project, TRAIN, HELD, ["stub"])

    (arm,) = result.summary["arms"]
    assert arm["name"] == "stub" and arm["kind"] == "endpoint"
    assert arm["model"] == "stub-model" and arm["pricing"] == "acme/gpt-4o"
    assert arm["accuracy"]["value"] == pytest.approx(3 / 4)  # the stub misreads the mixed review
    assert arm["format_compliance"]["value"] == 1.0
    # Tokens are the API's usage fields, not our tokenizer's count.
    greedy = [r for r in stub.requests if r["temperature"] == 0]
    assert len(greedy) == len(HELD)
    usage = {
        r["messages"][-1]["content"]: sum(len(m["content"].split()) for m in r["messages"]) for r in greedy
    }
    assert arm["prompt_tokens"] == pytest.approx(sum(usage.values()) / len(usage))
    assert arm["completion_tokens"] == 1
    # Prompted like the few-shot arm: the system prompt with the contract, then the balanced examples.
    first = greedy[0]["messages"]
    assert first[0]["role"] == "system" and "positive, negative" in first[0]["content"]
    assert sum(m["role"] == "assistant" for m in first) == 2
    # Greedy answers at temperature 0; consistency samples at the spec's temperature, 2 per example.
    assert sum(r["temperature"] == 0.7 for r in stub.requests) == 2 * len(HELD)
    assert arm["consistency"]["value"] == 1.0
    registry = project.registry()
    calls = registry.conn.execute("SELECT COUNT(*) FROM model_calls WHERE arm='stub'").fetchone()[0]
    registry.close()
    assert calls == 3 * len(HELD)


def test_requests_run_concurrently_up_to_the_limit(serve, monkeypatch):
    monkeypatch.setenv("STUB_KEY", KEY)
    stub = StubAPI(delay_s=0.05)
    url = serve(stub.app)
    engine = EndpointEngine(EndpointConfig("stub", url, "stub-model", api_key_env="STUB_KEY", concurrency=3))
    prompts = [[{"role": "user", "content": f"great take {i}"}] for i in range(12)]
    answers = engine.generate(prompts, max_new_tokens=4)
    assert [a.text for a in answers] == ["positive"] * 12  # in the order asked, whatever order they finished
    assert stub.max_in_flight == 3  # concurrent, and never more than asked


def test_transient_failures_are_retried(serve, monkeypatch):
    monkeypatch.setenv("STUB_KEY", KEY)
    stub = StubAPI(fail_first=2)
    url = serve(stub.app)
    engine = EndpointEngine(EndpointConfig("stub", url, "stub-model", api_key_env="STUB_KEY", max_retries=3))
    prompts = [[{"role": "user", "content": f"great {i}"}] for i in range(4)]
    answers = engine.generate(prompts, max_new_tokens=4)
    assert [a.text for a in answers] == ["positive"] * 4
    assert all(a.finish_reason == "stop" for a in answers)
    assert engine.retries == 2 * 4 and engine.errors == 0
    assert all(n == 3 for n in stub.attempts.values())


def test_a_request_failing_after_its_retries_counts_as_wrong_not_lost(serve, project):
    stub = StubAPI()
    url = serve(stub.app)
    spec = parse_spec(spec_for(url, max_retries=1))
    held = [*HELD[:2], example("doomed great review", "positive")]
    result = run_evaluation(spec, project, TRAIN, held, ["stub"])
    by_input = {r["input"]: r for r in result.records}
    failed = by_input["doomed great review"]
    assert failed["output"] == "" and failed["finish_reason"] == "error"
    assert stub.attempts["doomed great review"] == 2 * (1 + 2)  # greedy + 2 samples, each tried twice
    (arm,) = result.summary["arms"]
    assert arm["accuracy"]["value"] == pytest.approx(2 / 3)
    assert arm["failed_requests"] == 3


def test_wrong_key_stops_the_arm_with_a_clear_error(serve, project, monkeypatch):
    stub = StubAPI()
    url = serve(stub.app)
    monkeypatch.setenv("STUB_KEY", "sk-wrong")
    spec = parse_spec(spec_for(url))
    with pytest.raises(TunewiseError, match=r"rejected the API key from \$STUB_KEY"):
        run_evaluation(spec, project, TRAIN, HELD, ["stub"])
    registry = project.registry()
    status = registry.conn.execute("SELECT status FROM runs WHERE kind='eval'").fetchone()[0]
    registry.close()
    assert status == "failed"


def test_missing_key_variable_and_unknown_model(serve, project, monkeypatch):
    stub = StubAPI()
    url = serve(stub.app)
    monkeypatch.delenv("STUB_KEY")
    with pytest.raises(TunewiseError, match="STUB_KEY is not set"):
        run_evaluation(parse_spec(spec_for(url)), project, TRAIN, HELD, ["stub"])
    monkeypatch.setenv("STUB_KEY", KEY)
    with pytest.raises(TunewiseError, match="does not know model 'gpt-9'"):
        run_evaluation(parse_spec(spec_for(url, model="gpt-9")), project, TRAIN, HELD, ["stub"])
    assert stub.requests == []


PRICES = """\
entries:
  - id: acme/gpt-4o
    platform: acme
    model_class: gpt-4o
    description: prompted GPT-4o at our negotiated rate
    inference_input_per_million_tokens: 2.5
    inference_output_per_million_tokens: 10.0
  - id: together/lora-up-to-16b
    inference_input_per_million_tokens: 0.2
    inference_output_per_million_tokens: 0.2
"""


def test_endpoint_arm_is_priced_by_its_own_catalog_entry(tmp_path):
    (tmp_path / "prices.yaml").write_text(PRICES)
    catalog = load_catalog(tmp_path / "prices.yaml")
    arm = ArmTokens("gpt-4o", "endpoint", 800.0, 20.0, pricing="acme/gpt-4o")
    tuned = ArmTokens("fine-tuned", "fine-tuned", 80.0, 20.0)
    request = CostRequest(queries_per_day=1000, platforms=["together"], arms=[arm, tuned])
    options, skipped, _ = build_options(request, catalog)
    (endpoint,) = [o for o in options if o.arm == "gpt-4o"]
    assert endpoint.per_query == pytest.approx((800 * 2.5 + 20 * 10.0) / 1e6)  # $0.0022
    assert endpoint.fixed_per_month == 0  # no hosting, no training: the provider's per-token price is all
    assert [o.arm for o in options].count("fine-tuned") == 1  # the open model is still priced per platform

    unpriced = CostRequest(
        queries_per_day=1000,
        platforms=["together"],
        arms=[ArmTokens("gpt-4o", "endpoint", 800.0, 20.0), tuned],
    )
    options, skipped, _ = build_options(unpriced, catalog)
    assert not any(o.arm == "gpt-4o" for o in options)
    assert any("gpt-4o: an endpoint needs a price" in s for s in skipped)

    # The built-in catalog knows no per-token price for GPT-4o (the guide gives none): skipped, with the reason.
    guessed = ArmTokens("gpt-4o", "endpoint", 800.0, 20.0, pricing="azure-openai/gpt-4o")
    with pytest.raises(
        TunewiseError, match="gpt-4o @ azure-openai/gpt-4o: .*inference_input_per_million_tokens is unknown"
    ):
        build_options(CostRequest(queries_per_day=1000, platforms=[], arms=[guessed]), load_catalog(None))


def test_eval_cli_runs_the_specs_endpoints_by_default(serve, project, run_cli):
    stub = StubAPI()
    url = serve(stub.app)
    (project.root / "tunewise.yaml").write_text(
        spec_for(url)
        .replace("data: {train: data/train.jsonl}", "data: {train: data/train.jsonl, eval: data/eval.jsonl}")
        .replace('model: {base: "tiny:random"}', 'model: {base: "tiny:random"}\n')
        .replace("  consistency_samples: 2", "  consistency_samples: 1\n  arms: []")
    )
    data = project.root / "data"
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in TRAIN))
    (data / "eval.jsonl").write_text("".join(json.dumps(e) + "\n" for e in HELD))
    code, out, err = run_cli("eval", "--json", cwd=project.root)
    assert code == 0, err
    summary = json.loads(out)
    assert [a["name"] for a in summary["arms"]] == ["stub"]
    assert summary["arms"][0]["accuracy"]["value"] == pytest.approx(3 / 4)


def test_an_endpoint_served_by_tunewise_serve_answers_like_the_local_arm(tmp_path, monkeypatch):
    """The endpoint arm against the real `tunewise serve` on the same tiny model: every greedy answer and every
    prompt token count equals the local zero-shot arm's, so a served model is evaluated exactly like a local one."""
    from tests.test_serve_inference import running
    from tunewise.serve.inference import ServeSettings

    project = scaffold(tmp_path / "served")
    settings = ServeSettings(base="tiny:random", preload=True, max_tokens_cap=64, max_batch_size=8)
    with running(project, settings, no_auth=True) as (url, _app):
        spec = parse_spec(
            spec_for(url, model="tiny:random", api_key_env=None, concurrency=4).replace(
                "consistency_samples: 2", "consistency_samples: 1"
            )
        )
        result = run_evaluation(spec, project, TRAIN, HELD, ["zero-shot", "stub"])
    by_arm: dict[str, list[dict]] = {}
    for record in result.records:
        by_arm.setdefault(record["arm"], []).append(record)
    local, served = by_arm["zero-shot"], by_arm["stub"]
    assert [r["output"] for r in served] == [r["output"] for r in local]
    assert [r["prompt_tokens"] for r in served] == [r["prompt_tokens"] for r in local]
    assert [r["completion_tokens"] for r in served] == [r["completion_tokens"] for r in local]
