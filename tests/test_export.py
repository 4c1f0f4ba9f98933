"""Exports of a LoRA run on the tiny model: merged weights, GGUF and Ollama give tunewise's own greedy tokens on
10 held-out prompts when loaded back by plain transformers; the Modelfile's template renders training prompts
byte for byte (and the renderer reproduces templates whose output is known); a broken template fails the check
with a message naming the prompt and the place; artifacts name their base portably. A marked test does the
same on the embedded model, another loads the exports in transformers 4.x in a separate environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tunewise.errors import TunewiseError
from tunewise.export.ollama import go_template, modelfile, parse_modelfile, render_go, wrappers
from tunewise.project import Project

pytest.importorskip("gguf")

N = 10  # held-out prompts and training chats the check uses
TOKENS = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Project, str, Path]:
    """A LoRA run on the tiny model with held-out data; its project, its id and the held-out file."""
    from tests.test_train import write_chat
    from tunewise.train import TrainConfig, run

    root = tmp_path_factory.mktemp("export")
    project = Project(root)
    data, held_out = write_chat(root / "train.jsonl", 32), write_chat(root / "eval.jsonl", 12, seed=1)
    config = TrainConfig(
        data=[str(data)], eval_data=[str(held_out)], base="tiny:random", epochs=3, batch_size=8,
        learning_rate=2e-2, precision="float32", threads=1, progress=False,
    )  # fmt: skip
    result = run(config, project)
    assert result.status == "succeeded"
    return project, Path(result.run_dir).name, held_out


def held_out_chats(path: Path) -> list[list[dict[str, str]]]:
    chats = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    return [c[:-1] for c in chats][:N]


@pytest.fixture(scope="module")
def reference(trained) -> list[list[int]]:
    """tunewise's own greedy tokens for the held-out prompts: LocalEngine over the run's merged weights."""
    from tunewise.evaluate.engine import LocalEngine
    from tunewise.evaluate.run import load_fine_tuned

    project, run_id, held_out = trained
    model, tokenizer, _ = load_fine_tuned(project, run_id)
    return [
        list(g.token_ids) for g in LocalEngine(model, tokenizer).generate(held_out_chats(held_out), TOKENS)
    ]


def do_export(trained, tmp_path, to, **kwargs):
    from tunewise.export.run import ExportConfig, export

    project, run_id, _ = trained
    config = ExportConfig(run=run_id, to=to, out=tmp_path / to, n_prompts=N, max_new_tokens=TOKENS, **kwargs)
    return export(project, config)


def plain_greedy(model, tokenizer, chat) -> list[int]:
    import torch

    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=TOKENS, do_sample=False,
                         eos_token_id=eos, pad_token_id=eos)  # fmt: skip
    return out[0, ids.shape[1] :].tolist()


# --- the Ollama template renderer, against templates whose output is known --------------------------------


def test_the_renderer_gives_known_outputs():
    # Trim markers, if/else if/else, range, $ and string actions, as Go's text/template renders them.
    t = '{{- if .System }}S={{ .System }};{{ end -}}\n  {{ range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }}|{{ else if eq .Role "assistant" }}A:{{ .Content }}|{{ else }}?{{ end }}{{ end }}{{ "{{x}}" }}{{ $.System }}'
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "q"},
    ]
    assert render_go(t, chat) == "U:hi|A:yo|U:q|{{x}}"
    assert render_go(t, chat, system="be kind") == "S=be kind;?U:hi|A:yo|U:q|{{x}}be kind"
    # Ollama joins consecutive messages of one role with a blank line, and keeps a chat's own system message.
    chat = [
        {"role": "system", "content": "mine"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
    ]
    assert render_go(t, chat, system="default") == "S=mine;?U:a\n\nb|{{x}}mine"
    with pytest.raises(TunewiseError, match=r"missing \{\{ end \}\}"):
        render_go("{{ range .Messages }}x", chat)


def test_derived_template_reproduces_chatml_and_llama3_style_templates():
    def chatml(messages, gen):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if gen else "")

    def llama3(messages, gen):
        if messages[0]["role"] != "system":
            messages = [{"role": "system", "content": "Cutting Knowledge Date: 2023"}, *messages]
        text = "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages
        )
        return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if gen else "")

    chats = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}],
    ]  # fmt: skip
    for render, stop, default in (
        (chatml, "<|im_end|>", None),
        (llama3, "<|eot_id|>", "Cutting Knowledge Date: 2023"),
    ):
        w = wrappers(render)
        assert (w.stops, w.default_system) == ([stop], default)
        text = modelfile("m.gguf", go_template(w), w.stops, w.default_system)
        spec = parse_modelfile(text)
        for chat in chats:
            assert render_go(spec["template"], chat, spec["system"]) == render(chat, True)


# --- exports of the tiny run ------------------------------------------------------------------------------


def test_merged_export_generates_tunewise_tokens_with_plain_transformers(trained, reference, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = do_export(trained, tmp_path, "merged")
    check = result.info["check"]
    assert check["template"] == {"n": N, "equal": N}
    assert (check["generation"]["n"], check["generation"]["equal"]) == (N, N)
    assert check["generation"]["prompts"] == "held-out"
    folder = result.out
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "export.json"} <= {
        f.name for f in folder.iterdir()
    }
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert [plain_greedy(model, tokenizer, c) for c in held_out_chats(trained[2])] == reference
    # Readable by transformers 4.x: rope_theta at the top, a tokenizer class 4.x has, the template inline.
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    assert (
        tok["tokenizer_class"] == "PreTrainedTokenizerFast"
        and tok["chat_template"] == tokenizer.chat_template
    )
    card = (folder / "README.md").read_text()
    info = json.loads((folder / "export.json").read_text())
    assert info["base"]["name"] == "tiny:random" and info["base"]["revision"] == "seed 0"
    assert len(info["base"]["sha256"]) == 64 and info["base"]["sha256"] in card
    assert f"{N}/{N}" in card and str(trained[0].root) not in json.dumps(info["base"])


def test_gguf_export_loads_back_through_gguf_file_with_the_same_tokens(trained, reference, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewise.export.gguf_file import read_metadata

    result = do_export(trained, tmp_path, "gguf", quant="f16")
    assert result.info["check"]["generation"]["equal"] == N
    gguf = next(result.out.glob("*.gguf"))
    assert gguf.name.endswith(".f16.gguf")
    meta = read_metadata(gguf)
    tokenizer = AutoTokenizer.from_pretrained(result.out, gguf_file=gguf.name)
    assert meta["tokenizer.chat_template"] == tokenizer.chat_template
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert meta["general.file_type"] == 1  # mostly f16
    model = AutoModelForCausalLM.from_pretrained(result.out, gguf_file=gguf.name, dtype=torch.float32).eval()
    assert [plain_greedy(model, tokenizer, c) for c in held_out_chats(trained[2])] == reference


def test_ollama_export_renders_training_prompts_byte_for_byte(trained, tmp_path):
    from tunewise.export.run import _chats, training_prompt
    from tunewise.models.loading import load_tokenizer

    result = do_export(trained, tmp_path, "ollama", quant="q8_0")
    g = result.info["check"]["generation"]
    assert g["required"] == ">= 80% of prompts" and g["agreement"] >= 0.8 and g["n"] == N
    spec = parse_modelfile((result.out / "Modelfile").read_text())
    assert spec["stop"] == ["<|im_end|>"]
    assert spec["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    tokenizer = load_tokenizer("tiny:random")
    config = json.loads((trained[0].runs_dir / trained[1] / "config.json").read_text())
    chats = _chats(config.get("config", config)["data"], N)
    assert len(chats) == N
    for chat in chats:
        assert render_go(spec["template"], chat, spec["system"]) == training_prompt(tokenizer, chat)


def test_a_broken_template_fails_the_check_and_publishes_nothing(trained, tmp_path):
    from tunewise.models.loading import load_tokenizer

    w = wrappers(
        lambda ms, gen: load_tokenizer("tiny:random").apply_chat_template(
            ms, add_generation_prompt=gen, tokenize=False
        )
    )
    broken = go_template(w).replace("<|im_start|>user\n", "<|im_start|>user ")  # a space for the newline
    with pytest.raises(
        TunewiseError, match=r"training chat 1 of 10 renders differently .* at character \d+"
    ) as failed:
        do_export(trained, tmp_path, "ollama", quant="f32", template=broken)
    assert "user " in str(failed.value) and "fix the template" in failed.value.hint
    assert not (tmp_path / "ollama").exists()
    assert (tmp_path / "ollama.rejected" / "Modelfile").is_file()


def test_peft_export_names_its_base_portably_and_generates_the_same(trained, tmp_path):
    result = do_export(trained, tmp_path, "peft")
    assert result.info["check"]["generation"]["equal"] == N
    config = json.loads((result.out / "adapter_config.json").read_text())
    assert (config["base_model_name_or_path"], config["revision"]) == ("tiny:random", "seed 0")
    card = (result.out / "README.md").read_text()
    assert card.startswith(f"# {trained[1]}\n") and "Exported by tunewise" in card  # not PEFT's blank card
    assert result.info["files"]["README.md"] == len(card.encode())


def test_cli_export_errors_are_one_line(trained, tmp_path, run_cli):
    project, run_id, _ = trained
    code, _, stderr = run_cli(
        "export", run_id, "--to", "onnx", "--out", str(tmp_path / "x"), "--project", str(project.root)
    )
    assert code == 1 and "unknown --to 'onnx'" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli("export", run_id, "--to", "gguf", "--quant", "q2_k", "--out", str(tmp_path / "x"),
                              "--project", str(project.root))  # fmt: skip
    assert code == 1 and "unknown --quant 'q2_k'" in stderr


# --- transformers 4.x, in a separate environment ---------------------------------------------------------

TRANSFORMERS4 = os.environ.get("TUNEWISE_TRANSFORMERS4_PYTHON")

LOAD_IN_4X = """
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, gguf, chats = sys.argv[1], sys.argv[2] or None, json.loads(sys.argv[3])
kw = {"gguf_file": gguf} if gguf else {}
tok = AutoTokenizer.from_pretrained(folder, **kw)
model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, **kw).eval()
eos = tok.convert_tokens_to_ids("<|im_end|>")
out = []
for chat in chats:
    ids = torch.tensor([tok(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
                            add_special_tokens=False)["input_ids"]])
    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(sys.argv[4]), do_sample=False,
                         eos_token_id=eos, pad_token_id=eos)
    out.append(gen[0, ids.shape[1]:].tolist())
