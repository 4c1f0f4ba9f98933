"""A PEFT adapter trained anywhere (here: plain PEFT code, no tunewise) is evaluated with `fine-tuned:PATH` and
served with `--adapter NAME=PATH`, on the base its adapter_config.json names; a base that does not match, or
none at all, is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.errors import TunewiseError
from tunewise.project import Project
from tunewise.spec import parse_spec

CHATS = [[{"role": "user", "content": text}] for text in ("a great movie", "an awful movie", "great acting")]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """The tiny random model saved as an ordinary Hugging Face folder: the base the adapter is trained on."""
    from tunewise.models.loading import load_tokenizer, tiny_model

    folder = tmp_path_factory.mktemp("base")
    tokenizer = load_tokenizer("tiny:random")
    tiny_model(tokenizer, seed=3).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(base_dir, tmp_path_factory) -> Path:
    """LoRA made with plain PEFT: LoraConfig + get_peft_model, B factors set to random values (as if trained),
    save_pretrained."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    folder = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(folder)
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base_dir
    )
    return folder


def greedy(model, tokenizer, chat, max_new_tokens: int) -> str:
    """Plain transformers generation: the chat template, greedy decoding, the new tokens decoded."""
    import torch

    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.fixture(scope="module")
def answers(base_dir, adapter_dir) -> dict[str, list[str]]:
    """Greedy answers to CHATS from the base model and from the plain PEFT model (adapter not merged)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    out = {"base": [greedy(base, tokenizer, chat, 8) for chat in CHATS]}
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    out["peft"] = [greedy(tuned, tokenizer, chat, 8) for chat in CHATS]
    assert all(
        a != b for a, b in zip(out["base"], out["peft"], strict=True)
    )  # the adapter changes every answer
    return out


def _spec(base: str):
    return parse_spec(
        "task: {name: t, target: 'Given a short review, answer with its sentiment label.'}\n"
        "contract: {type: label, labels: [positive, negative]}\nsystem_prompt: Classify the review.\n"
        f"data: {{train: t.jsonl}}\nmodel: {{base: '{base}'}}\n"
        "evaluation: {consistency_samples: 1, max_new_tokens: 8, constrained: false}\n"
    )


def _example(chat, label: str) -> dict:
    return {"messages": [*chat, {"role": "assistant", "content": label}]}


def test_fine_tuned_path_evaluates_a_plain_peft_adapter(tmp_path, base_dir, adapter_dir, answers):
    from tunewise.evaluate.run import run_evaluation
    from tunewise.scaffold import scaffold

    project = scaffold(tmp_path / "p")
    held = [
        _example(chat, label) for chat, label in zip(CHATS, ["positive", "negative", "positive"], strict=True)
    ]
    result = run_evaluation(
        _spec(str(base_dir)), project, held, held, ["fine-tuned"], fine_tuned_run=str(adapter_dir)
    )
    outputs = [r["output"] for r in result.records if r["arm"] == "fine-tuned"]
    # The fine-tuned arm asks as training did (the user turn alone): what plain PEFT answers, not the base.
    assert outputs == answers["peft"]
    assert all(a != b for a, b in zip(outputs, answers["base"], strict=True))
    arm = next(a for a in result.summary["arms"] if a["name"] == "fine-tuned")
    assert arm["kind"] == "fine-tuned"


def test_the_adapters_base_must_match_and_be_known(tmp_path, base_dir, adapter_dir):
    import shutil

    from tunewise.evaluate.arms import find_fine_tuned

    project = Project(tmp_path / "p")
    found = find_fine_tuned(project, str(adapter_dir), str(base_dir))
    assert (found.kind, found.folder, found.base, found.run_dir) == (
        "adapter",
        adapter_dir,
        str(base_dir),
        None,
    )
    assert find_fine_tuned(project, str(adapter_dir)).base == str(base_dir)  # from adapter_config.json alone

    with pytest.raises(TunewiseError, match="was trained on '.*base.*', not on 'tiny:random'") as info:
        find_fine_tuned(project, str(adapter_dir), "tiny:random")
    assert f"--base {base_dir}" in info.value.hint

    nameless = tmp_path / "nameless"
    shutil.copytree(adapter_dir, nameless)
    config = json.loads((nameless / "adapter_config.json").read_text())
    (nameless / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    with pytest.raises(TunewiseError, match="does not name its base model"):
        find_fine_tuned(project, str(nameless))
    assert find_fine_tuned(project, str(nameless), str(base_dir)).base == str(base_dir)  # the spec's base

    (nameless / "adapter_model.safetensors").unlink()
    with pytest.raises(TunewiseError, match="neither a PEFT adapter folder"):
        find_fine_tuned(project, str(nameless), str(base_dir))


def test_serve_adapter_path_serves_a_plain_peft_adapter(tmp_path, base_dir, adapter_dir, answers):
    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from test_serve_inference import client, running

    from tunewise.serve.inference import ModelPool, ServeSettings

    project = Project(tmp_path / "serve")
    settings = ServeSettings(base=str(base_dir), adapters={"mine": str(adapter_dir)}, preload=True)
    with running(project, settings, no_auth=True) as (url, _):
        api = client(url, "not-needed")
        assert [m.id for m in api.models.list().data] == [str(base_dir), "mine"]
        for chat, peft_answer, base_answer in zip(CHATS, answers["peft"], answers["base"], strict=True):
            tuned = api.chat.completions.create(model="mine", messages=chat, temperature=0, max_tokens=8)
            base = api.chat.completions.create(
                model=str(base_dir), messages=chat, temperature=0, max_tokens=8
            )
            assert tuned.choices[0].message.content == peft_answer
            assert base.choices[0].message.content == base_answer

    with pytest.raises(TunewiseError, match="--adapter mine=.*was trained on"):
        ModelPool(project, ServeSettings(base="tiny:random", adapters={"mine": str(adapter_dir)}))
