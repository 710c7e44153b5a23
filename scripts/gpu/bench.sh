#!/usr/bin/env bash
# The GPU numbers of issue 15, on the lent machine after scripts/gpu/check.sh installed the wheels:
# one GRPO step of SmolLM2-135M's shape (random weights: the real ones stay behind) with the HF
# rollout on CUDA, against bare bf16 `generate` of the same model on the same prompts.
#     bash scripts/gpu/bench.sh      # -> $OUT/ppo_step_bench_cuda.json
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-check}
MODEL=/tmp/smollm2-random
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

shape = ".whl/smollm2-shape"
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape)).save_pretrained("/tmp/smollm2-random")
AutoTokenizer.from_pretrained(shape).save_pretrained("/tmp/smollm2-random")
PY
python3 -m scripts.bench.ppo_step_bench --model "$MODEL" --device cuda --variants grpo \
  --trajectories 64 --context-tokens 256 --response-length 256 --token-budget 16384 \
  --out "$OUT/ppo_step_bench_cuda.json" 2>&1 | tail -40
