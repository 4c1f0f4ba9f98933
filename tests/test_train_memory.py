"""The memory estimate against hand-computed figures, the dry run's refusal with the numbers, gradient checkpointing
(the same losses, turned on where memory needs it), QLoRA's error without CUDA, and the packed-row paths of the
GPU (transformers' block-diagonal SDPA and flash-attention's cu_seqlens) checked on the CPU."""

from __future__ import annotations

import json

import pytest
from test_train import config, write_chat

from tunewise.errors import TunewiseError
from tunewise.project import Project
from tunewise.train.memory import NF4_BYTES, ModelShape, check_fits, estimate, lora_params

# Llama-2-7B's config.json: 6,738,415,616 parameters (its model card's figure).
LLAMA7B = {
    "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008, "vocab_size": 32000,
    "num_attention_heads": 32, "num_key_value_heads": 32, "tie_word_embeddings": False,
}  # fmt: skip
SMOLLM2 = ModelShape(134_515_008, 576, 30, 1536, 49152, 192, 28_311_552)


def test_shape_of_a_7b_model_counts_its_published_parameters():
    shape = ModelShape.from_config(LLAMA7B)
    assert shape.params == 6_738_415_616
    assert shape.embedding_params == 2 * 32000 * 4096


def test_full_fine_tuning_of_7b_on_an_80_gb_gpu_is_refused_with_the_numbers():
    shape = ModelShape.from_config(LLAMA7B)
    e = estimate(shape, "full", "cuda", "bfloat16", 2048, available_gb=79.0)
    p = 6_738_415_616
    assert e.weights_gb == pytest.approx(4 * p / 1e9)  # fp32 master weights: 26.95 GB
    assert e.gradients_gb == pytest.approx(4 * p / 1e9)
    assert e.optimizer_gb == pytest.approx(8 * p / 1e9)  # AdamW: 53.91 GB
    # Per token and layer: 6 x 4096 + 2 x 4096 + 3 x 11008 = 65,792 bf16 elements; 32 layers; plus fp32
    # logits and their gradient over the 32,000-token vocabulary.
    per_token = 32 * 65_792 * 2 + 8 * 32_000
    assert e.activations_gb == pytest.approx(per_token * 2048 / 1e9)
    assert e.total_gb == pytest.approx(16 * p / 1e9 + per_token * 2048 / 1e9 + 0.6)
    assert not e.fits
    with pytest.raises(TunewiseError) as info:
        check_fits(e)
    message = str(info.value)
    assert f"{e.total_gb:.2f} GB of 79.00 GB available" in message
    assert "weights 26.95 + gradients 26.95 + AdamW 53.91" in message
    assert "method: lora" in info.value.hint and "gradient_checkpointing: on" in info.value.hint


def test_full_fine_tuning_of_7b_sharded_over_8_gpus_fits_each_80_gb_card():
    shape = ModelShape.from_config(LLAMA7B)
    e = estimate(shape, "full", "cuda", "bfloat16", 2048, available_gb=79.0, shards=8)
    p = 6_738_415_616
    layer = (p - 2 * 32000 * 4096) / 32  # 202,383,360 parameters a decoder layer
    # A process keeps 1/8 of the fp32 weights, gradients and moments, plus two layers gathered in full (larger
    # than the untied embeddings and head, 262,144,000): 3.37 + 1.62 GB of weights.
    assert e.weights_gb == pytest.approx((4 * p / 8 + 4 * 2 * layer) / 1e9)
    assert e.gradients_gb == pytest.approx(4 * p / 8 / 1e9)
    assert e.optimizer_gb == pytest.approx(8 * p / 8 / 1e9)
    per_token = 32 * 65_792 * 2 + 8 * 32_000  # activations are not sharded
    assert e.activations_gb == pytest.approx(per_token * 2048 / 1e9)
    assert e.fits and e.shards == 8
    assert "per process, sharded over 8" in e.describe()


