#!/usr/bin/env bash
# The GPU path, checked on a machine with a CUDA GPU in about ten minutes: the tests that skip on a CPU, the
# memory estimate against the measured peak, tunewise's training loop against TRL on the GPU, and generation.
#
#     bash bench/gpu_check.sh [OUT_DIR]        # after `make setup` on the GPU machine (it installs CUDA torch)
#
# Every step's output goes to OUT_DIR (default: bench/out/gpu) and a one-line summary per step to the terminal;
# a failed step is reported and the next one still runs. Copy the figures into bench/README.md with the date and
# the GPU's name.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-bench/out/gpu}}"
mkdir -p "$OUT"
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA GPU here; run it on a GPU machine after make setup" >&2
  exit 1
fi

step() {  # step NAME COMMAND...: run it, keep its output, say how it ended and how long it took
  local name=$1
  shift
  local start=$SECONDS
  if "$@" >"$OUT/$name.log" 2>&1; then
    echo "ok      $name ($((SECONDS - start)) s)"
  else
    echo "FAILED  $name ($((SECONDS - start)) s): see $OUT/$name.log"
  fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.csv" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" \
  >"$OUT/torch.txt"
cat "$OUT/gpu.csv" "$OUT/torch.txt"

# The tests written for CUDA (bf16 packed LoRA, QLoRA where bitsandbytes is installed, NCCL with two GPUs,
# the memory estimate on CUDA) run here instead of skipping; -rs lists what still skipped and why.
step cuda-tests $PY -m pytest -q -rs tests/test_train_memory.py tests/test_families.py tests/test_launcher.py \
  tests/test_train_ddp.py tests/test_models.py

# The memory estimate against the measured peak of the dry run's timed step, in the same process.
$PY - >"$OUT/chat.jsonl" <<'EOF'
import json
for i in range(64):
    print(json.dumps({"messages": [{"role": "user", "content": f"Ticket {i}: my order has not arrived."},
                                   {"role": "assistant", "content": '{"category": "shipping", "priority": "high"}'}]}))
EOF
step memory-estimate .venv/bin/tunewise train --data "$OUT/chat.jsonl" --base embedded:smollm2-135m-instruct \
  --dry-run

# Training throughput: tunewise's loop against TRL's fastest configuration on the same GPU.
step train-throughput $PY bench/train_throughput.py --only tunewise,trl-b --json "$OUT/train_throughput.json"

# Generation: the engine's levers against transformers' batched generate.
step generation $PY bench/generation.py --levers --n 16 --reps 1 --json "$OUT/generation.json"

# QLoRA end to end, where bitsandbytes is installed.
if $PY -c "import bitsandbytes" 2>/dev/null; then
  step qlora .venv/bin/tunewise train --data "$OUT/chat.jsonl" --base embedded:smollm2-135m-instruct \
    --method qlora --epochs 1
else
  echo "skipped qlora: bitsandbytes is not installed (pip install bitsandbytes)"
fi
echo "outputs in $OUT"
