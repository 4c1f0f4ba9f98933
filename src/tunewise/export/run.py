"""`tunewise export RUN --to peft|merged|gguf|ollama`: a trained run as files other tools load, checked to
behave as trained.

    peft     the LoRA adapter, its adapter_config.json naming the base by its published name and revision
    merged   LoRA merged into the base: safetensors, tokenizer and chat template, loadable by plain
             transformers (4.x too: config.json also carries rope_theta, the tokenizer a class 4.x knows)
    gguf     one GGUF file (f32, f16 or q8_0) with the chat template and special tokens in its metadata
    ollama   the GGUF file and a Modelfile whose TEMPLATE, SYSTEM and stop parameters reproduce the training
             prompt format (export/ollama.py)

Every export carries a model card (README.md) and export.json (the base by name, revision and content hash,
data versions, hyperparameters, evaluation figures, the check's figures, file sizes).

The check (on unless `check=False`), before anything is published:
1. template: N training chats rendered by the exported artifact's template (the saved tokenizer's chat
   template; the GGUF metadata's; the Modelfile's TEMPLATE and SYSTEM as Ollama renders them) equal the
   prompts training rendered, byte for byte, and tokenize to the same ids; the end-of-turn token training
   taught is a Modelfile stop parameter.
2. generation: greedy tokens of the exported artifact, loaded back by plain transformers (merged: the folder;
   gguf and ollama: `gguf_file=`; peft: the adapter over the base), on N held-out prompts equal tunewise's
   own fine-tuned model's (LocalEngine over the run's merged weights): all of them for f32, f16, merged and
   peft; at least `min_agreement` of them for a quantised GGUF, whose rate is stated.
A failed check raises a TunewiseError that names the first prompt that differs and where; the artifacts are
left in `<out>.rejected/` for a look, never at `out`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError

log = logging.getLogger(__name__)

TARGETS = ("peft", "merged", "gguf", "ollama")


@dataclass
class ExportConfig:
    run: str  # a training run: id, unique start of one, or folder
    to: str
    out: Path
    quant: str = "f16"  # gguf and ollama
    check: bool = True
    n_prompts: int = 10  # training chats rendered, and held-out prompts generated, by the check
    max_new_tokens: int = 32
    min_agreement: float = 0.8  # quantised GGUF: share of held-out prompts whose greedy tokens must agree
    template: str | None = None  # ollama: a TEMPLATE to use instead of the derived one (the check judges it)
    name: str | None = None  # the model's name in the card and GGUF metadata (default: the run id)

    def __post_init__(self) -> None:
        from tunewise.export.gguf_file import QUANTS

        problems = []
        if self.to not in TARGETS:
            problems.append(f"unknown --to '{self.to}': use one of {', '.join(TARGETS)}")
        if self.to in ("gguf", "ollama") and self.quant not in QUANTS:
            problems.append(f"unknown --quant '{self.quant}': use one of {', '.join(QUANTS)}")
        if self.n_prompts < 1:
            problems.append(f"--prompts must be at least 1 (got {self.n_prompts})")
        if not 0 <= self.min_agreement <= 1:
            problems.append(f"--min-agreement must be between 0 and 1 (got {self.min_agreement})")
        if self.template is not None and self.to != "ollama":
            problems.append("--template applies to --to ollama only")
        if problems:
            raise TunewiseError("; ".join(problems))
        self.out = Path(self.out)


@dataclass
class ExportResult:
    out: Path
    info: dict[str, Any]  # export.json


# --- the run's data ---------------------------------------------------------------------------------------


def _chats(paths: list[str], n: int) -> list[list[dict[str, str]]]:
    """The first `n` chats of JSONL files that end with an assistant turn: messages up to that turn."""
    chats = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            continue
        for line in p.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            messages = json.loads(line).get("messages") or []
            last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
            if last is None or last == 0:
                continue
            chats.append([{"role": m["role"], "content": m.get("content") or ""} for m in messages[:last]])
            if len(chats) == n:
                return chats
    return chats


def training_prompt(tokenizer: Any, chat: list[dict[str, str]]) -> str:
    """The prompt as training rendered it (train/data.py): the chat template with the generation prompt."""
    from tunewise.train.data import _render

    return _render(tokenizer, chat, add_generation_prompt=True)


# --- writing ----------------------------------------------------------------------------------------------


def _portable_folder(folder: Path, dtype: str = "float32") -> None:
    """Make a transformers 5 save readable by 4.x too: 4.x reads `rope_theta` (5.x nests it in
    `rope_parameters`; without it 4.x silently uses 10000) and `torch_dtype`, and knows the fast tokenizer as
    PreTrainedTokenizerFast (5.x writes TokenizersBackend) with its chat template in tokenizer_config.json."""
    config_path = folder / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        rope = config.get("rope_parameters") or {}
        if "rope_theta" in rope and "rope_theta" not in config:
            config["rope_theta"] = rope["rope_theta"]
            if rope.get("rope_type", "default") == "default":
                config.setdefault("rope_scaling", None)
        config.setdefault("torch_dtype", config.get("dtype", dtype))
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tok_path = folder / "tokenizer_config.json"
    if tok_path.is_file():
        tok = json.loads(tok_path.read_text(encoding="utf-8"))
        tok["tokenizer_class"] = "PreTrainedTokenizerFast"
        for key in ("backend", "is_local", "local_files_only"):
            tok.pop(key, None)
        template = folder / "chat_template.jinja"
        if template.is_file():
            tok["chat_template"] = template.read_text(encoding="utf-8")
        tok_path.write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_peft(tuned: Any, base: dict[str, Any], tmp: Path) -> None:
    if tuned.kind != "adapter":
        raise TunewiseError(
            f"run {tuned.name} is a full fine-tune: it has no adapter", hint="export it --to merged"
        )
    for f in tuned.folder.iterdir():
        if f.is_file() and f.name != "README.md":  # PEFT's own card template; the export writes its own
            shutil.copy2(f, tmp / f.name)
    config = json.loads((tmp / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base["name"]  # not this machine's cache path
    config["revision"] = base.get("revision")
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _write_merged(model: Any, tokenizer: Any, tmp: Path) -> None:
    model.config.name_or_path = tmp.name
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _portable_folder(tmp)


def _gguf_pre(base: str) -> str:
    """llama.cpp's pre-tokenizer name: the embedded tokenizer's own (tiny:random shares it), else 'default'."""
    from tunewise.models.loading import EMBEDDED_PREFIX, TINY_MODEL

    if base == TINY_MODEL or base.startswith(EMBEDDED_PREFIX):
        return "smollm"
    return "default"


# --- the check ------------------------------------------------------------------------------------------------


def _first_difference(a: str, b: str) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"at character {at}: exported {a[max(0, at - 20) : at + 30]!r}, training {b[max(0, at - 20) : at + 30]!r}"


def check_template(
    render: Any, encode: Any, reference: Any, chats: list[list[dict[str, str]]]
) -> dict[str, Any]:
    """Render each chat's prompt with the exported template (`render(chat)`) and as training did; the texts and
    their token ids (`encode`, the exported tokenizer) must be equal. Raises on the first difference."""
    for i, chat in enumerate(chats):
        exported, trained = render(chat), training_prompt(reference, chat)
        if exported != trained:
            raise TunewiseError(
                f"export check failed: training chat {i + 1} of {len(chats)} renders differently with the exported "
                f"template, {_first_difference(exported, trained)}",
                hint="the exported model would see prompts it was not trained on; fix the template",
            )
        ids = list(encode(exported))
        want = list(reference(trained, add_special_tokens=False)["input_ids"])
        if ids != want:
            at = next((k for k, (x, y) in enumerate(zip(ids, want)) if x != y), min(len(ids), len(want)))
            raise TunewiseError(
                f"export check failed: training chat {i + 1} tokenizes differently with the exported tokenizer "
                f"from token {at} ({len(ids)} tokens against {len(want)})",
                hint="the exported tokenizer's vocabulary, merges or pre-tokenizer differ from training's",
            )
    return {"n": len(chats), "equal": len(chats)}


def _greedy(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, eos: int) -> list[int]:
    """Plain transformers greedy decoding of a rendered prompt: the new token ids, the end of turn included."""
    import torch

    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=eos, pad_token_id=eos,
        )  # fmt: skip
    return out[0, ids.shape[1] :].tolist()


def check_generation(
    exported: list[list[int]], reference: list[list[int]], *, exact: bool, min_agreement: float, decode: Any
) -> dict[str, Any]:
    """Compare greedy token ids per prompt. Exact exports must agree on every prompt; quantised ones on at least
    `min_agreement` of them. Raises with the first prompt that differs.

    >>> check_generation([[1, 2], [3, 4]], [[1, 2], [3, 5]], exact=False, min_agreement=0.5, decode=str)
    {'n': 2, 'equal': 1, 'agreement': 0.5, 'token_agreement': 0.75, 'required': '>= 50% of prompts'}
    """
    n = len(reference)
    equal = sum(a == b for a, b in zip(exported, reference))
    same_tokens = sum(sum(x == y for x, y in zip(a, b)) for a, b in zip(exported, reference))
    total = sum(max(len(a), len(b)) for a, b in zip(exported, reference)) or 1
    result = {
        "n": n,
        "equal": equal,
        "agreement": equal / n if n else 1.0,
        "token_agreement": same_tokens / total,
        "required": "all prompts" if exact else f">= {min_agreement:.0%} of prompts",
    }
    if (exact and equal < n) or (not exact and result["agreement"] < min_agreement):
        k = next(i for i, (a, b) in enumerate(zip(exported, reference)) if a != b)
        raise TunewiseError(
            f"export check failed: greedy generation agrees with tunewise's fine-tuned model on {equal} of {n} "
            f"held-out prompts (required: {result['required']}); prompt {k + 1}: exported "
            f"{decode(exported[k])!r}, tunewise {decode(reference[k])!r}",
            hint="the exported weights do not behave as trained"
            + ("" if exact else "; use a finer --quant (q8_0, f16) or lower --min-agreement knowingly"),
        )
    return result


def _load_exported(config: ExportConfig, folder: Path, tuned: Any) -> tuple[Any, Any]:
    """The exported artifact loaded back by plain transformers (and PEFT for an adapter)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.to == "merged":
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    elif config.to in ("gguf", "ollama"):
        name = next(folder.glob("*.gguf")).name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    else:
        from peft import PeftModel

        from tunewise.models.loading import load_model, load_tokenizer

        tokenizer = load_tokenizer(tuned.base)
        base = load_model(tuned.base, tokenizer=tokenizer, seed=tuned.seed)
        model = PeftModel.from_pretrained(base, str(folder))  # the adapter as exported, not merged
    model.eval()
    return model, tokenizer