def test_qlora_of_7b_stores_the_linear_weights_in_4_bits():
    shape = ModelShape.from_config(LLAMA7B)
    rank = 16
    adapters = lora_params(shape, rank)
    assert adapters == 32 * rank * (9 * 4096 + 2 * 4096 + 3 * 11008)  # 39,976,960
    e = estimate(
        shape, "qlora", "cuda", "bfloat16", 2048, lora_rank=rank, checkpointing=True, available_gb=24.0
    )
    linear = 6_738_415_616 - 262_144_000
    assert NF4_BYTES == pytest.approx(0.5 + 1.015625 / 64)  # 4.127 bits per weight
    assert e.weights_gb == pytest.approx((linear * NF4_BYTES + 2 * 262_144_000 + 4 * adapters) / 1e9)
    assert e.optimizer_gb == pytest.approx(8 * adapters / 1e9)
    # Checkpointing keeps each layer's input and one layer's activations.
    per_token = (32 * 4096 + 65_792) * 2 + 8 * 32_000
    assert e.activations_gb == pytest.approx(per_token * 2048 / 1e9)
    assert e.fits and 6 < e.total_gb < 7  # 6.4 GB: a 7B QLoRA run fits a 24 GB card (or a 16 GB one)
    lora = estimate(shape, "lora", "cuda", "bfloat16", 2048, lora_rank=rank, checkpointing=True)
    assert lora.weights_gb == pytest.approx((2 * 6_738_415_616 + 4 * adapters) / 1e9)  # a bf16 base


def test_cpu_lora_estimate_of_the_embedded_model():
    """fp32 LoRA, two micro-batches of 256 tokens, the kernels' chunked loss: 33.8 KB per token per layer."""
    e = estimate(
        SMOLLM2, "lora", "cpu", "float32", 256, lora_rank=8, micro_batches_at_once=2, chunked_loss=True
    )
    adapters = 2_442_240
    assert e.weights_gb == pytest.approx((4 * 134_515_008 + 4 * adapters) / 1e9)
    assert e.activations_gb == pytest.approx(30 * 8448 * 4 * 256 * 2 / 1e9)  # 0.519 GB
    assert e.total_gb == pytest.approx(1.4962, abs=1e-4)
    assert e.available_gb is None and e.fits


def test_dry_run_refuses_a_plan_that_does_not_fit(tmp_path, run_cli, monkeypatch):
    import tunewise.train.plan as plan

    data = write_chat(tmp_path / "train.jsonl", 16)
    monkeypatch.setattr(plan, "available_gb", lambda device: 0.25)
    code, out, err = run_cli(
        "train", "--data", data, "--base", "tiny:random", "--dry-run", "--precision", "float32", cwd=tmp_path
    )
    assert code == 1
    assert "error: the run does not fit: memory estimate (cpu, lora):" in err
    assert "of 0.25 GB available" in err and "Traceback" not in err
    assert not (tmp_path / ".tunewise" / "runs").exists()


