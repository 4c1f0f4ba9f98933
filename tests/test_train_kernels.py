"""`kernels: auto | off`: tunewise's CPU kernels and plain transformers + PEFT train the tiny model to the same
losses and adapter; `off` installs none of the kernels; on CUDA, packed rows go to transformers' attention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_train import config, write_chat

from tunewise.errors import ConfigError
from tunewise.project import Project


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    return write_chat(tmp_path / "train.jsonl", 32, seed=0), write_chat(tmp_path / "eval.jsonl", 12, seed=1)


def _train(tmp_path: Path, data, kernels: str):
    from safetensors.torch import load_file

    from tunewise.train import run

    result = run(config(data, kernels=kernels), Project(tmp_path / kernels))
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    adapter = load_file(str(Path(result.output) / "adapter_model.safetensors"))
    return result, losses, adapter


def test_off_and_auto_give_the_same_losses_and_adapter(tmp_path, data):
    """The same arithmetic in fp32, in a different order: fused products, the chunked vocabulary loss and per-
    example attention against the model's own forward, transformers' block-diagonal SDPA and F.cross_entropy.
    Reordered fp32 sums differ by about 1e-7 relative, so the losses of 12 steps must agree to 1e-5 relative
    (measured: 1e-7). AdamW divides each gradient by its running RMS, which carries a rounding difference in a
    small gradient into the update at full size; the adapters must agree to 2e-4 absolute (measured: 1.3e-5),
    a thousandth of the largest adapter weight (0.2, all of it learned: LoRA's B starts at zero)."""
    import torch

    auto, auto_losses, auto_adapter = _train(tmp_path, data, "auto")
    off, off_losses, off_adapter = _train(tmp_path, data, "off")

    assert len(auto_losses) == len(off_losses) == 12
    assert off_losses == pytest.approx(auto_losses, rel=1e-5)
    assert off_losses[-1] < off_losses[0] - 0.2  # both really trained (10.83 -> 10.43)
    assert auto_adapter.keys() == off_adapter.keys()
    largest = max(float(w.abs().max()) for w in auto_adapter.values())
    assert largest > 0.05  # the tolerance below is small against what training moved
    for name, weight in auto_adapter.items():
        torch.testing.assert_close(off_adapter[name], weight, rtol=0, atol=2e-4, msg=name)
    assert off.eval_after["eval_loss"] == pytest.approx(auto.eval_after["eval_loss"], rel=1e-5)

    # The choice is recorded with the run.
    for result, expected in ((auto, True), (off, False)):
        recorded = json.loads((result.run_dir / "config.json").read_text())["kernels"]
        environment = json.loads((result.run_dir / "environment.json").read_text())["kernels"]
        assert recorded == environment and recorded["enabled"] is expected
    assert off.extra["heap_trims"] == 0 and auto.extra["heap_trims"] > 0  # heap trims are a kernel too


def _patched_modules(model) -> list[str]:
    """Modules whose forward was replaced on the instance (every kernel patch installs one there)."""
    return [name for name, module in model.named_modules() if "forward" in module.__dict__]


def _model(tmp_path: Path, device: str = "cpu", **overrides):
    from tunewise.train import loop
    from tunewise.train.config import auto_hyperparameters
    from tunewise.train.model import build_model

    data = write_chat(tmp_path / "k.jsonl", 8)
    cfg = config((data, data), eval_data=[], **overrides)
    prepared = loop.prepare(cfg)
    resolved = auto_hyperparameters(cfg, 8, 3_400_000, 512, prepared.context_length)
    return build_model(cfg, resolved, prepared.tokenizer, device)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_off_installs_none_of_the_kernels(tmp_path, method):
    auto = _model(tmp_path, method=method)
    off = _model(tmp_path, method=method, kernels="off")
    assert auto.tunewise_kernels.enabled and _patched_modules(auto)  # the control: auto patches modules
    assert auto.config._attn_implementation == "tunewise_packed"
    assert not off.tunewise_kernels.enabled
    assert _patched_modules(off) == []
    assert off.config._attn_implementation == "sdpa"


def test_off_never_calls_the_chunked_loss(tmp_path, data, monkeypatch):
    from tunewise.train import loss, run

    class Exploding:
        @staticmethod
        def apply(*args):
            raise AssertionError("the chunked loss ran")

    monkeypatch.setattr(loss, "_function", Exploding)
    run(config(data, kernels="off", epochs=1), Project(tmp_path / "off"))  # no error: the plain loss
    with pytest.raises(AssertionError, match="the chunked loss ran"):
        run(config(data, kernels="auto", epochs=1), Project(tmp_path / "auto"))


def test_on_cuda_packed_rows_use_transformers_attention_not_the_per_example_loop(tmp_path):
    """No GPU here: the model is built for a CUDA run (the choice is the device's) and stays on the CPU."""
    from tunewise.train.kernels import attention_for, choose_kernels

    model = _model(tmp_path, device="cuda")
    assert not model.tunewise_kernels.enabled and "cuda" in model.tunewise_kernels.reason
    assert model.config._attn_implementation == "sdpa"  # until the precision is known
    assert _patched_modules(model) == []

    assert choose_kernels("auto", "cpu", "llama").attention == "tunewise_packed"
    assert choose_kernels("auto", "cuda", "llama").attention == "sdpa"
    # flash-attention's variable-length kernel when installed and the run is in bf16; it takes no fp32
    assert attention_for("cuda", False, "bfloat16", flash=True) == "flash_attention_2"
    assert attention_for("cuda", False, "float32", flash=True) == "sdpa"
    assert attention_for("cuda", False, "bfloat16", flash=False) == "sdpa"
    # kernels: auto on a family they are not tested on runs plain, on the CPU too
    assert choose_kernels("auto", "cpu", "qwen3").enabled is False


SPEC = """\
task: {name: t, target: "Given a review, answer with its sentiment label."}
contract: {type: label, labels: [positive, negative]}
system_prompt: Answer positive or negative.
data: {train: train.jsonl}
hyperparameters: {kernels: KERNELS}
"""


def test_the_spec_setting_reaches_the_training_config_and_is_checked(tmp_path):
    from tunewise.spec import load_spec
    from tunewise.train.cli import config_from_spec
    from tunewise.train.config import TrainConfig

    spec = tmp_path / "tunewise.yaml"
    spec.write_text(SPEC.replace("KERNELS", "'off'"))
    values, _, _ = config_from_spec(spec)
    assert values["kernels"] == "off"
    assert TrainConfig(**values).kernels == "off"
    spec.write_text(SPEC.replace("KERNELS", "fast"))
    # One set of rules: the spec and the training config refuse the value in the same words.
    with pytest.raises(ConfigError, match="kernels: Input should be 'auto' or 'off'"):
        load_spec(spec)
    with pytest.raises(ConfigError, match="kernels: Input should be 'auto' or 'off'"):
        TrainConfig(kernels="fast")
    with pytest.raises(ConfigError, match="kernels: off turns off"):
        TrainConfig(kernels="off", micro_batch_workers=2)
