#!/usr/bin/env bash
# PPO for the RAG-R1 search agent in multi-query mode: train_ppo.sh with MODE=multi (data from
# scripts/data_process/hotpotqa_search_mq.py). Same variables, PROFILE=cpu and command-line overrides.
#
#   bash train_ppo_mq.sh
#   PROFILE=cpu bash train_ppo_mq.sh trainer.total_training_steps=2
set -euo pipefail
MODE=multi exec bash "$(dirname "$0")/train_ppo.sh" "$@"
