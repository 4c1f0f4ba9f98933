"""`tunewise serve --engine vllm`: the command that starts vLLM, the error where vLLM is not installed, and
tunewise's API in front of an OpenAI-compatible upstream (a fake vLLM on a loopback port): keys and model
visibility checked here, requests forwarded as they came, streams relayed, adapters loaded on first use."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from tunewise.serve.vllm import max_lora_rank, vllm_command  # noqa: E402


def _adapter(folder: Path, rank: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def test_command_serves_the_base_and_each_adapter_as_a_lora_module(tmp_path):
    adapters = {"support": _adapter(tmp_path / "a", 4), "ft:tiny:x": _adapter(tmp_path / "b", 24)}
    argv = vllm_command("/models/base", "embedded:smollm2-135m-instruct", adapters, 8123, python="py")
    assert argv[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert (
        value("--model") == "/models/base"
        and value("--served-model-name") == "embedded:smollm2-135m-instruct"
    )
    assert value("--port") == "8123" and "--enable-lora" in argv and value("--max-loras") == "4"
    assert value("--max-lora-rank") == "32"  # rank 24 rounds up to vLLM's 32
    assert value("--host") == "127.0.0.1"  # vLLM is reachable only through tunewise
    assert argv[argv.index("--lora-modules") + 1 :] == [
        f"support={tmp_path / 'a'}",
        f"ft:tiny:x={tmp_path / 'b'}",
    ]
    assert max_lora_rank([300]) == 320 and max_lora_rank([1]) == 8


def test_without_vllm_the_engine_is_a_clear_error(tmp_path, run_cli):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    code, out, err = run_cli("serve", "--engine", "vllm", "--no-auth", "--port", "0", cwd=tmp_path)
    assert code == 1 and "Traceback" not in err
    assert "error: --engine vllm needs the vllm package, which is not installed" in err
    assert "pip install vllm" in err
    code, _, err = run_cli("serve", "--engine", "tgi", "--no-auth", cwd=tmp_path)
    assert code == 1 and "unknown engine 'tgi'" in err


class FakeVLLM(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions (JSON, or an event stream) and /v1/load_lora_adapter, recording requests."""

    seen: list[tuple[str, dict]] = []

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, body))
        if self.path == "/v1/load_lora_adapter":
            self._send(200, "text/plain", b"Success")
        elif body.get("stream"):
            chunk = {
                "object": "chat.completion.chunk",
                "model": body["model"],
                "choices": [{"delta": {"content": "hi"}}],
            }
            self._send(200, "text/event-stream", f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        else:
            answer = {"object": "chat.completion", "model": body["model"],
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "from vllm"}}]}  # fmt: skip
            self._send(200, "application/json", json.dumps(answer).encode())

    def _send(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def upstream():
    FakeVLLM.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVLLM)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeVLLM.seen
    server.shutdown()
    server.server_close()


def test_tunewise_checks_keys_and_models_then_forwards_to_vllm(tmp_path, upstream):
    from fastapi.testclient import TestClient

    from tunewise.project import Project
    from tunewise.serve.app import create_app
    from tunewise.serve.auth import create_key
    from tunewise.serve.inference import ServeSettings
    from tunewise.serve.vllm import Upstream

    url, seen = upstream
    project = Project(tmp_path)
    adapter = _adapter(tmp_path / "mine", 8)
    settings = ServeSettings(base="tiny:random", adapters={"mine": str(adapter)}, preload=False)
    app = create_app(project, settings=settings, start_worker=False)
    app.state.upstream = Upstream(url)  # vLLM started without the adapter: it is loaded on first use
    _, key = create_key(project, "test")
    auth = {"Authorization": f"Bearer {key}"}
    ask = {
        "model": "tiny:random",
        "messages": [{"role": "user", "content": "hello"}],
        "n": 2,
        "max_tokens": 5,
    }
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", json=ask).status_code == 401
        missing = client.post("/v1/chat/completions", json={**ask, "model": "nope"}, headers=auth)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        assert seen == []  # nothing unauthenticated or unknown reached the engine

        answer = client.post("/v1/chat/completions", json=ask, headers=auth)
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "from vllm"
        path, body = seen[-1]
        # Forwarded as the client sent it: fields vLLM honours (n) pass through.
        assert path == "/v1/chat/completions"
        assert body == {"model": "tiny:random", "messages": [{"role": "user", "content": "hello"}], "n": 2,
                        "max_tokens": 5}  # fmt: skip

        for _ in range(2):
            assert (
                client.post("/v1/chat/completions", json={**ask, "model": "mine"}, headers=auth).status_code
                == 200
            )
        loads = [b for p, b in seen if p == "/v1/load_lora_adapter"]
        assert loads == [{"lora_name": "mine", "lora_path": str(adapter)}]  # once, before its first request
        assert seen[-1][1]["model"] == "mine"

        with client.stream(
            "POST", "/v1/chat/completions", json={**ask, "stream": True}, headers=auth
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            text = "".join(stream.iter_text())
        assert text.endswith("data: [DONE]\n\n") and '"content": "hi"' in text


def test_an_engine_that_does_not_answer_is_a_502(tmp_path):
    import socket

    from fastapi.testclient import TestClient

    from tunewise.project import Project
    from tunewise.serve.app import create_app
    from tunewise.serve.inference import ServeSettings
    from tunewise.serve.vllm import Upstream

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Project(tmp_path), no_auth=True, settings=ServeSettings(base="tiny:random", preload=False),
                     start_worker=False)  # fmt: skip
    app.state.upstream = Upstream(f"http://127.0.0.1:{port}")
    ask = {"model": "tiny:random", "messages": [{"role": "user", "content": "hello"}]}
    with TestClient(app) as client:
        answer = client.post("/v1/chat/completions", json=ask)
    assert answer.status_code == 502
    assert answer.json()["error"]["message"] == "the serving engine (vLLM) is not answering: ConnectError"
