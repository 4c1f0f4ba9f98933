"""Micro-batches two at a time (train/workers.py): the same gradient as one thread, summed in micro-batch order,
the same every time; `auto` uses them only where that holds and pays; the settings are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train import config, write_chat

from tunewise.errors import TunewiseError
from tunewise.project import Project
from tunewise.train.workers import MicroBatchWorkers, draws_random_numbers, workers_for


@pytest.fixture
def tiny_lora(tmp_path: Path):
    """The tiny model with LoRA (B perturbed so that every factor gets a gradient), its examples, and micro-
    batches of at most 48 tokens: several per step, of uneven sizes."""
    import torch

    from tunewise.train import loop
    from tunewise.train.config import auto_hyperparameters
    from tunewise.train.data import micro_batches
    from tunewise.train.model import build_model

    data = write_chat(tmp_path / "train.jsonl", 24)
    cfg = config((data, data), eval_data=[], lora_rank=4)
    prepared = loop.prepare(cfg)
    examples = prepared.train.examples
    resolved = auto_hyperparameters(cfg, len(examples), 3_400_000, 512, prepared.context_length)
    model = build_model(cfg, resolved, prepared.tokenizer)
    model.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    groups = micro_batches([len(e) for e in examples], range(len(examples)), 48)
    assert len(groups) > 4
    return model, examples, groups


def _gradient(model, examples, groups, workers: int, threads: int):
    import torch

    from tunewise.train.model import loss_of, trainable_params

    params = trainable_params(model)
    for p in params:
        p.grad = None
    pool = MicroBatchWorkers()
    pool.configure(workers, threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        total = pool.gradient(loss_of(model, examples, None), groups, params, 37.0)
        assert torch.get_num_threads() == threads  # the workers' one thread each is undone after the step
    finally:
        pool.close()
        torch.set_num_threads(before)
    return total, [p.grad.clone() for p in params]


def test_two_workers_give_one_threads_gradient_summed_in_micro_batch_order(tiny_lora):
    """Each micro-batch's gradient is computed by one single-threaded worker, and the sums run in micro-batch
    order: bit for bit what sequential backward() calls on one thread give, and the same on every call."""
    import torch

    model, examples, groups = tiny_lora
    one_total, one = _gradient(model, examples, groups, workers=1, threads=1)
    two_total, two = _gradient(model, examples, groups, workers=2, threads=2)
    again_total, again = _gradient(model, examples, groups, workers=2, threads=2)

    assert all(g.abs().sum() > 0 for g in one)  # every factor has a gradient to compare
    assert torch.equal(one_total, two_total) and torch.equal(two_total, again_total)
    for a, b, c in zip(one, two, again, strict=True):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_the_loss_is_the_sum_over_micro_batches_divided_once(tiny_lora):
    """The returned loss is the undivided sum of the micro-batches' losses (what the step logs)."""
    import torch

    from tunewise.train.model import loss_of

    model, examples, groups = tiny_lora
    total, _ = _gradient(model, examples, groups, workers=2, threads=2)
    with torch.no_grad():
        expected = sum(loss_of(model, examples, None)(g).double() for g in groups)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-6)


def test_an_error_in_a_worker_reaches_the_caller_and_restores_the_threads(tiny_lora):
    import torch

    from tunewise.train.model import loss_of, trainable_params

    model, examples, groups = tiny_lora
    pool = MicroBatchWorkers()
    pool.configure(2, 2)
    before = torch.get_num_threads()

    def failing(group):
        if group is groups[3]:
            raise ValueError("micro-batch 3 failed")
        return loss_of(model, examples, None)(group)

    with pytest.raises(ValueError, match="micro-batch 3 failed"):
        pool.gradient(failing, groups, trainable_params(model), 1.0)
    pool.close()
    assert torch.get_num_threads() == before


def test_closing_without_waiting_leaves_a_micro_batch_in_flight_and_drops_the_queued_ones():
    import threading

    pool = MicroBatchWorkers()
    pool.configure(2, 2)
    release, started, ran = threading.Event(), threading.Semaphore(0), []

    def slow(batch: int) -> int:
        started.release()
        release.wait(60)
        ran.append(batch)
        return batch

    futures = [pool._started().submit(slow, i) for i in range(6)]
    for _ in range(2):  # both workers busy, four micro-batches queued
        assert started.acquire(timeout=60)
    closer = threading.Thread(target=pool.close, kwargs={"wait": False})
    closer.start()
    closer.join(30)  # a close that waited would still be waiting: the two in flight wait for `release`
    assert not closer.is_alive() and ran == []
    assert sum(f.cancelled() for f in futures) == 4
    release.set()
    assert sorted(f.result(timeout=60) for f in futures[:2]) == [0, 1] and sorted(ran) == [0, 1]


