"""The pairwise judge: asked in both orders, a win only when both agree; a scripted judge with a position bias,
an endpoint judge on a scripted server, and judges that fail or answer garbage."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.review_fixtures import SECRET_ARMS, eval_project
from tunewise.errors import TunewiseError
from tunewise.evaluate.engine import Generation
from tunewise.evaluate.judge import combine, parse_choice, run_judge
from tunewise.review.results import judge_comparison


class ScriptedJudge:
    """Prefers an answer ending in a 'good' example number; otherwise picks whichever answer is shown first
    (a pure position bias), and answers garbage for example 5."""

    def __init__(self, good_a: set[int], good_b: set[int]):
        self.good = {f"ANSWER-A-{i}" for i in good_a} | {f"ANSWER-B-{i}" for i in good_b}
        self.asked = 0

    def _choose(self, text: str) -> str:
        first = text.split("Answer A:\n")[1].split("\n")[0]
        second = text.split("Answer B:\n")[1].split("\n")[0]
        if first.endswith("-5"):
            return "I would rather not say"
        if first in self.good and second not in self.good:
            return "A"
        if second in self.good and first not in self.good:
            return "B."
        return "A"  # position bias

    def generate(self, prompts, max_new_tokens=8, temperature=0.0):
        self.asked += len(prompts)
        return [Generation(self._choose(p[0]["content"]), (), 100, 1, 5.0, "stop") for p in prompts]


def _rows(project):
    registry = project.registry()
    try:
        return [dict(r) for r in registry.conn.execute("SELECT * FROM judgements ORDER BY example_id")]
    finally:
        registry.close()


def test_a_win_counts_only_when_both_orders_agree(tmp_path):
    project, run_id = eval_project(tmp_path, n=6)
    judge = ScriptedJudge(good_a={0, 1, 2}, good_b={3})
    res = run_judge(project, run_id, SECRET_ARMS, judge, "scripted", "reply to customers")
    outcomes = {r["example_id"]: r["outcome"] for r in _rows(project)}
    # ex-4: neither is good, the judge picks whichever is first in both orders: a tie, not a win for a.
    assert outcomes == {"ex-0": "a", "ex-1": "a", "ex-2": "a", "ex-3": "b", "ex-4": "tie", "ex-5": None}
    assert judge.asked == 12  # both orders of 6 pairs
    assert (
        res["preference"]["wins"] == 3 and res["preference"]["losses"] == 1 and res["preference"]["ties"] == 1
    )
    assert res["unusable"] == 1
    # The judge's cost is recorded with the evaluation's model calls: 12 calls of 100 prompt tokens.
    registry = project.registry()
    try:
        calls = registry.conn.execute(
            "SELECT count(*), sum(prompt_tokens) FROM model_calls WHERE run_id = ? AND arm = 'judge:scripted'",
            (run_id,),
        ).fetchone()
    finally:
        registry.close()
    assert tuple(calls) == (12, 1200)
    # A second run asks only the unjudged pair again: nothing is counted twice.
    again = ScriptedJudge(good_a={0, 1, 2}, good_b={3})
    with pytest.raises(TunewiseError, match="no usable answer on any of 1 pairs"):  # ex-5 is garbage again
        run_judge(project, run_id, SECRET_ARMS, again, "scripted", "reply to customers")
    assert again.asked == 2
    assert len(_rows(project)) == 6
    # Seen from the other arm's side, the outcomes flip.
    flipped = judge_comparison(project, run_id, SECRET_ARMS[1], SECRET_ARMS[0])
    assert (flipped["preference"]["wins"], flipped["preference"]["losses"]) == (1, 3)


def test_a_judge_that_only_answers_garbage_is_a_clear_error(tmp_path):
    project, run_id = eval_project(tmp_path, n=2)

    class Garbage:
        def generate(self, prompts, max_new_tokens=8, temperature=0.0):
            return [Generation("Both answers have merit.", (), 10, 5, 1.0, "stop") for _ in prompts]

    with pytest.raises(TunewiseError, match="no usable answer on any of 2 pairs"):
        run_judge(project, run_id, SECRET_ARMS, Garbage(), "garbage", "t")
    assert [r["outcome"] for r in _rows(project)] == [None, None]  # kept as unjudged, asked again next time


def test_parse_and_combine():
    assert [parse_choice(t) for t in ("A", "b", "TIE.", "A and B", "neither")] == [
        "A",
        "B",
        "tie",
        None,
        None,
    ]
    assert [combine(x, y) for x, y in (("A", "B"), ("B", "A"), ("B", "B"), ("A", None))] == [
        "a",
        "b",
        "tie",
        None,
    ]


# --- an endpoint judge against a scripted OpenAI-compatible server ---------------------------------------


def _server(answer):
    """A chat completions server on 127.0.0.1:<free port> answering with `answer(prompt) -> (status, body)`."""
    import uvicorn

    from tunewise.serve.app import bind

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        status, text = answer(body["messages"][0]["content"])
        if status != 200:
            return JSONResponse(
                {"error": {"message": text, "type": "invalid_request_error"}}, status_code=status
            )
        return {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51},
        }  # fmt: skip

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the scripted server did not start"
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def _engine(url):
    from tunewise.evaluate.endpoint import EndpointConfig, EndpointEngine

    return EndpointEngine(EndpointConfig(name="judge-api", base_url=url, model="m", max_retries=0))


def test_an_endpoint_judge_and_one_that_refuses(tmp_path):
    pytest.importorskip("openai")
    project, run_id = eval_project(tmp_path, n=4)

    def prefers_b(text):
        first = text.split("Answer A:\n")[1].split("\n")[0]
        return 200, "A" if first.startswith("ANSWER-B") else "B"

    server, thread, url = _server(prefers_b)
    try:
        res = run_judge(project, run_id, SECRET_ARMS, _engine(url), "judge-api:m", "t")
    finally:
        server.should_exit = True
        thread.join(10)
    assert (res["preference"]["wins"], res["preference"]["losses"]) == (0, 4)
    assert res["prompt_tokens"] == 4 * 2 * 50

    project2, run2 = eval_project(tmp_path / "second", n=3)
    server, thread, url = _server(lambda text: (400, "model not allowed"))
    try:
        with pytest.raises(TunewiseError, match="judge-api.*refused the request"):
            run_judge(project2, run2, SECRET_ARMS, _engine(url), "judge-api:m", "t")
    finally:
        server.should_exit = True
        thread.join(10)
    assert _rows(project2) == []  # nothing half-recorded