def test_dry_run_prints_the_estimate(tmp_path, run_cli):
    data = write_chat(tmp_path / "train.jsonl", 16)
    code, out, err = run_cli(
        "train", "--data", data, "--base", "tiny:random", "--dry-run", "--precision", "float32", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    memory = json.loads(out)["memory"]
    assert memory["device"] == "cpu" and memory["method"] == "lora" and memory["fits"] is True
    parts = ("weights_gb", "gradients_gb", "optimizer_gb", "activations_gb", "runtime_gb")
    assert memory["total_gb"] == pytest.approx(sum(memory[k] for k in parts), abs=1e-3)


def test_a_sharded_dry_run_estimates_one_process_of_the_planned_ones(tmp_path, run_cli):
    data = write_chat(tmp_path / "train.jsonl", 16)
    plans = {}
    for processes in ("1", "4"):
        code, out, err = run_cli(
            "train", "--data", data, "--base", "tiny:random", "--dry-run", "--precision", "float32", "--json",
            "--method", "full", "--strategy", "fsdp", "--processes", processes, cwd=tmp_path,
        )  # fmt: skip
        assert code == 0, err
        plans[processes] = json.loads(out)["memory"]
    one, four = plans["1"], plans["4"]
    assert one["shards"] == 1 and four["shards"] == 4
    assert four["gradients_gb"] == pytest.approx(one["gradients_gb"] / 4, rel=1e-3)
    assert four["optimizer_gb"] == pytest.approx(one["optimizer_gb"] / 4, rel=1e-3)
    # A quarter, plus the unit gathered in full: for this tiny model its tied embeddings, most of its weights.
    gathered = four["weights_gb"] - one["weights_gb"] / 4
    assert 0.5 * one["weights_gb"] < gathered < one["weights_gb"]
    assert four["activations_gb"] == pytest.approx(one["activations_gb"])
    code, _, err = run_cli(
        "train", "--data", data, "--base", "tiny:random", "--dry-run", "--strategy", "fsdp", "--processes", "0",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 1 and "error: 0 processes is not a plan" in err and "Traceback" not in err


def _losses(run_dir) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    from tunewise.train import run

    files = write_chat(tmp_path / "train.jsonl", 16), write_chat(tmp_path / "eval.jsonl", 4, seed=1)
    runs = {}
    for mode in ("off", "on"):
        c = config(files, kernels="off", gradient_checkpointing=mode, epochs=1, eval_data=[])
        result = run(c, Project(tmp_path / mode))
        assert result.status == "succeeded", result.error
        runs[mode] = _losses(result.run_dir)
    assert len(runs["on"]) == 2
    assert runs["on"] == pytest.approx(runs["off"], rel=1e-5)


def test_gradient_checkpointing_turns_on_where_memory_needs_it(tmp_path, monkeypatch):
    """With free memory between the estimates with and without it, `auto` turns it on, and says why."""
    import tunewise.train.memory as memory
    from tunewise.models.loading import load_tokenizer
    from tunewise.train.config import Resolved
    from tunewise.train.model import build_model, run_memory

    c = config((write_chat(tmp_path / "t.jsonl", 4), None), kernels="off", eval_data=[])
    resolved = Resolved(1, 1e-3, 4, 8, 16.0, 64, {})
    tokenizer = load_tokenizer("tiny:random")
    model = build_model(c, resolved, tokenizer)
    shape = model.get_base_model().config.to_dict()
    without, with_ = (run_memory(c, resolved, shape, "cpu", "float32", k, None) for k in (False, True))
    assert with_.total_gb < without.total_gb
    assert model.tunewise_checkpointing[0] is False  # this machine has the room
    monkeypatch.setattr(memory, "available_gb", lambda device: (with_.total_gb + without.total_gb) / 2)
    model = build_model(c, resolved, tokenizer)
    on, why = model.tunewise_checkpointing
    assert on and why.startswith("auto:") and "GB free" in why
    assert model.get_base_model().is_activation_checkpointing


def test_qlora_without_cuda_is_a_clear_error(tmp_path, run_cli):
    pytest.importorskip("torch").cuda.is_available() and pytest.skip("this machine has CUDA")
    data = write_chat(tmp_path / "train.jsonl", 8)
    code, _, err = run_cli(
        "train", "--data", data, "--base", "tiny:random", "--method", "qlora", cwd=tmp_path
    )
    assert code == 1 and "Traceback" not in err
    assert "error: method qlora cannot run here: it needs a CUDA GPU (bitsandbytes 4-bit NF4)" in err
    assert "method: lora" in err  # the hint: what to do instead, never a silent fallback


def test_qlora_on_cuda_without_bitsandbytes_names_the_package():
    import importlib.util

    from tunewise.models.loading import qlora_unavailable

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    assert qlora_unavailable("cuda") == "the bitsandbytes package is not installed (pip install bitsandbytes)"


def test_qlora_trains_like_lora_in_the_auto_rule():
    from tunewise.train import TrainConfig
    from tunewise.train.config import auto_hyperparameters, micro_batch_tokens

    q = TrainConfig(method="qlora")
    resolved = auto_hyperparameters(
        q, n_examples=100, n_params=7_000_000_000, longest=100, context_length=4096
    )
    assert (resolved.lora_rank, resolved.lora_alpha, resolved.learning_rate) == (8, 16.0, 1e-4)
    assert micro_batch_tokens(q, "bfloat16") == 768


def test_packed_loss_under_sdpa_equals_each_example_alone():
    """The GPU's packed path (transformers' attention over restarting position ids, kernels off) gives each
    example the loss it has alone: the sum over the packed row equals the sum of the separate ones."""
    import torch

    from tunewise.models.loading import load_tokenizer, tiny_model
    from tunewise.train.data import tokenize_example
    from tunewise.train.kernels import choose_kernels
    from tunewise.train.model import batch_loss

    tokenizer = load_tokenizer("tiny:random")
    model = tiny_model(tokenizer).eval()
    model.config.use_cache = False
    model.tunewise_kernels = choose_kernels("off", "cpu", "llama")
    model.set_attn_implementation("sdpa")
    examples = [
        tokenize_example(tokenizer, [{"role": "user", "content": t}, {"role": "assistant", "content": a}])
        for t, a in (("the film was long and dull", "negative"), ("great", "positive"), ("ok", "neutral, I think"))
    ]  # fmt: skip
    with torch.no_grad():
        packed, _, n = batch_loss(model, examples, None)
        alone = [batch_loss(model, [e], None) for e in examples]
    assert n == sum(a[2] for a in alone)
    assert packed.item() == pytest.approx(sum(a[0].item() for a in alone), rel=1e-5)


def test_flash_attention_reads_the_example_boundaries_from_the_position_ids():
    """flash-attention's variable-length kernel takes cu_seqlens, which transformers derives from the packed
    row's restarting position ids: the cumulative example lengths (computed here on the CPU)."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    from tunewise.train.data import Example, pack

    examples = [Example([1] * n, [0] * (n - 1) + [1]) for n in (5, 3, 7)]
    batch = pack(examples)
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
    assert cu_q.tolist() == cu_k.tolist() == [0, 5, 8, 15]
    assert int(max_q) == int(max_k) == 7


@pytest.mark.skipif(
    not pytest.importorskip("torch").cuda.is_available(), reason="needs a CUDA GPU: bf16 packed LoRA on CUDA"
)
def test_cuda_lora_in_bf16_follows_the_cpu_losses(tmp_path):
    from tunewise.train import run

    files = write_chat(tmp_path / "train.jsonl", 16), write_chat(tmp_path / "eval.jsonl", 4, seed=1)
    result = run(config(files, precision="auto", epochs=1), Project(tmp_path / "cuda"))
    assert result.status == "succeeded", result.error
    environment = json.loads((result.run_dir / "environment.json").read_text())
    assert environment["precision"]["dtype"] == "bfloat16"
    assert json.loads((result.run_dir / "config.json").read_text())["kernels"]["enabled"] is False


def _qlora_ready() -> bool:
    import importlib.util

    torch = pytest.importorskip("torch")
    return torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


@pytest.mark.skipif(not _qlora_ready(), reason="needs a CUDA GPU and bitsandbytes: QLoRA's 4-bit NF4 base")
def test_qlora_trains_adapters_over_a_4_bit_base_on_cuda(tmp_path):
    from test_families import build_family

    from tunewise.models.loading import load_tokenizer
    from tunewise.train import run
    from tunewise.train.config import Resolved
    from tunewise.train.model import build_model

    base = build_family(tmp_path / "qwen2", "qwen2")
    files = write_chat(tmp_path / "train.jsonl", 16), write_chat(tmp_path / "eval.jsonl", 4, seed=1)
    c = config(files, base=str(base), method="qlora", precision="auto", epochs=2)
    model = build_model(c, Resolved(1, 1e-3, 4, 8, 16.0, 64, {}), load_tokenizer(str(base)), "cuda")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds  # the frozen base is NF4
    result = run(c, Project(tmp_path / "run"))
    assert result.status == "succeeded", result.error
    assert result.eval_after["eval_loss"] < result.eval_before["eval_loss"]
    assert (tmp_path / "run").exists() and result.output.endswith("adapter")