print(json.dumps({"version": transformers.__version__, "tokens": out}))
"""


@pytest.mark.transformers4
@pytest.mark.skipif(
    not TRANSFORMERS4 or not Path(TRANSFORMERS4).is_file(),
    reason="no transformers 4.x environment: set TUNEWISE_TRANSFORMERS4_PYTHON to a python with transformers<5 "
    "(see docs/export.md)",
)
def test_exports_load_in_transformers_4(trained, reference, tmp_path):
    chats = json.dumps(held_out_chats(trained[2]))
    for to, quant in (("merged", "f16"), ("gguf", "f32")):
        result = do_export(trained, tmp_path, to, quant=quant, check=False)
        gguf = next((p.name for p in result.out.glob("*.gguf")), "")
        proc = subprocess.run(
            [TRANSFORMERS4, "-c", LOAD_IN_4X, str(result.out), gguf, chats, str(TOKENS)], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        answer = json.loads(proc.stdout.strip().splitlines()[-1])
        assert answer["version"].startswith("4.")
        assert answer["tokens"] == reference, to


# --- the embedded model ----------------------------------------------------------------------------------


@pytest.mark.embedded
def test_embedded_merged_and_gguf_exports_give_tunewise_tokens(tmp_path, shared_datasets):
    """A short LoRA run on the embedded SmolLM2-135M (SST-2 chats): the merged and f16 GGUF exports agree with
    tunewise's greedy tokens on 10 held-out prompts, and render the training prompts byte for byte."""
    from tunewise.export.run import ExportConfig, export
    from tunewise.train import TrainConfig, run

    source = shared_datasets / "sst2" / "train-small.jsonl"
    rows = [line for line in source.read_text().splitlines() if line.strip()]
    train, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("\n".join(rows[:16]) + "\n")
    held_out.write_text("\n".join(rows[16:26]) + "\n")
    project = Project(tmp_path / "project")
    config = TrainConfig(
        data=[str(train)], eval_data=[str(held_out)], base="embedded:smollm2-135m-instruct", epochs=1,
        batch_size=8, learning_rate=1e-3, max_length=128, precision="float32", threads=2, progress=False,
    )  # fmt: skip
    result = run(config, project)
    assert result.status == "succeeded"
    run_id = Path(result.run_dir).name
    # Ollama's Modelfile and q8_0 are checked on the tiny model above; here the two exports users load directly.
    for to, quant in (("merged", "f16"), ("gguf", "f16")):
        exported = export(
            project, ExportConfig(run=run_id, to=to, out=tmp_path / to, quant=quant, max_new_tokens=TOKENS)
        )
        check = exported.info["check"]
        assert check["template"] == {"n": N, "equal": N}
        assert (check["generation"]["n"], check["generation"]["equal"]) == (N, N), to
        info = exported.info["base"]
        assert info["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "de-quantized" in info["weights"]
    meta_rope = json.loads((tmp_path / "merged" / "config.json").read_text())["rope_theta"]
    assert meta_rope == 100000.0  # SmolLM2's RoPE base, where transformers 4.x reads it
