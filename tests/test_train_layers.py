"""The fused Llama layer forwards (train/layers.py) compute what the model's own forward computes, and step
aside where they do not apply."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _lora_model():
    from peft import LoraConfig, get_peft_model

    from tunewise.models.loading import TINY_MODEL, load_model, load_tokenizer
    from tunewise.train.attention import use_packed_attention

    torch.manual_seed(0)
    model = load_model(TINY_MODEL, "float32", tokenizer=load_tokenizer(TINY_MODEL), seed=0)
    use_packed_attention(model)
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    )
    with torch.no_grad():  # LoRA B starts at zero, which would hide a wrong update: give it values
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def _packed_row():
    """Two examples packed in one row: positions restart at 0 where the second begins."""
    ids = torch.randint(0, 1000, (1, 21), generator=torch.Generator().manual_seed(3))
    positions = torch.cat([torch.arange(13), torch.arange(8)])[None]
    return ids, positions


def _logits_and_grads(model, ids, positions):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    logits.float().pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach().float(), grads


def test_rms_norm_equals_llamas_in_fp32_and_bf16_and_its_gradients_are_exact():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from tunewise.train.layers import rms_norm

    x = torch.randn(5, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, dtype=torch.float64, requires_grad=True)
    # gradcheck compares the analytic backward with finite differences, for the input and the weight
    assert torch.autograd.gradcheck(lambda a, w: rms_norm(a, w, 1e-5), (x, weight))

    norm = LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    for dtype in (torch.float32, torch.bfloat16):
        norm = norm.to(dtype)
        a = torch.randn(3, 9, 16).to(dtype)
        torch.testing.assert_close(rms_norm(a, norm.weight, 1e-5), norm(a), rtol=0, atol=0)


def test_rotate_equals_transformers_rotary_embedding_and_its_backward_is_the_inverse_rotation():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from tunewise.train.layers import rotate

    q = torch.randn(1, 6, 4, 8, dtype=torch.float64, requires_grad=True)  # (batch, tokens, heads, head_dim)
    angles = torch.randn(1, 6, 4, dtype=torch.float64)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    assert torch.autograd.gradcheck(lambda t: rotate(t, cos[:, :, None], sin[:, :, None]), (q,))
    # transformers works on (batch, heads, tokens, head_dim)
    expected, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos, sin)
    torch.testing.assert_close(rotate(q, cos[:, :, None], sin[:, :, None]).transpose(1, 2), expected)


def test_gated_lora_linear_equals_lora_linear_on_the_gated_product():
    from tunewise.train.fused import gated_lora_linear, lora_linear

    gate_up = torch.randn(7, 2 * 13, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 13, dtype=torch.float64)
    a = torch.randn(3, 13, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gated_lora_linear, (gate_up, weight, a, b))
    gate, up = gate_up.chunk(2, dim=-1)
    expected = lora_linear(torch.nn.functional.silu(gate) * up, weight, a, b)
    torch.testing.assert_close(gated_lora_linear(gate_up, weight, a, b), expected)


def test_fused_layers_give_the_same_logits_and_gradients_as_peft_on_a_packed_row():
    from tunewise.train.fused import use_fused_lora
    from tunewise.train.layers import use_fused_layers

    ids, positions = _packed_row()
    model = _lora_model()
    layers = len(model.get_base_model().model.layers)
    plain_logits, plain_grads = _logits_and_grads(model, ids, positions)
    use_fused_lora(model)
    assert use_fused_layers(model) == {"norm": 2 * layers + 1, "attention": layers, "mlp": layers}
    fused_logits, fused_grads = _logits_and_grads(model, ids, positions)
    torch.testing.assert_close(fused_logits, plain_logits, rtol=1e-5, atol=1e-5)
    assert plain_grads.keys() == fused_grads.keys() and any("lora_A" in n for n in plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_projections_that_read_one_input_share_one_weight_tensor_also_after_a_dtype_change():
    from tunewise.train.fused import joined_weight
    from tunewise.train.layers import use_fused_layers
    from tunewise.train.mixed import frozen_temporarily, store_frozen

    model = _lora_model()
    use_fused_layers(model)  # its probe runs a forward: the weights are joined
    attention = model.get_base_model().model.layers[0].self_attn
    projections = [attention.q_proj, attention.k_proj, attention.v_proj]

    def adjacent() -> bool:
        q, k, v = (p.base_layer.weight for p in projections)
        return (
            k.data_ptr() == q.data_ptr() + q.numel() * q.element_size()
            and v.data_ptr() == k.data_ptr() + k.numel() * k.element_size()
        )

    assert adjacent()
    q, k, v = (p.base_layer.weight for p in projections)
    joined = joined_weight(projections)
    assert joined.data_ptr() == q.data_ptr()  # a view of the weights, not a copy
    assert joined.shape == (q.shape[0] + k.shape[0] + v.shape[0], q.shape[1])
    torch.testing.assert_close(joined, torch.cat([q, k, v]))

    ids, positions = _packed_row()
    fp32_logits, _ = _logits_and_grads(model, ids, positions)
    with frozen_temporarily(model, torch.bfloat16):  # the precision measurement's swap, and back
        assert adjacent() and q.dtype == torch.bfloat16  # converted together: no stacking again
        _logits_and_grads(model, ids, positions)
    again, _ = _logits_and_grads(model, ids, positions)
    torch.testing.assert_close(again, fp32_logits, rtol=0, atol=0)
    store_frozen(model, torch.bfloat16)
    assert adjacent()
    bf16_logits, grads = _logits_and_grads(model, ids, positions)
    assert joined_weight(projections).dtype == torch.bfloat16 == attention.q_proj.base_layer.weight.dtype
    assert all(g.dtype == torch.float32 for g in grads.values())  # the adapters stayed fp32
    torch.testing.assert_close(bf16_logits, fp32_logits, rtol=0.05, atol=0.05)


def test_generation_with_a_kv_cache_and_a_disabled_adapter_take_the_models_own_forward():
    from tunewise.train.fused import use_fused_lora
    from tunewise.train.layers import use_fused_layers

    model = _lora_model().eval()
    prompt = torch.randint(0, 1000, (1, 6), generator=torch.Generator().manual_seed(5))

    def generate():
        with torch.no_grad():
            return model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)

    plain = generate()
    with model.disable_adapter(), torch.no_grad():
        plain_base = model(input_ids=prompt).logits
    use_fused_lora(model)
    use_fused_layers(model)
    assert torch.equal(generate(), plain)
    with model.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(model(input_ids=prompt).logits, plain_base)


def test_the_probe_undoes_the_patches_when_a_module_computes_something_else():
    from tunewise.train.layers import use_fused_layers

    model = _lora_model()
    norm = model.get_base_model().model.norm
    odd = lambda x: x * 2  # noqa: E731 - a final norm that is not an RMSNorm, whatever its name says
    norm.forward = odd
    ids, positions = _packed_row()
    before, _ = _logits_and_grads(model, ids, positions)
    assert use_fused_layers(model) == {}
    assert norm.forward is odd
    attention = model.get_base_model().model.layers[0].self_attn
    assert "forward" not in attention.__dict__  # back to the class's own forward
    after, _ = _logits_and_grads(model, ids, positions)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
