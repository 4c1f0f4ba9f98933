"""The completion-only mask and padding-free packing, checked against the real SmolLM2 chat template."""

from __future__ import annotations

import doctest
import json

import pytest

from tunewise.errors import TunewiseError


@pytest.fixture(scope="module")
def tokenizer():
    from tunewise.models.loading import load_tokenizer

    return load_tokenizer("embedded:smollm2-135m-instruct")


def masked_runs(tokenizer, example) -> list[str]:
    """The decoded text of each contiguous run of trained tokens."""
    runs, current = [], []
    for token, m in zip(example.input_ids, example.mask, strict=True):
        if m:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


CONVERSATION = [
    {"role": "system", "content": "Classify the sentiment."},
    {"role": "user", "content": "a great film"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "and this one?\nIt was dull."},
    {"role": "assistant", "content": "I think: negative.\n(weight 0: context only)", "weight": 0},
    {"role": "user", "content": "last one"},
    {"role": "assistant", "content": "négatif 😀, with <b>markup</b>\n  and spaces  "},
]


def test_mask_covers_exactly_assistant_content_and_end_of_turn(tokenizer):
    from tunewise.train.data import tokenize_example

    example = tokenize_example(tokenizer, CONVERSATION)
    eot = tokenizer.eos_token
    assert eot == "<|im_end|>"
    # Exactly the weight-1 assistant messages, each followed by its end-of-turn token, nothing else.
    assert masked_runs(tokenizer, example) == [
        "positive" + eot,
        "négatif 😀, with <b>markup</b>\n  and spaces  " + eot,
    ]
    # The token ids themselves (not only the text) are the tokenization of the whole rendered chat.
    rendered = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in CONVERSATION], tokenize=False
    )
    assert example.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_mask_is_not_derived_from_padding(tokenizer):
    """pad == eos in SmolLM2: the end-of-turn of assistant turns is trained, those of other turns are not."""
    from tunewise.train.data import tokenize_example

    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    example = tokenize_example(tokenizer, CONVERSATION)
    eos_positions = [t for t, tok in enumerate(example.input_ids) if tok == tokenizer.eos_token_id]
    trained_eos = [t for t in eos_positions if example.mask[t]]
    # system, user, user(weight-0 assistant), user: untrained; two weight-1 assistant turns: trained.
    assert len(eos_positions) == 7
    assert len(trained_eos) == 2
    assert example.mask[-1] == 0  # the newline after the last <|im_end|> is not a target


def test_default_system_prompt_is_context_not_target(tokenizer):
    from tunewise.train.data import tokenize_example

    example = tokenize_example(
        tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    )
    assert "SmolLM" in tokenizer.decode(example.input_ids)  # the template's default system prompt
    assert masked_runs(tokenizer, example) == ["hello<|im_end|>"]


def test_refuses_data_with_nothing_to_train(tmp_path):
    from tunewise.train import TrainConfig, prepare

    path = tmp_path / "weights0.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TunewiseError, match="no token of the training data would be trained"):
        prepare(TrainConfig(data=[str(path)], base="tiny:random"))


