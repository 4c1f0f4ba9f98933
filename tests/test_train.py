"""The training loop on the tiny random model: LoRA and full change weights and lower the loss, the run directory
is self-describing, a SIGKILLed run resumes to the same adapter, the auto rule gives the documented values."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunewise.errors import TunewiseError
from tunewise.project import Project

WORDS = {
    "good": "positive",
    "great": "positive",
    "lovely": "positive",
    "bad": "negative",
    "awful": "negative",
    "dull": "negative",
}


def write_chat(path: Path, n: int, seed: int = 0) -> Path:
    """A tiny sentiment set with variable lengths: the label is a function of one word."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        word = rng.choice(sorted(WORDS))
        filler = " ".join(
            rng.choice(["the", "film", "was", "quite", "really"]) for _ in range(rng.randint(0, 12))
        )
        messages = [
            {"role": "user", "content": f"{filler} {word}".strip()},
            {"role": "assistant", "content": WORDS[word]},
        ]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def data(tmp_path) -> tuple[Path, Path]:
    return write_chat(tmp_path / "train.jsonl", 32, seed=0), write_chat(tmp_path / "eval.jsonl", 12, seed=1)


def config(data, **overrides):
    from tunewise.train import TrainConfig

    values = dict(
        data=[str(data[0])],
        eval_data=[str(data[1])],
        base="tiny:random",
        epochs=3,
        batch_size=8,
        learning_rate=2e-2,
        precision="float32",
        threads=1,
        progress=False,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_lora_changes_only_adapter_weights_and_lowers_the_loss(tmp_path, data):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from tunewise.models.loading import load_tokenizer, tiny_model
    from tunewise.train import run

    project = Project(tmp_path / "proj")
    result = run(config(data), project)
    assert result.status == "succeeded"
    assert result.eval_after["eval_loss"] < result.eval_before["eval_loss"]
    assert result.train_loss_last < result.train_loss_first

    run_dir = Path(result.run_dir)
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means trained
    assert any("mlp.down_proj" in k for k in adapter) and any(
        "self_attn.q_proj" in k for k in adapter
    )  # all linear

    # The adapter loads with PEFT onto the untouched base and changes its predictions.
    tokenizer = load_tokenizer("tiny:random")
    base = tiny_model(tokenizer, seed=0)
    ids = torch.tensor([tokenizer("the film was good")["input_ids"]])
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, run_dir / "adapter")
        after = tuned(ids).logits
    assert not torch.allclose(before, after)
    assert torch.equal(tuned.get_base_model().model.layers[0].mlp.down_proj.base_layer.weight,
                       tiny_model(tokenizer, seed=0).model.layers[0].mlp.down_proj.weight)  # fmt: skip


def test_lora_in_bf16_trains_fp32_adapters_on_a_bf16_base(tmp_path, data):
    """With bf16 chosen, LoRA stores the frozen base in bf16 (train/mixed.py): it still learns, the adapter
    is saved in fp32, and the run records the precision it trained in."""
    import torch
    from safetensors.torch import load_file

    from tunewise.train import run

    result = run(config(data, precision="bfloat16"), Project(tmp_path / "proj"))
    assert result.status == "succeeded"
    assert result.eval_after["eval_loss"] < result.eval_before["eval_loss"]
    adapter = load_file(str(Path(result.run_dir) / "adapter" / "adapter_model.safetensors"))
    assert adapter and all(v.dtype == torch.float32 for v in adapter.values())
    environment = json.loads((Path(result.run_dir) / "environment.json").read_text())
    assert environment["precision"]["dtype"] == "bfloat16"


def test_full_fine_tuning_changes_weights_and_lowers_the_loss(tmp_path, data):
    import torch

    from tunewise.models.loading import load_model, load_tokenizer, tiny_model
    from tunewise.train import run

    result = run(config(data, method="full", learning_rate=3e-3), Project(tmp_path / "proj"))
    assert result.status == "succeeded"
    assert result.eval_after["eval_loss"] < result.eval_before["eval_loss"]
    trained = load_model(result.output)
    initial = tiny_model(load_tokenizer("tiny:random"), seed=0)
    changed = [
        name for (name, a), (_, b) in zip(initial.state_dict().items(), trained.state_dict().items(), strict=True)
        if not torch.equal(a, b)
    ]  # fmt: skip
    assert "model.layers.1.mlp.down_proj.weight" in changed
    assert "model.embed_tokens.weight" in changed


