"""Base-model loading: sources, safetensors only, offline Hub ids, tiny models, the precision rule."""

from __future__ import annotations

import pytest

from tunewise.errors import TunewiseError


@pytest.fixture(scope="module")
def tokenizer():
    from tunewise.models.loading import load_tokenizer

    return load_tokenizer("embedded:smollm2-135m-instruct")


def test_tiny_model_uses_the_real_vocabulary(tokenizer):
    from tunewise.models.loading import tiny_model

    model = tiny_model(tokenizer)
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_local_folder_round_trip(tmp_path, tokenizer):
    import torch

    from tunewise.models.loading import load_model, load_tokenizer, tiny_model

    model = tiny_model(tokenizer, seed=1)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert load_tokenizer(str(tmp_path)).eos_token == "<|im_end|>"


def test_folder_without_safetensors_is_refused(tmp_path):
    from tunewise.models.loading import load_model

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(TunewiseError, match="safetensors"):
        load_model(str(tmp_path))


def test_missing_folder_and_unknown_embedded_name():
    from tunewise.models.loading import resolve_base

    with pytest.raises(TunewiseError, match="does not exist"):
        resolve_base("./no/such/model")
    with pytest.raises(TunewiseError, match="unknown embedded model"):
        resolve_base("embedded:gpt-5")


def test_offline_hub_id_says_how_to_provide_the_model(monkeypatch):
    from tunewise.models.loading import load_model, load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for loader in (load_tokenizer, load_model):
        with pytest.raises(TunewiseError) as info:
            loader("some-org/not-cached-model-xyz")
        message = str(info.value)
        assert "not in the local Hugging Face cache" in message
        assert "--local-dir" in message and "model.base" in message


def test_unreachable_hub_fails_at_once_with_the_reason(monkeypatch):
    """No route to the Hub: the error comes from one connection attempt, not huggingface_hub's five retries."""
    import socket

    from huggingface_hub import constants

    from tunewise.models import loading

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
    port = closed.getsockname()[1]
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    try:
        assert (
            loading.hub_unreachable(timeout=2.0) == f"127.0.0.1:{port} cannot be reached (Connection refused)"
        )
        with pytest.raises(TunewiseError) as info:
            loading.load_tokenizer("some-org/not-cached-model-xyz")
    finally:
        closed.close()
    message = str(info.value)
    assert f"the Hub is out of reach: 127.0.0.1:{port} cannot be reached" in message
    assert "--local-dir" in message

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert loading.hub_unreachable() is None  # behind a proxy, the proxy decides


def test_precision_rule():
    from tunewise.models.loading import decide_precision

    # This project's reference CPU: bf16 emulated, hundreds of times slower -> fp32.
    slow = decide_precision("cpu", True, fp32_gflops=120.0, bf16_gflops=0.3)
    assert slow.dtype == "float32" and "no fast bf16" in slow.reason
    # AMX / AVX512-BF16: measured faster -> bf16 autocast.
    fast = decide_precision("cpu", True, fp32_gflops=200.0, bf16_gflops=800.0)
    assert fast.dtype == "bfloat16" and "4.00x" in fast.reason
    # A fast matmul is not enough when a real training step is not faster too.
    step = decide_precision("cpu", True, 200.0, 800.0, fp32_step_s=4.3, bf16_step_s=4.7)
    assert step.dtype == "float32" and "training step" in step.reason
    assert decide_precision("cpu", True, 200.0, 800.0, fp32_step_s=4.0, bf16_step_s=2.0).dtype == "bfloat16"
    # Slightly faster is not worth the rounding.
    assert decide_precision("cpu", True, 200.0, 220.0).dtype == "float32"
    assert decide_precision("cpu", False, 200.0, None).dtype == "float32"
    assert decide_precision("cuda", True).dtype == "bfloat16"
    assert decide_precision("cuda", False).dtype == "float32"
    assert decide_precision("cpu", True, 200.0, 800.0, requested="fp32").dtype == "float32"
    with pytest.raises(TunewiseError):
        decide_precision("cpu", False, requested="bfloat16")


def test_precision_measurement_is_recorded():
    from tunewise.models.loading import choose_precision

    calls = []

    def step_timer(dtype: str) -> float:
        calls.append(dtype)
        return 1.0  # equal step times: bf16 must not be chosen

    decision = choose_precision("cpu", step_timer=step_timer)
    assert decision.fp32_gflops is not None and decision.fp32_gflops > 0
    assert decision.dtype == "float32"
    # The step is timed only when the matmul screen says bf16 may pay (this CPU: AVX512-BF16 or not).
    screened_out = decision.bf16_gflops is None or decision.bf16_gflops < 1.3 * decision.fp32_gflops
    assert calls == ([] if screened_out else ["float32", "bfloat16"] * 4)  # a warm-up, then three rounds
    assert decision.to_dict()["reason"]


def test_precision_step_timing_ignores_warm_up_and_a_burst_of_load(monkeypatch):
    """The first call of each dtype (kernel set-up) is not counted, and one slow round does not decide."""
    from tunewise.models import loading

    # A CPU whose bf16 matmul screens in, so the steps get timed.
    monkeypatch.setattr(
        loading, "measure_matmul_gflops", lambda dtype, **_: 800.0 if "bfloat16" in str(dtype) else 200.0
    )
    timings = {"float32": [10.0, 1.0, 1.0, 1.0], "bfloat16": [10.0, 0.5, 4.0, 0.5]}
    decision = loading.choose_precision("cpu", step_timer=lambda dtype: timings[dtype].pop(0))
    assert (decision.fp32_step_s, decision.bf16_step_s) == (1.0, 0.5)
    assert decision.dtype == "bfloat16"
    assert timings == {"float32": [], "bfloat16": []}
