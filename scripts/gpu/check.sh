#!/usr/bin/env bash
# GPU smoke check: does the trainer's GPU path work on this machine?
#
#     bash scripts/gpu/check.sh
#     PYTHON=.venv/bin/python OUT=/tmp/gpu-check STEP_TIMEOUT=1200 bash scripts/gpu/check.sh
#
# Needs a CUDA machine with the project installed (requirements.txt, then `pip install -e .`);
# downloads nothing: the model is a tiny random one written by tests/tiny_model.py. Steps:
#   cuda-tests          pytest -m cuda: the tests of the GPU paths
#   ppo-1gpu-hf         one PPO step (GAE: actor, critic, reference) with the HF rollout and a
#                       checkpoint, then a second run that resumes from it and takes step 2
#   ppo-1gpu-offload    the same step with parameters and optimizer states offloaded to CPU memory
#   ppo-1gpu-vllm       the same step with the vLLM rollout (SKIP where `import vllm` fails)
# and with 2 GPUs or more (SKIP otherwise):
#   ppo-2gpu-hf-offload two ranks, HF rollout, offloaded parameters (gradient clipping over gloo)
#   ppo-2gpu-vllm-tp1   two ranks, one vLLM engine each
#   ppo-2gpu-vllm-tp2   two ranks sharing one vLLM engine (tensor parallel 2)
# Each step prints PASS, FAIL or SKIP with the reason and keeps its log in $OUT/<step>.log; a table
# sums up at the end. Exit status 1 when a step failed, else 0.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${OUT:-/tmp/gpu-check}
STEP_TIMEOUT=${STEP_TIMEOUT:-1200}  # seconds per step
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

NAMES=() RESULTS=() REASONS=()
record() {  # name result reason
    NAMES+=("$1") RESULTS+=("$2") REASONS+=("$3")
    printf '%-20s %-4s %s\n' "$1" "$2" "$3"
}

last_error() {  # the log's last line naming an error, else its last line
    { grep -E 'Error|error:|FAILED|Traceback' "$1" || grep -v '^[[:space:]]*$' "$1"; } | tail -1 | cut -c1-160
}

run_step() {  # name command...: PASS on exit 0, else FAIL with the reason
    STEP=$1 STEP_LOG="$OUT/$1.log"  # read by the command (ppo_and_resume)
    shift
    echo "== $STEP: $*" > "$STEP_LOG"
    if "$@" >> "$STEP_LOG" 2>&1; then
        record "$STEP" PASS "log: $STEP_LOG"
    else
        local status=$? why
        if [ "$status" = 124 ] || [ "$status" = 137 ]; then
            why="a command ran past STEP_TIMEOUT=${STEP_TIMEOUT}s"
        else
            why="exit $status: $(last_error "$STEP_LOG")"
        fi
        record "$STEP" FAIL "$why; log: $STEP_LOG"
    fi
}

# SIGINT first, so that Python unwinds and shuts down the Ray instance it started
bounded() { timeout --signal=INT --kill-after=60 "$STEP_TIMEOUT" "$@"; }

gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null)
if [ -z "$gpus" ] || [ "$gpus" = 0 ]; then
    echo "no CUDA GPU visible to $PYTHON (torch.cuda.is_available() is False or torch is missing): nothing to check"
    exit 1
fi
"$PYTHON" - <<'EOF' | tee "$OUT/versions.txt"
import importlib.metadata as metadata

import torch

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), GPUs: "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
for name in ("transformers", "ray", "vllm"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "not installed")
EOF
if "$PYTHON" -c "import vllm" > "$OUT/import-vllm.log" 2>&1; then
    has_vllm=1
else
    has_vllm=0
    no_vllm="import vllm fails: $(tail -1 "$OUT/import-vllm.log" | cut -c1-120)"
fi

# A tiny random model (head size 64, which every vLLM attention backend takes), prompts and a reward.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$PYTHON" - "$WORK" <<'EOF' || { echo "could not write the tiny model and its data"; exit 1; }
import sys
from pathlib import Path

sys.path[:0] = ["tests", "tests/verl/trainer/ppo"]
from ppo_test_setup import write_prompts
from tiny_model import make_tiny_model