def test_run_directory_and_registry_row(tmp_path, data):
    from tunewise.train import run

    project = Project(tmp_path / "proj")
    result = run(config(data, epochs=1), project)
    run_dir = Path(result.run_dir)
    for name in (
        "config.json",
        "environment.json",
        "metrics.jsonl",
        "result.json",
        "adapter/adapter_config.json",
    ):
        assert (run_dir / name).is_file(), name
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["resolved"]["lora_rank"] == 8 and recorded["resolved"]["sources"]["lora_rank"] == "auto"
    assert recorded["resolved"]["sources"]["epochs"] == "user"
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["precision"]["dtype"] == "float32" and env["torch_threads"] == 1
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == list(range(1, 5))  # 32 examples / batch 8
    assert all(x["trained_tokens"] > 0 and x["tokens_per_s"] > 0 for x in lines if "loss" in x)
    if sys.platform == "linux":  # resident memory after each step, from /proc
        assert all(0 < x["rss_gb"] < 64 for x in lines if "loss" in x)
    assert {x["step"] for x in lines if "eval_loss" in x} >= {0, 4}
    assert result.extra["heap_trims"] >= 2  # each evaluation before and during training trims the heap
    registry = project.registry()
    row = registry.conn.execute("SELECT * FROM runs WHERE id = ?", (result.run_id,)).fetchone()
    registry.close()
    assert row["status"] == "succeeded" and row["kind"] == "train"
    assert json.loads(row["result"])["eval_after"]["eval_loss"] == result.eval_after["eval_loss"]


def test_failed_run_still_writes_result(tmp_path, data):
    from tunewise.train import run

    def explode(step, record):
        if step == 2:
            raise RuntimeError("disk on fire")

    project = Project(tmp_path / "proj")
    with pytest.raises(RuntimeError):
        run(config(data), project, on_step=explode)
    (run_dir,) = project.runs_dir.iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "failed" and "disk on fire" in result["error"]
    registry = project.registry()
    assert registry.conn.execute("SELECT status FROM runs").fetchone()[0] == "failed"
    registry.close()


