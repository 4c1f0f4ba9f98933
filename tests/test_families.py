"""Any local Hugging Face causal LM folder as model.base: a tiny random model of each family (Llama 3, Qwen2.5,
Qwen3, Mistral, Gemma 2, Phi-3) is built here from its config, with the embedded tokenizer given that family's
special tokens and chat template (no Hub download). For each: the loss mask covers exactly the replies and the
family's own end-of-turn marker, packed rows do not leak, a few LoRA steps lower the loss and evaluate, and the CPU
kernels turn themselves off, with the reason recorded, for families they are not tested on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Each family: (transformers config class, model class, its config's extra fields, special tokens, eos, template).
# The templates follow each family's published chat template in what matters to the mask: role headers, the
# end-of-turn marker, a default system prompt (Qwen2.5), the system folded into the first user turn (Gemma,
# Mistral) and Qwen3's empty think block on the reply after the last question.
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
    "+ m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
QWEN25 = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
QWEN3 = (
    "{% set ns = namespace(last_query=-1) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.last_query = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'assistant' and loop.index0 > ns.last_query and loop.last %}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\\n\\n' %}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + ns.system + m['content'] + ' [/INST]' }}{% set ns.system = '' %}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\\n\\n' %}{% else %}"
    "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + ns.system + m['content'] | trim + '<end_of_turn>\\n' }}"
    "{% set ns.system = '' %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
PHI3 = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>", "<|begin_of_text|>", LLAMA3, "<|eot_id|>"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", None, QWEN25, "<|im_end|>"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}, ["<|im_start|>", "<|im_end|>", "<think>", "</think>"], "<|im_end|>", None, QWEN3, "<|im_end|>"),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}, ["<s>", "</s>", "[INST]", "[/INST]"], "</s>", "<s>", MISTRAL, "</s>"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 64}, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<eos>", "<bos>", GEMMA, "<end_of_turn>"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}, ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], "<|endoftext|>", None, PHI3, "<|end|>"),
}  # fmt: skip


def build_family(folder: Path, family: str, seed: int = 0) -> Path:
    """A random `family` model folder (config.json, model.safetensors, tokenizer with the family's template)."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from tunewise.models.embedded import tokenizer_dir

    config_name, model_name, extra, specials, eos, bos, template, _ = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.eos_token = eos
    tokenizer.pad_token = eos
    if bos is not None:
        tokenizer.bos_token = bos
    tokenizer.chat_template = template
    vocab = len(tokenizer)
    config = getattr(transformers, config_name)(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **extra,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def families(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(root / name, name) for name in FAMILIES}


CONVERSATION = [
    {"role": "system", "content": "Classify the sentiment."},
    {"role": "user", "content": "a great film"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "and this one?\nIt was dull."},
    {"role": "assistant", "content": "I think: negative.", "weight": 0},
    {"role": "user", "content": "last one"},
    {"role": "assistant", "content": "négatif 😀, with <b>markup</b>"},
]


def masked_runs(tokenizer, example) -> list[str]:
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


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mask_covers_the_replies_and_the_familys_end_of_turn(families, family):
    from tunewise.models.loading import load_tokenizer
    from tunewise.train.data import tokenize_example

    tokenizer = load_tokenizer(str(families[family]))
    eot = FAMILIES[family][-1]
    example = tokenize_example(tokenizer, CONVERSATION)
    runs = masked_runs(tokenizer, example)
    if family == "qwen3":  # the last reply carries the empty think block the model emits before answering
        assert runs == ["positive" + eot, "<think>\n\n</think>\n\nnégatif 😀, with <b>markup</b>" + eot]
    else:
        assert runs == ["positive" + eot, "négatif 😀, with <b>markup</b>" + eot]
    rendered = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in CONVERSATION], tokenize=False
    )
    assert example.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_data_stage_counts_the_same_tokens_without_torch(families, family):
    """The data stage's torch-free tokenizer renders each family's template to the same ids."""
    from tunewise.models.loading import load_tokenizer
    from tunewise.models.tokenizer import ChatTokenizer

    plain = [{"role": m["role"], "content": m["content"]} for m in CONVERSATION]
    tokenizer = load_tokenizer(str(families[family]))
    expected = len(tokenizer.apply_chat_template(plain, tokenize=True, return_dict=True)["input_ids"])
    fast = ChatTokenizer.for_base(str(families[family]))
    assert fast.count([fast.render(plain)]) == [expected]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_rows_do_not_leak_across_examples(families, family):
    import torch

    from tunewise.models.loading import load_model, load_tokenizer
    from tunewise.train.data import pack, tokenize_example
    from tunewise.train.model import packed_hidden

    base = str(families[family])
    tokenizer = load_tokenizer(base)
    model = load_model(base).eval()
    model.config.use_cache = False
    a = tokenize_example(tokenizer, CONVERSATION[1:3])
    b = tokenize_example(
        tokenizer, [{"role": "user", "content": "second"}, {"role": "assistant", "content": "no"}]
    )
    with torch.no_grad():
        hidden = packed_hidden(model, pack([a, b]))
        alone = packed_hidden(model, pack([b]))
    torch.testing.assert_close(hidden[0, len(a) :], alone[0], rtol=1e-4, atol=1e-5)


