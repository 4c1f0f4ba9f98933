"""The gated MLP's fused `silu(gate) * up` (train/swiglu.py): same numbers, fewer tensors kept for backward."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=200, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _logits_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    logits.pow(2).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_fused_product_equals_autograd_outputs_and_gradients_of_both_inputs():
    from tunewise.train.swiglu import silu_mul

    gate = torch.randn(7, 13, dtype=torch.float64, requires_grad=True)
    up = torch.randn(7, 13, dtype=torch.float64, requires_grad=True)
    # gradcheck compares the analytic backward with finite differences of the forward.
    assert torch.autograd.gradcheck(silu_mul, (gate, up))
    out = silu_mul(gate, up)
    torch.testing.assert_close(out, torch.nn.functional.silu(gate) * up)


def test_fused_model_computes_the_same_logits_and_parameter_gradients():
    from tunewise.train.swiglu import use_fused_swiglu

    ids = torch.randint(0, 200, (1, 20))
    model = _llama()
    plain_logits, plain_grads = _logits_and_grads(model, ids)
    assert use_fused_swiglu(model) == 2  # one MLP per layer
    fused_logits, fused_grads = _logits_and_grads(model, ids)
    torch.testing.assert_close(fused_logits, plain_logits, rtol=1e-5, atol=1e-6)
    assert plain_grads.keys() == fused_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_mlp_keeps_one_intermediate_tensor_less_for_backward():
    from tunewise.train.swiglu import use_fused_swiglu

    def intermediate_tensors_saved(model, tokens: int = 11) -> int:
        """Saved tensors shaped (tokens, intermediate_size): the MLP activations, not the weights."""
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=torch.randint(0, 200, (1, tokens)))
        return sum(1 for s in shapes if s[-1] == 96 and tokens in s)

    model = _llama()
    before = intermediate_tensors_saved(model)
    use_fused_swiglu(model)
    after = intermediate_tensors_saved(model)
    layers = 2
    assert before - after == layers


def test_modules_with_another_activation_keep_their_forward():
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunewise.train.swiglu import use_fused_swiglu

    config = LlamaConfig(
        hidden_size=32, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=200, hidden_act="gelu",
    )  # fmt: skip
    assert use_fused_swiglu(LlamaForCausalLM(config)) == 0