def run_check(
    config: ExportConfig, folder: Path, tuned: Any, model: Any, tokenizer: Any, run_config: dict
) -> dict:
    """Both checks on the exported files in `folder` (see the module docstring); returns their figures."""
    from tunewise.evaluate.engine import LocalEngine
    from tunewise.export.gguf_file import EXACT_QUANTS
    from tunewise.export.ollama import parse_modelfile, render_go

    asked = run_config.get("config", run_config)
    train_chats = _chats(asked.get("data") or [], config.n_prompts)
    held_out = _chats(asked.get("eval_data") or [], config.n_prompts)
    source = "held-out" if held_out else "training (the run recorded no held-out data)"
    held_out = held_out or train_chats
    if not train_chats:
        raise TunewiseError(
            f"export check: no chat ending with an answer in the run's training data ({asked.get('data')})",
            hint="keep the training files where the run read them, or export with --no-check",
        )
    exported_model, exported_tok = _load_exported(config, folder, tuned)
    eot = tokenizer.eos_token_id
    if config.to == "ollama":
        spec = parse_modelfile((folder / "Modelfile").read_text(encoding="utf-8"))

        def render(chat: list[dict[str, str]]) -> str:
            return render_go(spec["template"] or "", chat, spec["system"])

        end = tokenizer.convert_ids_to_tokens(eot)
        if end not in spec["stop"]:
            raise TunewiseError(
                f"export check failed: the end of turn training taught ({end!r}) is not a stop parameter of the "
                f"Modelfile (stops: {spec['stop']})",
                hint="add `PARAMETER stop` for it, or Ollama answers past the end of the turn",
            )
    else:

        def render(chat: list[dict[str, str]]) -> str:
            return training_prompt(exported_tok, chat)

    template = check_template(
        render, lambda text: exported_tok(text, add_special_tokens=False)["input_ids"], tokenizer, train_chats
    )
    engine = LocalEngine(model, tokenizer)
    reference = [list(g.token_ids) for g in engine.generate(held_out, max_new_tokens=config.max_new_tokens)]
    exported = [
        _greedy(exported_model, exported_tok, render(chat), config.max_new_tokens, eot) for chat in held_out
    ]
    exact = config.to in ("peft", "merged") or config.quant in EXACT_QUANTS
    generation = check_generation(
        exported, reference, exact=exact, min_agreement=config.min_agreement,
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
    )  # fmt: skip
    return {"template": template, "generation": {**generation, "prompts": source}}