def write_chat(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        good = i % 2 == 0
        rows.append({"messages": [
            {"role": "user", "content": f"review {i}: the film was {'great' if good else 'awful'}"},
            {"role": "assistant", "content": "positive" if good else "negative"},
        ]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_trains_and_evaluates_each_family(tmp_path, families, family):
    from tunewise.project import Project
    from tunewise.train import TrainConfig, run

    data = write_chat(tmp_path / "train.jsonl", 8)
    config = TrainConfig(
        data=[str(data)], eval_data=[str(data)], base=str(families[family]), epochs=3, batch_size=4,
        learning_rate=2e-2, lora_rank=4, precision="float32", threads=1, progress=False, keep_best=False,
    )  # fmt: skip
    result = run(config, Project(tmp_path))
    assert result.status == "succeeded", result.error
    assert result.steps == 6
    assert result.eval_after["eval_loss"] < result.eval_before["eval_loss"]
    assert (Path(result.output) / "adapter_model.safetensors").is_file()
    # The adapter's folder carries the family's tokenizer and template, as the base's folder does.
    saved = json.loads((Path(result.output) / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(families[family])
    kernels = json.loads((Path(result.run_dir) / "config.json").read_text())["kernels"]
    if family == "llama":
        assert kernels["enabled"] is True and kernels["attention"] == "tunewise_packed"
    else:
        assert kernels == {
            "enabled": False, "attention": "eager" if family == "gemma2" else "sdpa", "reason": f"auto: not tested on the {family} family"
        }  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_memory_estimate_counts_each_familys_parameters(families, family):
    """The estimate reads the parameter count from config.json alone; it equals the loaded model's."""
    from tunewise.models.loading import load_model
    from tunewise.train.memory import ModelShape

    model = load_model(str(families[family]))
    assert ModelShape.from_folder(families[family]).params == sum(p.numel() for p in model.parameters())


def test_the_plan_says_the_kernels_are_off_for_an_untested_family_and_why(tmp_path, families, run_cli):
    data = write_chat(tmp_path / "train.jsonl", 8)
    code, out, err = run_cli(
        "train", "--data", data, "--base", families["qwen2"], "--dry-run", "--precision", "float32", cwd=tmp_path
    )  # fmt: skip
    assert code == 0, err
    assert "compute: transformers + PEFT, sdpa attention (auto: not tested on the qwen2 family)" in out
    assert "memory estimate (cpu, lora):" in out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_evaluation_engine_decodes_each_family_as_transformers_does(families, family):
    """tunewise's batched decoding (evaluate/engine.py, its KV cache shared across prompts) gives each family the
    tokens of transformers' own greedy `generate`, for two prompts decoded together."""
    import torch

    from tunewise.evaluate.engine import LocalEngine
    from tunewise.models.loading import load_model, load_tokenizer

    base = str(families[family])
    tokenizer = load_tokenizer(base)
    model = load_model(base).eval()
    engine = LocalEngine(model, tokenizer, stop_token_ids=[-1])  # no early stop: compare all 6 tokens
    chats = [CONVERSATION[1:2], [{"role": "user", "content": "and a second, longer question here"}]]
    got = engine.generate(chats, max_new_tokens=6)
    for chat, generation in zip(chats, got, strict=True):
        ids = torch.tensor([engine.encode(chat)])
        with torch.no_grad():
            expected = model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                eos_token_id=None, pad_token_id=tokenizer.pad_token_id,
            )[0, ids.shape[1] :].tolist()  # fmt: skip
        assert list(generation.token_ids) == expected