def test_reports_every_bad_line_at_once(tmp_path):
    from tunewise.train.data import read_jsonl

    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\nnot json\n{"messages": [{"role": "bot", "content": "x"}]}\n')
    with pytest.raises(TunewiseError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert "3 problem(s)" in message
    assert f"{path}:1" in message and f"{path}:2" in message and f"{path}:3" in message


@pytest.mark.parametrize("attention", ["sdpa", "tunewise_packed"])
def test_packing_does_not_leak_attention_or_positions(tokenizer, attention):
    """Hidden states of an example packed after another equal those of the example alone, both with
    transformers' block-diagonal mask (sdpa) and with tunewise's per-example attention."""
    import torch

    from tunewise.models.loading import tiny_model
    from tunewise.train.attention import use_packed_attention
    from tunewise.train.data import pack, tokenize_example
    from tunewise.train.loop import packed_hidden

    model = tiny_model(tokenizer).eval()
    use_packed_attention(model, attention == "tunewise_packed")
    assert model.config._attn_implementation == attention
    a = tokenize_example(
        tokenizer,
        [{"role": "user", "content": "first one, longer text here"}, {"role": "assistant", "content": "yes"}],
    )
    b = tokenize_example(
        tokenizer, [{"role": "user", "content": "second"}, {"role": "assistant", "content": "no"}]
    )
    with torch.no_grad():
        packed = pack([a, b])
        hidden = packed_hidden(model, packed)
        hidden_b = packed_hidden(model, pack([b]))
    torch.testing.assert_close(hidden[0, len(a) :], hidden_b[0], rtol=1e-4, atol=1e-5)
    # Targets never cross the boundary: the first token of b is not predicted from the last token of a.
    assert len(a) - 1 not in packed["select"].tolist()
    assert packed["targets"].numel() == sum(a.mask[1:]) + sum(b.mask[1:])


def test_held_out_loss_per_example_equals_each_example_scored_alone(tokenizer):
    """The per-example loss sums that decide whether an earlier step beat the last: one per example, in the
    data's order whatever the packing, each equal to that example's loss scored alone, adding up to the mean."""
    import torch

    from tunewise.models.loading import tiny_model
    from tunewise.train.data import TokenizedData, tokenize_example
    from tunewise.train.loop import batch_loss, evaluate_examples

    torch.manual_seed(0)
    model = tiny_model(tokenizer).eval()
    texts = [("a great film " * k, ["positive", "negative"][k % 2]) for k in range(1, 8)]
    examples = [
        tokenize_example(tokenizer, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        for q, a in texts
    ]
    # 64 tokens per micro-batch: several examples share a row, and the longest sits alone.
    scores, sums = evaluate_examples(model, TokenizedData(examples), 64, None)
    assert len(sums) == len(examples)
    with torch.no_grad():
        alone = [batch_loss(model, [ex], None)[0].item() for ex in examples]
    assert sums == pytest.approx(alone, rel=1e-5)
    tokens = sum(sum(ex.mask[1:]) for ex in examples)
    assert scores["eval_tokens"] == tokens
    assert scores["eval_loss"] == pytest.approx(sum(alone) / tokens, rel=1e-6)


def assert_bf16_attention_close(out, expected, values) -> None:
    """bf16 attention output `out` against fp32's `expected`: torch's bf16 kernel rounds its probabilities before
    the product with the values, so an output that is a small sum of large terms carries an error of the
    values' size times bf16's epsilon."""
    import torch

    eps = torch.finfo(torch.bfloat16).eps
    torch.testing.assert_close(out.float(), expected, rtol=eps, atol=eps * values.float().abs().max().item())


def test_packed_attention_on_bf16_rows_answers_in_bf16_within_one_rounding_of_fp32():
    import torch
    import torch.nn.functional as F

    from tunewise.train.attention import _packed_sdpa

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, 10, 8, generator=gen).bfloat16() for _ in range(3))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])  # two packed examples: 4 and 6 tokens
    out, _ = _packed_sdpa(None, q, k, v, None, position_ids=positions)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 10, 3, 8)
    # What fp32 attention gives on the same (bf16-valued) inputs, example by example, to bf16 rounding. A token
    # attending across the example boundary, or a missing causal mask, would be off by far more.
    expected = torch.cat(
        [
            F.scaled_dot_product_attention(
                q[:, :, s:e].float(), k[:, :, s:e].float(), v[:, :, s:e].float(), is_causal=True
            )  # fmt: skip
            for s, e in ((0, 4), (4, 10))
        ],
        dim=2,
    )
    assert_bf16_attention_close(out, expected.transpose(1, 2), v)


def test_data_order_and_micro_batches_cover_every_example_once():
    from tunewise.train.data import micro_batches, step_batches

    lengths = [7, 30, 12, 5, 64, 9, 18, 3, 41, 22]
    steps = step_batches(len(lengths), 4, seed=3, epoch=1)
    assert sorted(i for s in steps for i in s) == list(range(10))
    assert steps == step_batches(len(lengths), 4, seed=3, epoch=1)
    assert steps != step_batches(len(lengths), 4, seed=3, epoch=2)
    for step in steps:
        groups = micro_batches(lengths, step, max_tokens=40)
        assert sorted(i for g in groups for i in g) == sorted(step)
        for g in groups:
            assert len(g) == 1 or sum(lengths[i] for i in g) <= 40


def test_doctests():
    import tunewise.models.loading
    import tunewise.train.config
    import tunewise.train.data
    import tunewise.train.loop

    for module in (tunewise.train.data, tunewise.train.config, tunewise.train.loop, tunewise.models.loading):
        failures, _ = doctest.testmod(module)
        assert failures == 0, module.__name__


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cpu_rows_keep_their_dtype_and_get_fp32_gradients_per_example(dtype: str):
    """The CPU path computes attention per example (GQA, a 1-token example included), returns the output in the
    o projection's layout and the input's dtype, and gives the output and gradients fp32 autograd gives (to
    bf16 rounding for bf16 rows, whose backward pass runs in fp32)."""
    import torch
    import torch.nn.functional as F

    from tunewise.train.attention import _flash_per_example

    low = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 12, 8, generator=gen).to(low).requires_grad_()
    k, v = (torch.randn(1, 2, 12, 8, generator=gen).to(low).requires_grad_() for _ in range(2))
    bounds = [(0, 5), (5, 6), (6, 12)]
    out = _flash_per_example(q, k, v, bounds, 0.3)
    assert out.dtype == low and out.shape == (1, 12, 6, 8) and out.is_contiguous()
    grad = torch.randn(out.shape, generator=gen).to(low)
    out.backward(grad)

    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    pieces = [
        F.scaled_dot_product_attention(
            qf[:, :, s:e], kf[:, :, s:e], vf[:, :, s:e], is_causal=e - s > 1, scale=0.3, enable_gqa=True
        )  # fmt: skip
        for s, e in bounds
    ]
    expected = torch.cat(pieces, dim=2).transpose(1, 2)
    expected.backward(grad.float())
    if low == torch.bfloat16:
        assert_bf16_attention_close(out, expected, v)
    else:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    tolerance = 2e-2 if low == torch.bfloat16 else 1e-5
    for ours, reference in ((q, qf), (k, kf), (v, vf)):
        assert ours.grad.dtype == low and ours.grad.shape == reference.grad.shape
        torch.testing.assert_close(ours.grad.float(), reference.grad, rtol=tolerance, atol=tolerance)