# --- the export ------------------------------------------------------------------------------------------------


def export(project: Any, config: ExportConfig) -> ExportResult:
    """Write the export of `config.run` to `config.out`, checked (see the module docstring)."""
    from tunewise import __version__
    from tunewise.evaluate.arms import find_fine_tuned
    from tunewise.evaluate.run import load_fine_tuned
    from tunewise.export import card
    from tunewise.export.gguf_file import read_metadata, write_gguf
    from tunewise.export.ollama import go_template, modelfile, wrappers
    from tunewise.fileio import atomic_write_text, publish, temp_path
    from tunewise.registry.runs import RunStore

    out = config.out
    if out.exists() and any(out.iterdir()):
        raise TunewiseError(f"{out} exists and is not empty", hint="pick another --out, or remove it first")
    tuned = find_fine_tuned(project, config.run)
    if tuned.run_dir is None:
        raise TunewiseError(
            f"{config.run} is an adapter folder, not a training run", hint="give a training run's id"
        )
    run_config = json.loads((tuned.run_dir / "config.json").read_text(encoding="utf-8"))
    asked = run_config.get("config", run_config)
    record = RunStore(project).get(tuned.run_dir.name)
    base = card.base_provenance(tuned.base, tuned.seed)
    model, tokenizer, _ = load_fine_tuned(project, tuned.run_dir.name)
    name = config.name or tuned.run_dir.name

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    tmp.mkdir()
    try:
        if config.to == "peft":
            _write_peft(tuned, base, tmp)
        elif config.to == "merged":
            _write_merged(model, tokenizer, tmp)
        else:
            gguf_name = f"{name}.{config.quant}.gguf"
            write_gguf(model, tokenizer, tmp / gguf_name, config.quant, name=name, pre=_gguf_pre(tuned.base))
            if config.to == "ollama":
                w = wrappers(
                    lambda ms, gen: tokenizer.apply_chat_template(
                        ms, add_generation_prompt=gen, tokenize=False
                    )
                )
                template = config.template if config.template is not None else go_template(w)
                atomic_write_text(
                    tmp / "Modelfile", modelfile(gguf_name, template, w.stops, w.default_system)
                )
        checked = run_check(config, tmp, tuned, model, tokenizer, run_config) if config.check else None
    except TunewiseError:
        rejected = out.with_name(out.name + ".rejected")
        shutil.rmtree(rejected, ignore_errors=True)
        tmp.rename(rejected)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    info: dict[str, Any] = {
        "name": name,
        "run": tuned.run_dir.name,
        "target": config.to,
        "quant": config.quant if config.to in ("gguf", "ollama") else None,
        "tunewise": __version__,
        "base": base,
        "data_versions": record.dataset_versions,
        "hyperparameters": {
            # What `auto` became when the run started (config.json's `resolved`), else what was asked.
            k: (run_config.get("resolved") or {}).get(k, asked[k])
            for k in (
                "method",
                "epochs",
                "learning_rate",
                "batch_size",
                "lora_rank",
                "lora_alpha",
                "lora_dropout",
                "lora_targets",
                "max_length",
                "seed",
                "schedule",
                "warmup_ratio",
                "weight_decay",
            )
            if k in asked
        },  # fmt: skip
        "train_figures": record.figures,
        "evaluations": card.eval_figures_for(project, tuned.run_dir.name),
        "check": checked,
    }
    if config.to in ("gguf", "ollama"):
        meta = read_metadata(next(tmp.glob("*.gguf")))
        info["gguf_metadata"] = {k: meta[k] for k in sorted(meta) if k != "tokenizer.chat_template"}
    info["files"] = {
        f.name: f.stat().st_size
        for f in sorted(tmp.iterdir())
        if f.is_file() and f.name not in ("README.md", "export.json")
    }
    atomic_write_text(tmp / "README.md", card.model_card(info))
    info["files"]["README.md"] = (tmp / "README.md").stat().st_size
    atomic_write_text(tmp / "export.json", json.dumps(info, indent=2, default=str) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    publish(tmp, out)
    return ExportResult(out, info)
