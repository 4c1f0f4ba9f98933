"""The memory-lean training pieces compute exactly what the plain PyTorch / PEFT code computes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("train_weight", [False, True])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_cross_entropy_equals_the_full_logits_path(chunk, train_weight):
    """Loss, argmax count and both gradients equal F.cross_entropy over all logits, whatever the chunking
    (a chunk that does not divide the positions, one chunk bigger than all of them)."""
    import torch.nn.functional as F

    from tunewise.train.loss import linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(50, 16, generator=gen, requires_grad=True)
    weight = torch.randn(300, 16, generator=gen, requires_grad=train_weight)
    targets = torch.randint(0, 300, (50,), generator=gen)
    targets[:5] = (hidden[:5] @ weight[:, :].t()).argmax(-1).detach()  # a few right answers to count

    loss, correct = linear_cross_entropy(hidden, weight, targets, chunk=chunk)
    (loss * 0.25).backward()  # a scale, as the step normalization applies
    grads = (hidden.grad.clone(), weight.grad.clone() if train_weight else None)
    hidden.grad = None
    weight.grad = None

    logits = hidden @ weight.t()
    expected = F.cross_entropy(logits, targets, reduction="sum")
    (expected * 0.25).backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    assert int(correct) == int((logits.argmax(-1) == targets).sum()) >= 5
    torch.testing.assert_close(grads[0], hidden.grad, rtol=1e-4, atol=1e-6)
    if train_weight:
        torch.testing.assert_close(grads[1], weight.grad, rtol=1e-4, atol=1e-6)


def test_a_tie_for_the_highest_logit_counts_as_argmax_does_the_first_index():
    from tunewise.train.loss import linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    hidden = torch.rand(6, 8, generator=gen) + 0.5  # positive rows
    weight = torch.randn(20, 8, generator=gen)
    weight[11] = weight[3] = 10.0  # tokens 3 and 11 share the highest logit in every row
    logits = hidden @ weight.t()
    assert (logits.argmax(-1) == 3).all()
    with torch.no_grad():
        _, first = linear_cross_entropy(hidden, weight, torch.full((6,), 3), chunk=4)
        _, second = linear_cross_entropy(hidden, weight, torch.full((6,), 11), chunk=4)
    assert (int(first), int(second)) == (6, 0)


def test_chunked_cross_entropy_without_gradients_only_scores():
    from tunewise.train.loss import linear_cross_entropy

    hidden, weight = torch.randn(10, 8), torch.randn(40, 8)
    targets = torch.randint(0, 40, (10,))
    with torch.no_grad():
        loss, correct = linear_cross_entropy(hidden, weight, targets, chunk=3)
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    torch.testing.assert_close(loss, expected)
    assert not loss.requires_grad and 0 <= int(correct) <= 10


def _lora_model():
    from peft import LoraConfig, get_peft_model

    from tunewise.models.loading import TINY_MODEL, load_model, load_tokenizer

    torch.manual_seed(0)
    model = load_model(TINY_MODEL, "float32", tokenizer=load_tokenizer(TINY_MODEL), seed=0)
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    )
    # LoRA B starts at zero, which would hide a wrong update: give it values.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def test_fused_lora_forward_equals_peft_outputs_and_gradients():
    from tunewise.train.fused import use_fused_lora

    ids = torch.randint(0, 1000, (1, 24))

    def run(model):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits
        logits.float().pow(2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logits.detach(), grads

    model = _lora_model()
    plain_logits, plain_grads = run(model)
    assert use_fused_lora(model) > 0
    fused_logits, fused_grads = run(model)
    torch.testing.assert_close(fused_logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert plain_grads.keys() == fused_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_fused_lora_steps_aside_when_the_adapter_is_disabled_or_autocast_is_on():
    from tunewise.train.fused import use_fused_lora

    model = _lora_model()
    use_fused_lora(model)
    ids = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        with_adapter = model(input_ids=ids).logits
        with model.disable_adapter():
            without = model(input_ids=ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(input_ids=ids).logits
    assert not torch.allclose(with_adapter, without)
    torch.testing.assert_close(mixed.float(), with_adapter, rtol=0.1, atol=0.1)


def test_chunked_cross_entropy_under_bf16_autocast_stays_close_to_fp32():
    """Under autocast the products run in bf16 (the head cast once per call); loss and gradient keep to bf16's
    precision of the fp32 result."""
    from tunewise.train.loss import linear_cross_entropy

    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 32, generator=gen, requires_grad=True)
    weight = torch.randn(500, 32, generator=gen) / 4
    targets = torch.randint(0, 500, (40,), generator=gen)
    loss, _ = linear_cross_entropy(hidden, weight, targets, chunk=16)
    loss.backward()
    fp32_grad, hidden.grad = hidden.grad.clone(), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = linear_cross_entropy(hidden, weight, targets, chunk=16)
    mixed.backward()
    assert mixed.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    torch.testing.assert_close(mixed, loss, rtol=2e-2, atol=0.0)
    torch.testing.assert_close(hidden.grad, fp32_grad, rtol=5e-2, atol=2e-2)


def test_bf16_base_with_fp32_adapters_computes_what_fp32_does_to_bf16_precision():
    """The bf16 LoRA setting (train/mixed.py): frozen weights in bf16, adapters and their gradients in fp32;
    logits and adapter gradients agree with the all-fp32 model to bf16's precision."""
    from tunewise.train.fused import use_fused_lora
    from tunewise.train.mixed import store_frozen

    model = _lora_model()
    use_fused_lora(model)
    ids = torch.randint(0, 1000, (1, 24))

    def run():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits
        logits.float().pow(2).mean().backward()
        return logits.detach().float(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    fp32_logits, fp32_grads = run()
    store_frozen(model, torch.bfloat16)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    bf16_logits, bf16_grads = run()
    assert bf16_grads.keys() == fp32_grads.keys()
    assert all(g.dtype == torch.float32 for g in bf16_grads.values())  # the adapters stayed fp32
    torch.testing.assert_close(bf16_logits, fp32_logits, rtol=0.05, atol=0.05)
    for name, grad in fp32_grads.items():
        # Per tensor, relative to its scale: bf16 rounds at about 0.4% per operation, through every layer.
        assert (bf16_grads[name] - grad).norm() <= 0.1 * grad.norm(), name


def test_frozen_temporarily_restores_the_very_same_tensors_even_after_an_error():
    from tunewise.train.mixed import frozen_temporarily

    model = _lora_model()
    before = {n: (p.data_ptr(), p.dtype) for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"), frozen_temporarily(model, torch.bfloat16):
        assert model.get_base_model().lm_head.weight.dtype == torch.bfloat16
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
        raise RuntimeError("inside")
    # The original storage, not a conversion back (which would round whatever bf16 cannot hold).
    assert {n: (p.data_ptr(), p.dtype) for n, p in model.named_parameters()} == before


def test_only_lora_keeps_a_bf16_base_full_fine_tuning_uses_autocast():
    from tunewise.train.mixed import autocast_dtype, frozen_base_in_bf16

    assert frozen_base_in_bf16("lora", "bfloat16") and autocast_dtype("lora", "bfloat16") is None
    assert (
        not frozen_base_in_bf16("full", "bfloat16") and autocast_dtype("full", "bfloat16") == torch.bfloat16
    )
    assert autocast_dtype("lora", "float32") is None and autocast_dtype("full", "float32") is None


def test_tuning_the_process_caps_the_kernel_caches_unless_the_environment_sets_them():
    """Both oneDNN kernel caches default to 1,024 shapes, which grew training's memory step after step; training
    and serving cap them when they start (tunewise.runtime), and a value the user already set wins."""
    show = (
        "import os; from tunewise.runtime import tune_process; tune_process(); "
        "print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
    }
    defaults = subprocess.run(
        [sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True
    )
    assert defaults.stdout.split() == ["32", "32"]
    env["LRU_CACHE_CAPACITY"] = "7"
    chosen = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.split() == ["32", "7"]


ARENAS = """
import ctypes, sys, threading
if sys.argv[1] == "tunewise":
    from tunewise.runtime import tune_process
    tune_process()
libc = ctypes.CDLL(None)
held = []

def allocate():
    # Small blocks, under glibc's mmap threshold: they come from the thread's heap.
    held.extend(ctypes.create_string_buffer(4096) for _ in range(64))

threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc.malloc_stats()  # one "Arena N:" section per heap, on stderr
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's per-thread heaps are Linux's")
def test_tuning_the_process_serves_every_thread_from_one_heap():
    """Memory one thread frees must serve the next micro-batch in another thread: with a heap per thread, two
    micro-batch workers raised training's peak by 0.7 GB. The environment's MALLOC_ARENA_MAX still wins."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def heaps(*args: str, **extra: str) -> int:
        run = subprocess.run(
            [sys.executable, "-c", ARENAS, *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            check=True,
        )
        return run.stderr.count("Arena ")

    if heaps("plain") < 2:
        pytest.skip("this C library gives threads no heaps of their own")
    assert heaps("tunewise") == 1
    assert heaps("tunewise", MALLOC_ARENA_MAX="4") > 1
