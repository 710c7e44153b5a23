#!/usr/bin/env bash
# PPO for the RAG-R1 search agent, single-query mode (train_ppo_mq.sh: multi-query).
#
#   bash train_ppo.sh                                   # the paper's setting: 8 GPUs, vLLM, Qwen2.5-7B-Instruct
#   MODEL_PATH=ckpt/sft N_GPUS=4 bash train_ppo.sh      # any variable below from the environment
#   KL_COEF=0.01 MAX_TURNS=5 bash train_ppo.sh          # ... and those of the schema's keys in OPTIONAL
#   bash train_ppo.sh trainer.total_training_steps=10   # any config key on the command line (wins)
#   PROFILE=cpu bash train_ppo.sh                       # same pipeline on CPU: SmolLM2-135M, HF rollout, tiny batches
#   DRY_RUN=1 bash train_ppo.sh                         # print the command instead of running it
#
# Needs a retrieval server at RETRIEVER_URL (start_retrieval.py) and the parquet data of
# scripts/data_process/hotpotqa_search{,_mq}.py under DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")"

MODE=${MODE:-single}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
PROFILE=${PROFILE:-paper}
DATA_SUFFIX=$([ "$MODE" = multi ] && echo _mq || echo "")

if [ "$PROFILE" = cpu ]; then
    # CPU: the real pipeline at toy size; hotpotqa_closed (../shared/data) is the data that fits,
    # built with: python -m scripts.data_process.qa_eval_sets --input-dir ../shared/data/hotpotqa_closed \
    #   --sets train test --data-source hotpotqa_closed --mode $MODE --out data/hotpotqa_closed$DATA_SUFFIX
    MODEL_PATH=${MODEL_PATH:-$($PYTHON -m rag_r1.models.smollm2)}
    DATA_DIR=${DATA_DIR:-data/hotpotqa_closed$DATA_SUFFIX}
    DEVICE=${DEVICE:-cpu}; N_GPUS=${N_GPUS:-1}; ROLLOUT=${ROLLOUT:-hf}
    TRAIN_BATCH=${TRAIN_BATCH:-4}; VAL_BATCH=${VAL_BATCH:-4}
    PPO_MINI=${PPO_MINI:-2}; LOG_PROB_MICRO=${LOG_PROB_MICRO:-4}
    MAX_PROMPT=${MAX_PROMPT:-2048}; MAX_START=${MAX_START:-512}; MAX_RESPONSE=${MAX_RESPONSE:-64}
    MAX_OBS=${MAX_OBS:-256}; MAX_TURNS=${MAX_TURNS:-2}; PPO_MICRO_PER_GPU=${PPO_MICRO_PER_GPU:-2}
    STEPS=${STEPS:-2}; SAVE_FREQ=${SAVE_FREQ:--1}; TEST_FREQ=${TEST_FREQ:--1}; VAL_BEFORE=${VAL_BEFORE:-false}
    GRAD_CKPT=${GRAD_CKPT:-false}; OFFLOAD=${OFFLOAD:-false}
elif [ "$PROFILE" != paper ]; then
    echo "train_ppo.sh: PROFILE=$PROFILE: expected paper or cpu" >&2; exit 2
fi