work = Path(sys.argv[1])
make_tiny_model(work / "model", hidden_size=256)
write_prompts(work / "train.parquet", 32)
write_prompts(work / "val.parquet", 4, source="toy_val")
EOF

ppo() {  # ranks rollout overrides...: one step of the current step's run, with a checkpoint after it
    local ranks=$1 rollout=$2
    shift 2
    bounded "$PYTHON" -m verl.trainer.main_ppo \
        data.train_files="$WORK/train.parquet" data.val_files="$WORK/val.parquet" \
        data.train_batch_size=8 data.val_batch_size=4 data.max_prompt_length=32 data.max_response_length=8 \
        actor_rollout_ref.model.path="$WORK/model" actor_rollout_ref.actor.optim.lr=1e-3 \
        actor_rollout_ref.actor.ppo_mini_batch_size=4 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
        actor_rollout_ref.rollout.name="$rollout" actor_rollout_ref.rollout.n=2 \
        actor_rollout_ref.rollout.gpu_memory_utilization=0.3 \
        critic.optim.lr=1e-3 critic.ppo_mini_batch_size=4 critic.ppo_micro_batch_size_per_gpu=4 \
        algorithm.adv_estimator=gae algorithm.use_kl_in_reward=true \
        custom_reward_function.path=tests/verl/trainer/ppo/ppo_test_setup.py \
        custom_reward_function.name=contains_target \
        trainer.device=cuda trainer.nnodes=1 trainer.n_gpus_per_node="$ranks" trainer.logger='[console]' \
        trainer.total_training_steps=1 trainer.save_freq=1 trainer.val_before_train=false trainer.test_freq=-1 \
        trainer.default_local_dir="$WORK/$STEP" "$@"
}

ppo_and_resume() {  # ranks rollout overrides...: step 1 and its checkpoint, then a run resuming there for step 2
    ppo "$@" && grep -q '^step:1 ' "$STEP_LOG" \
        && ppo "$@" trainer.total_training_steps=2 trainer.resume_mode=auto && grep -q '^step:2 ' "$STEP_LOG"
}

offload=(actor_rollout_ref.actor.fsdp_config.param_offload=true actor_rollout_ref.actor.fsdp_config.optimizer_offload=true
         actor_rollout_ref.ref.fsdp_config.param_offload=true
         critic.model.fsdp_config.param_offload=true critic.model.fsdp_config.optimizer_offload=true)

run_step cuda-tests bounded "$PYTHON" -m pytest -q -m cuda tests -p no:cacheprovider -rfEs
run_step ppo-1gpu-hf ppo_and_resume 1 hf
run_step ppo-1gpu-offload ppo_and_resume 1 hf "${offload[@]}"
if [ "$has_vllm" = 1 ]; then
    run_step ppo-1gpu-vllm ppo_and_resume 1 vllm
else
    record ppo-1gpu-vllm SKIP "$no_vllm"
fi
if [ "$gpus" -lt 2 ]; then
    for name in ppo-2gpu-hf-offload ppo-2gpu-vllm-tp1 ppo-2gpu-vllm-tp2; do
        record "$name" SKIP "needs 2 GPUs, $gpus visible"
    done
else
    run_step ppo-2gpu-hf-offload ppo_and_resume 2 hf "${offload[@]}"
    if [ "$has_vllm" = 1 ]; then
        run_step ppo-2gpu-vllm-tp1 ppo_and_resume 2 vllm
        run_step ppo-2gpu-vllm-tp2 ppo_and_resume 2 vllm \
            actor_rollout_ref.rollout.tensor_model_parallel_size=2
    else
        record ppo-2gpu-vllm-tp1 SKIP "$no_vllm"
        record ppo-2gpu-vllm-tp2 SKIP "$no_vllm"
    fi
fi

echo
echo "summary ($(head -1 "$OUT/versions.txt"))"
printf '%-20s %-6s %s\n' step result reason
failed=0
for i in "${!NAMES[@]}"; do
    printf '%-20s %-6s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${REASONS[$i]}"
    [ "${RESULTS[$i]}" = FAIL ] && failed=1
done
exit "$failed"