def test_auto_uses_two_workers_only_for_exact_fp32_lora_on_a_multi_core_cpu():
    def auto(method="lora", device="cpu", threads=2, randomness=False, dtype="float32"):
        return workers_for("auto", method, device, threads, randomness, dtype)

    assert auto() == 2 and auto(threads=16) == 2
    assert auto(threads=1) == 1
    assert auto(device="cuda", threads=8) == 1
    assert auto(method="full") == 1  # model-sized gradients
    assert auto(randomness=True) == 1  # dropout's draws would race
    assert auto(dtype="bfloat16") == 1  # measured no faster on a bf16 base
    assert workers_for(3, "lora", "cpu", 2, True, "bfloat16") == 3  # the user's choice stands


def test_dropout_counts_as_randomness(tmp_path):
    from tunewise.train import loop
    from tunewise.train.config import auto_hyperparameters
    from tunewise.train.model import build_model

    data = write_chat(tmp_path / "train.jsonl", 8)
    for dropout, expected in ((0.0, False), (0.1, True)):
        cfg = config((data, data), eval_data=[], lora_dropout=dropout)
        prepared = loop.prepare(cfg)
        resolved = auto_hyperparameters(cfg, 8, 3_400_000, 512, prepared.context_length)
        assert draws_random_numbers(build_model(cfg, resolved, prepared.tokenizer)) is expected


def test_worker_settings_are_checked():
    from tunewise.train import TrainConfig

    for bad in (0, -1, 65, "two", 1.5, True):
        with pytest.raises(TunewiseError, match="micro_batch_workers: Input should be"):
            TrainConfig(micro_batch_workers=bad)
    with pytest.raises(TunewiseError, match="micro_batch_workers above 1 is for LoRA"):
        TrainConfig(method="full", micro_batch_workers=2)
    assert TrainConfig(method="full", micro_batch_workers=1).micro_batch_workers == 1


def test_a_run_with_two_workers_is_repeatable_and_matches_one_thread(tmp_path):
    """Whole runs: two workers give the same adapter twice, equal to a one-thread run's."""
    import torch
    from safetensors.torch import load_file

    from tunewise.train import run

    data = write_chat(tmp_path / "train.jsonl", 24)

    def adapter(name: str, **overrides) -> dict:
        cfg = config((data, data), eval_data=[], epochs=2, micro_batch_tokens=48, **overrides)
        result = run(cfg, Project(tmp_path / name))
        return load_file(str(Path(result.output) / "adapter_model.safetensors"))

    one = adapter("one", threads=1, micro_batch_workers=1)
    two = adapter("two", threads=2, micro_batch_workers=2)
    again = adapter("again", threads=2, micro_batch_workers=2)
    assert one.keys() == two.keys() == again.keys()
    for name in one:
        assert torch.equal(two[name], again[name]), name
        assert torch.equal(one[name], two[name]), name


def test_held_out_scores_from_two_workers_equal_one_threads(tiny_lora):
    """Evaluation maps micro-batches over the workers with gradients off in each worker's own thread: the same
    scores and per-example sums as one thread, and no autograd graph kept."""
    import torch

    from tunewise.train.data import TokenizedData
    from tunewise.train.loop import evaluate_examples

    model, examples, _ = tiny_lora
    data = TokenizedData(examples)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = evaluate_examples(model, data, 48, None)
    finally:
        torch.set_num_threads(before)
    pool = MicroBatchWorkers()
    pool.configure(2, 2)
    recorded = []
    real_map = pool.map

    def recording_map(fn, batches):
        results = real_map(fn, batches)
        recorded.extend(sums for sums, _, _ in results)
        return results

    pool.map = recording_map
    try:
        together = evaluate_examples(model, data, 48, None, workers=pool)
    finally:
        pool.close()
    assert together == alone
    assert len(recorded) > 4 and not any(sums.requires_grad for sums in recorded)
    assert model.training  # restored


def test_the_plan_uses_two_workers_in_fp32_and_one_on_a_bf16_base(tmp_path):
    from tunewise.train import run

    data = write_chat(tmp_path / "train.jsonl", 16)
    for precision, expected in (("float32", 2), ("bfloat16", 1)):
        cfg = config((data, data), eval_data=[], threads=2, precision=precision)
        plan = run(cfg, Project(tmp_path / precision), dry_run=True)
        assert plan.micro_batch_workers == expected, precision
        assert ("2 at a time" in plan.describe()) is (expected == 2)
    single = config((data, data), eval_data=[], threads=1, precision="float32")
    assert run(single, Project(tmp_path / "single"), dry_run=True).micro_batch_workers == 1