# The paper's setting (RAG-R1, Table/appendix hyper-parameters) where it is not the schema's default;
# each line overridable. Everything else (GAE's gamma and lam, the clip ratio, the PPO epochs, the
# in-reward KL estimator and coefficient, the learning rates, the micro-batches, state masking, the
# agent's turns, queries, topk and observation cap, ...) is the schema's default
# (verl/trainer/config.py, rag_r1/llm_agent/config.py), which is the paper's value: not repeated here.
MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-7B-Instruct}          # or its SFT checkpoint
DATA_DIR=${DATA_DIR:-data/hotpotqa$DATA_SUFFIX}
DEVICE=${DEVICE:-cuda}; N_GPUS=${N_GPUS:-8}
ROLLOUT=${ROLLOUT:-vllm}; GPU_MEM=${GPU_MEM:-0.6}
TRAIN_BATCH=${TRAIN_BATCH:-512}; VAL_BATCH=${VAL_BATCH:-256}
PPO_MINI=${PPO_MINI:-128}
LOG_PROB_MICRO=${LOG_PROB_MICRO:-16}
ACTOR_WARMUP=${ACTOR_WARMUP:-0.285}; CRITIC_WARMUP=${CRITIC_WARMUP:-0.015}
ENTROPY=${ENTROPY:-0.001}; TOP_P=${TOP_P:-0.95}
MAX_PROMPT=${MAX_PROMPT:-8192}; MAX_START=${MAX_START:-2048}; MAX_RESPONSE=${MAX_RESPONSE:-500}
RETRIEVER_URL=${RETRIEVER_URL:-http://127.0.0.1:8000/retrieve}
STEPS=${STEPS:-500}; SAVE_FREQ=${SAVE_FREQ:-50}; TEST_FREQ=${TEST_FREQ:-50}
GRAD_CKPT=${GRAD_CKPT:-true}; OFFLOAD=${OFFLOAD:-true}
EXPERIMENT=${EXPERIMENT:-ppo_${MODE}_$(basename "$MODEL_PATH")}

cmd=(
    "$PYTHON" -m verl.trainer.main_ppo
    data.train_files="$DATA_DIR/train.parquet" data.val_files="$DATA_DIR/test.parquet"
    data.train_batch_size="$TRAIN_BATCH" data.val_batch_size="$VAL_BATCH"
    data.max_prompt_length="$MAX_PROMPT" data.max_start_length="$MAX_START"
    data.max_response_length="$MAX_RESPONSE"
    actor_rollout_ref.model.path="$MODEL_PATH"
    actor_rollout_ref.model.enable_gradient_checkpointing="$GRAD_CKPT"
    actor_rollout_ref.actor.optim.lr_warmup_steps_ratio="$ACTOR_WARMUP"
    actor_rollout_ref.actor.ppo_mini_batch_size="$PPO_MINI"
    actor_rollout_ref.actor.entropy_coeff="$ENTROPY"
    actor_rollout_ref.actor.fsdp_config.param_offload="$OFFLOAD"
    actor_rollout_ref.actor.fsdp_config.optimizer_offload="$OFFLOAD"
    actor_rollout_ref.ref.fsdp_config.param_offload="$OFFLOAD"
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu="$LOG_PROB_MICRO"
    actor_rollout_ref.rollout.name="$ROLLOUT"
    actor_rollout_ref.rollout.loop=rag_r1.llm_agent.loop:SearchAgentLoop
    actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEM"
    actor_rollout_ref.rollout.top_p="$TOP_P"
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu="$LOG_PROB_MICRO"
    critic.optim.lr_warmup_steps_ratio="$CRITIC_WARMUP"
    critic.model.enable_gradient_checkpointing="$GRAD_CKPT"
    critic.model.fsdp_config.param_offload="$OFFLOAD"
    critic.model.fsdp_config.optimizer_offload="$OFFLOAD"
    critic.ppo_mini_batch_size="$PPO_MINI"
    algorithm.adv_estimator=gae                             # named: this is the PPO launcher (GRPO: =grpo)
    algorithm.use_kl_in_reward=true
    agent.mode="$MODE"                                      # named: it must match the data's prompts
    retriever.url="$RETRIEVER_URL"
    custom_reward_function.path=rag_r1.reward:compute_score
    trainer.device="$DEVICE" trainer.n_gpus_per_node="$N_GPUS"
    trainer.total_training_steps="$STEPS" trainer.save_freq="$SAVE_FREQ" trainer.test_freq="$TEST_FREQ"
    trainer.experiment_name="$EXPERIMENT"
)
# Keys left at the schema's default unless their variable is set (environment or a profile above).
OPTIONAL=(
    ACTOR_LR:actor_rollout_ref.actor.optim.lr CRITIC_LR:critic.optim.lr KL_COEF:algorithm.kl_ctrl.kl_coef
    TEMPERATURE:actor_rollout_ref.rollout.temperature NNODES:trainer.nnodes VAL_BEFORE:trainer.val_before_train
    PPO_MICRO_PER_GPU:actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu
    PPO_MICRO_PER_GPU:critic.ppo_micro_batch_size_per_gpu
    MAX_TURNS:agent.max_turns MAX_QUERIES:agent.max_queries MAX_OBS:agent.max_obs_length TOPK:agent.topk
)
for pair in "${OPTIONAL[@]}"; do
    var=${pair%%:*}
    if [ -n "${!var:-}" ]; then cmd+=("${pair#*:}=${!var}"); fi
done
cmd+=("$@")  # the command line comes last, so it wins

if [ -n "${DRY_RUN:-}" ]; then
    printf '%q ' "${cmd[@]}"; echo
else
    exec "${cmd[@]}"
fi