RUNNER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from tunewise.project import Project
    from tunewise.train import TrainConfig, run

    root, data, kill_at = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    def on_step(step, record):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a real crash

    config = TrainConfig(data=[data], base="tiny:random", epochs=3, batch_size=4, learning_rate=1e-2,
                         lora_dropout=0.1, checkpoint_every=5, precision="float32", threads=1, progress=False)
    run(config, Project(root), on_step=on_step)
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_resume_after_sigkill_reaches_the_same_adapter(tmp_path):
    import torch
    from safetensors.torch import load_file

    data = write_chat(tmp_path / "train.jsonl", 32)
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)

    def go(root: Path, kill_at: int) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(script), str(root), str(data), str(kill_at)],
            env=_env(), capture_output=True, text=True,
        )  # fmt: skip

    whole = go(tmp_path / "whole", kill_at=0)
    assert whole.returncode == 0, whole.stderr
    killed = go(tmp_path / "killed", kill_at=12)  # 24 steps; checkpoints at 5, 10, 15, 20
    assert killed.returncode == -signal.SIGKILL
    (run_dir,) = (tmp_path / "killed" / ".tunewise" / "runs").iterdir()
    assert not (run_dir / "adapter").exists()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000010"

    resumed = subprocess.run(
        [sys.executable, "-m", "tunewise", "train", "--resume", run_dir.name, "--no-progress"],
        cwd=tmp_path / "killed", env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step-000010" in resumed.stderr

    (whole_dir,) = (tmp_path / "whole" / ".tunewise" / "runs").iterdir()
    a = load_file(str(whole_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    # Each step is logged once, and the losses match the uninterrupted run.
    def losses(d):
        return [
            (x["step"], x["loss"])
            for x in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
            if "loss" in x
        ]

    assert losses(run_dir) == losses(whole_dir)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "succeeded"


def test_auto_hyperparameter_rule():
    from tunewise.train.config import TrainConfig, auto_hyperparameters

    small = auto_hyperparameters(
        TrainConfig(), n_examples=40, n_params=134_515_008, longest=90, context_length=8192
    )
    assert (small.epochs, small.batch_size, small.learning_rate, small.lora_rank, small.lora_alpha, small.max_length) == (
        3, 4, 1e-3, 8, 16.0, 128,
    )  # fmt: skip
    assert small.sources == {
        k: "auto" for k in ("lora_rank", "epochs", "learning_rate", "batch_size", "lora_alpha", "max_length")
    }
    tiny = auto_hyperparameters(TrainConfig(), n_examples=10, n_params=10**8, longest=10, context_length=8192)
    assert tiny.epochs == 10  # 10 examples x 10 epochs = 100 seen
    big = auto_hyperparameters(
        TrainConfig(method="full"), n_examples=50_000, n_params=7 * 10**9, longest=5000, context_length=4096
    )
    assert (big.epochs, big.batch_size, big.learning_rate, big.lora_rank, big.max_length) == (
        1,
        32,
        1e-5,
        None,
        4096,
    )
    user = auto_hyperparameters(TrainConfig(epochs=7, learning_rate=1e-3), 40, 10**8, 90, 8192)
    assert (user.epochs, user.learning_rate) == (7, 1e-3)
    assert user.sources["epochs"] == "user" and user.sources["batch_size"] == "auto"


def test_unknown_config_key_names_the_nearest():
    from tunewise.train.config import TrainConfig

    with pytest.raises(TunewiseError, match="did you mean 'learning_rate'"):
        TrainConfig.from_dict({"learning_rte": 1e-4})


def test_micro_batch_tokens_follow_the_precision_unless_set():
    from tunewise.train.config import TrainConfig, micro_batch_tokens

    assert micro_batch_tokens(TrainConfig(), "bfloat16") == 768  # LoRA on a bf16 base
    assert micro_batch_tokens(TrainConfig(), "float32") == 256
    assert micro_batch_tokens(TrainConfig(method="full"), "bfloat16") == 256  # autocast keeps fp32 weights
    assert micro_batch_tokens(TrainConfig(micro_batch_tokens=384), "bfloat16") == 384
    # The spec's bound and wording (tunewise.spec.MicroBatchTokens): at least 16, a whole number, not a boolean.
    for bad, why in ((8, "greater than or equal to 16"), ("many", "a valid integer"), (True, "a number")):
        with pytest.raises(TunewiseError, match=f"micro_batch_tokens: Input should be {why}"):
            TrainConfig(micro_batch_tokens=bad)


def test_the_precision_measurement_packs_the_same_examples_at_each_precisions_size(
    tmp_path, data, monkeypatch
):
    """bf16 trains on larger micro-batches than fp32, and gains most of its lead from them: timing both at
    fp32's size chose fp32 in the demo. Each precision must time the same examples at its own size."""
    from tunewise.models import loading
    from tunewise.train import model, run

    real_loss = model.batch_loss
    packed: dict[str, list[list[int]]] = {}

    def recording_choose_precision(device, requested, step_timer):
        for dtype in ("float32", "bfloat16"):
            calls: list[list[int]] = []

            def recording_loss(model, examples, autocast, calls=calls):
                calls.append([len(e) for e in examples])
                return real_loss(model, examples, autocast)

            monkeypatch.setattr(model, "batch_loss", recording_loss)
            assert step_timer(dtype) > 0
            packed[dtype] = calls
        monkeypatch.setattr(model, "batch_loss", real_loss)
        return loading.decide_precision(device, True, requested="float32")

    monkeypatch.setattr(loading, "choose_precision", recording_choose_precision)
    run(config(data, precision="auto", epochs=1, batch_size=32), Project(tmp_path / "proj"))

    fp32, bf16 = packed["float32"], packed["bfloat16"]
    assert len(bf16) == 1 and 256 < sum(bf16[0]) <= 768  # one 768-token micro-batch: step 0's first
    assert len(fp32) > 1 and all(sum(group) <= 256 for group in fp32)
    assert sorted(n for group in fp32 for n in group) == sorted(bf16[0])  # the same examples


def test_early_stopping_keeps_the_best_weights(tmp_path, data):
    from tunewise.train import run

    # A learning rate this high diverges after the first steps: early stopping must stop and keep the best.
    result = run(
        config(data, epochs=10, batch_size=4, learning_rate=0.5, eval_every=2, early_stopping_patience=2),
        Project(tmp_path / "proj"),
    )
    assert result.stopped_early
    evals = [json.loads(x) for x in (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()]
    best = min(x["eval_loss"] for x in evals if "eval_loss" in x and x["step"] > 0)
    assert result.eval_after["eval_loss"] == pytest.approx(best, rel=1e-5)


def _evals(result) -> dict[int, float]:
    lines = (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()
    return {x["step"]: x["eval_loss"] for x in map(json.loads, lines) if "eval_loss" in x and x["step"] > 0}


def test_the_output_is_the_step_with_a_clearly_lower_validation_loss(tmp_path, data):
    from tunewise.train import run

    # A validation set whose answer training never teaches ("neutral"): its loss falls while the model learns
    # the reply's shape, then climbs far above it as the model grows sure of positive/negative.
    validation = [json.loads(line) for line in data[1].read_text().splitlines()]
    for record in validation:
        record["messages"][-1]["content"] = "neutral"
    neutral = tmp_path / "neutral.jsonl"
    neutral.write_text("".join(json.dumps(r) + "\n" for r in validation))
    climbing = dict(
        method="full", epochs=4, batch_size=4, learning_rate=0.01, schedule="constant", eval_every=2
    )
    kept = run(config((data[0], neutral), **climbing), Project(tmp_path / "best"))
    by_step = _evals(kept)
    best_step = min(by_step, key=by_step.get)
    assert best_step < kept.steps and by_step[kept.steps] > by_step[best_step] + 1  # well past its best
    assert kept.extra["kept_step"] == best_step
    check = kept.extra["best_check"]  # the earlier weights won on evidence
    assert check["earlier_is_better"] and check["diff"] > 1.96 * check["se"] > 0
    assert kept.eval_after["eval_loss"] == pytest.approx(by_step[best_step], rel=1e-5)
    assert not kept.stopped_early

    last = run(config((data[0], neutral), keep_best=False, **climbing), Project(tmp_path / "last"))
    assert "kept_step" not in last.extra and "best_check" not in last.extra
    # Same seed, same path: the last run's final loss is the first run's loss at its last step.
    assert last.eval_after["eval_loss"] == pytest.approx(by_step[kept.steps], rel=1e-5)


def test_the_last_weights_stay_when_an_earlier_step_is_lower_only_within_the_noise(
    tmp_path, data, monkeypatch
):
    import torch
    from safetensors.torch import load_file

    from tunewise.train import loop, run

    # A held-out score lower at an earlier step by less than its examples can tell apart is a matter of
    # floating-point luck in a real run (it came and went between an Intel and an AMD CPU), so the scores are
    # scripted: the per-example losses fall until the third evaluation (step 4), then sit a hair above it with a
    # spread far wider than the difference. Training itself is real.
    base = [float(10 + i) for i in range(12)]
    calls: list[int] = []

    def scripted(model, data, *args, **kwargs):
        k = len(calls)
        calls.append(k)
        if k <= 2:
            losses = [x * (1 - 0.01 * k) for x in base]
        else:  # step 4's +-0.5 per example, 0.01 higher on average: 0.001 per token, standard error 0.015
            losses = [x * 0.98 + (0.5 if i % 2 else -0.5) + 0.01 for i, x in enumerate(base)]
        n = 120
        return {"eval_loss": sum(losses) / n, "eval_accuracy": 0.0, "eval_tokens": n}, losses

    monkeypatch.setattr(loop, "evaluate_examples", scripted)
    settings = dict(epochs=1, batch_size=4, learning_rate=0.05, schedule="constant", eval_every=2)
    result = run(config(data, **settings), Project(tmp_path / "best"))
    by_step = _evals(result)
    assert min(by_step, key=by_step.get) == 4 < result.steps == 8
    check = result.extra["best_check"]
    assert check["best_step"] == 4 and not check["earlier_is_better"]
    assert 0 < check["diff"] <= 1.96 * check["se"]
    assert "kept_step" not in result.extra
    assert result.eval_after["eval_loss"] == pytest.approx(by_step[8])

    # The output holds the last step's weights: those of the same run that never keeps an earlier step.
    calls.clear()
    last = run(config(data, keep_best=False, **settings), Project(tmp_path / "last"))
    kept = load_file(str(Path(result.run_dir) / "adapter" / "adapter_model.safetensors"))
    plain = load_file(str(Path(last.run_dir) / "adapter" / "adapter_model.safetensors"))
    assert kept.keys() == plain.keys()
    assert all(torch.equal(kept[name], plain[name]) for name in kept)
    # step 4's weights, kept by their parameter names (PEFT's file drops the adapter's name): not the output's
    best = load_file(str(Path(result.run_dir) / "best.safetensors"))
    best = {name.replace(".default.", "."): value for name, value in best.items()}
    assert best.keys() == kept.keys()
    assert not all(torch.equal(best[name], kept[name]) for name in kept)


def test_an_earlier_step_replaces_the_last_only_when_better_beyond_the_noise():
    from tunewise.train.loop import compare_with_best

    best = [2.0, 4.0, 6.0, 8.0]  # summed loss per validation example at the best step; 40 tokens in all
    # The last step is worse on every example by about the same amount: a real difference.
    # d = [0.5, 0.4, 0.6, 0.5]: diff = 2.0 / 40 = 0.05; se = sqrt(4/3 * 0.02) / 40 = 0.00408
    steady = compare_with_best(best, [2.5, 4.4, 6.6, 8.5], 40)
    assert steady["diff"] == pytest.approx(0.05)
    assert steady["se"] == pytest.approx((4 / 3 * 0.02) ** 0.5 / 40)
    assert steady["earlier_is_better"]
    # Worse on average but better on one example in two: d = [1, -1, 1, -0.6], diff = 0.01, se = 0.0526.
    mixed = compare_with_best(best, [3.0, 3.0, 7.0, 7.4], 40)
    assert mixed["diff"] == pytest.approx(0.01)
    assert mixed["se"] == pytest.approx((4 / 3 * 3.32) ** 0.5 / 40)
    assert not mixed["earlier_is_better"]
    # No noise estimate (one example, or a checkpoint without the per-example record): the lower loss wins.
    assert compare_with_best([2.0], [2.1], 10)["earlier_is_better"]
    assert not compare_with_best([2.0], [1.9], 10)["earlier_is_better"]
    assert compare_with_best(None, [2.1, 3.0], 10) == {"diff": None, "se": None, "earlier_is_better": True}


def test_dry_run_prints_a_measured_plan_and_writes_nothing(tmp_path, data, run_cli):
    code, out, err = run_cli(
        "train",
        "--data",
        data[0],
        "--base",
        "tiny:random",
        "--dry-run",
        "--epochs",
        "2",
        "--precision",
        "float32",
        cwd=tmp_path,
    )
    assert code == 0, err
    assert "steps" in out and "tokens/s" in out and "peak memory estimate" in out
    assert "[[positive<|im_end|>]]" in err or "[[negative<|im_end|>]]" in err  # the rendered mask
    assert not (tmp_path / ".tunewise" / "runs").exists()


def test_cli_errors_are_one_line(tmp_path, run_cli):
    code, out, err = run_cli(
        "train", "--data", tmp_path / "missing.jsonl", "--base", "tiny:random", cwd=tmp_path
    )
    assert code == 1
    assert "error:" in err and "no data file" in err and "Traceback" not in err
    code, _, err = run_cli("train", "--data", tmp_path / "missing.jsonl", "--epochs", "lots", cwd=tmp_path)
    assert code == 1 and "--epochs must be 'auto' or an integer (got 'lots')" in err


def test_help(run_cli):
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "--resume" in out and "--dry-run" in out


def test_cli_reads_the_spec_and_flags_override(tmp_path, run_cli):
    (tmp_path / "data").mkdir()
    write_chat(tmp_path / "data" / "train.jsonl", 24)
    (tmp_path / "tunewise.yaml").write_text(
        "task: {name: sentiment, target: Label the sentiment of a movie review sentence}\n"
        "data: {train: data/train.jsonl}\n"
        "model: {base: 'tiny:random'}\n"
        "hyperparameters: {epochs: 2, batch_size: 6, lora_rank: 4}\n"
    )
    code, out, err = run_cli(
        "train", "--dry-run", "--epochs", "3", "--precision", "float32", "--json", cwd=tmp_path
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["epochs"] == 3 and plan["resolved"]["sources"]["epochs"] == "user"  # the flag wins
    assert plan["batch_size"] == 6 and plan["resolved"]["lora_rank"] == 4  # from tunewise.yaml
    assert plan["steps"] == 12 and plan["n_examples"] == 24


def test_dry_run_prices_the_run_on_each_chosen_platform(tmp_path, run_cli):
    (tmp_path / "data").mkdir()
    write_chat(tmp_path / "data" / "train.jsonl", 24)
    (tmp_path / "prices.yaml").write_text("entries: [{id: self-hosted/gpu, training_per_hour: 3.0}]\n")
    (tmp_path / "tunewise.yaml").write_text(
        "task: {name: sentiment, target: Label the sentiment of a movie review sentence}\n"
        "data: {train: data/train.jsonl}\n"
        "model: {base: 'tiny:random'}\n"
        "hyperparameters: {epochs: 2, batch_size: 6, lora_rank: 4}\n"
        "economics: {platforms: [azure-openai, together/lora-up-to-16b, self-hosted, vertex]}\n"
    )
    code, out, err = run_cli("train", "--dry-run", "--precision", "float32", "--json", cwd=tmp_path)
    assert code == 0, err
    plan = json.loads(out)
    costs = {c["platform"]: c for c in plan["training_costs"]}
    assert list(costs) == [
        "azure-openai/gpt-4o-mini",
        "together/lora-up-to-16b",
        "self-hosted/gpu",
        "vertex/gemini",
    ]
    # Every token of the file x epochs x the catalog's price per million: $25 (Azure), $0.48 (Together).
    billed = plan["tokens_per_epoch"] * 2
    assert costs["azure-openai/gpt-4o-mini"]["dollars"] == pytest.approx(billed * 25.0 / 1e6)
    assert costs["together/lora-up-to-16b"]["dollars"] == pytest.approx(billed * 0.48 / 1e6)
    assert costs["self-hosted/gpu"]["dollars"] is None  # no GPU rate in the built-in catalog
    assert "no training_per_hour in the catalog" in costs["self-hosted/gpu"]["basis"]
    assert costs["vertex/gemini"]["dollars"] is None  # the guide gives Vertex no rate: unknown, not zero
    assert "no training_per_million_tokens in the catalog" in costs["vertex/gemini"]["basis"]

    # A pricing override with an hourly rate prices the time estimated from the measured step.
    code, out, err = run_cli(
        "train", "--dry-run", "--precision", "float32", "--json", "--platform", "self-hosted",
        "--pricing", "prices.yaml", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    plan = json.loads(out)
    [cost] = plan["training_costs"]
    assert cost["dollars"] == pytest.approx(plan["estimated_time_s"] / 3600 * 3.0)
    spec = (tmp_path / "tunewise.yaml").read_text()  # the same override named by the spec
    (tmp_path / "tunewise.yaml").write_text(
        spec.replace("economics: {", "economics: {pricing_file: prices.yaml, ")
    )
    code, out, err = run_cli("train", "--dry-run", "--precision", "float32", "--json", cwd=tmp_path)
    assert code == 0, err
    costs = {c["platform"]: c for c in json.loads(out)["training_costs"]}
    assert costs["self-hosted/gpu"]["dollars"] is not None and "per hour" in costs["self-hosted/gpu"]["basis"]
    (tmp_path / "tunewise.yaml").write_text(spec)

    # The text plan shows them; an unknown platform fails clearly before anything is measured.
    code, out, err = run_cli("train", "--dry-run", "--precision", "float32", cwd=tmp_path)
    assert code == 0 and "estimated training cost" in out and "azure-openai/gpt-4o-mini" in out, err
    code, out, err = run_cli("train", "--dry-run", "--platform", "togther", cwd=tmp_path)
    assert code == 1 and "no pricing entry or platform named 'togther'" in err and "together" in err
    assert "Traceback" not in err and "measured" not in err + out


def test_cli_keeps_the_last_weights_when_its_held_out_files_are_the_specs_test_set(tmp_path, run_cli):
    (tmp_path / "data").mkdir()
    write_chat(tmp_path / "data" / "train.jsonl", 16)
    write_chat(tmp_path / "data" / "eval.jsonl", 6, seed=1)
    write_chat(tmp_path / "validation.jsonl", 6, seed=2)
    (tmp_path / "tunewise.yaml").write_text(
        "task: {name: sentiment, target: Label the sentiment of a movie review sentence}\n"
        "data: {train: data/train.jsonl, eval: data/eval.jsonl}\n"
        "model: {base: 'tiny:random'}\n"
        "hyperparameters: {epochs: 1, batch_size: 8, lora_rank: 4}\n"
    )

    def keep_best(*flags):
        code, out, err = run_cli(
            "train", "--precision", "float32", "--no-progress", "--json", *flags, cwd=tmp_path
        )
        assert code == 0, err
        config = json.loads((Path(json.loads(out)["run_dir"]) / "config.json").read_text())["config"]
        return config["keep_best"], [Path(p).name for p in config["eval_data"]]

    assert keep_best() == (False, ["eval.jsonl"])  # the spec's test set: reported, never chosen on
    assert keep_best("--eval", tmp_path / "validation.jsonl") == (True, ["validation.jsonl"])
    assert keep_best("--keep-best") == (True, ["eval.jsonl"])  # the user's explicit choice
