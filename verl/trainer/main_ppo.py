"""Train a policy with PPO or GRPO on Ray.

    python -m verl.trainer.main_ppo \
        data.train_files=data/nq/train.parquet data.val_files=data/nq/test.parquet \
        actor_rollout_ref.model.path=$(python -m rag_r1.models.smollm2) \
        custom_reward_function.path=rag_r1.reward:compute_score \
        algorithm.adv_estimator=grpo actor_rollout_ref.rollout.n=5 trainer.n_gpus_per_node=2

Keys and defaults: verl/trainer/config.py; veRL's keys that have no place there are refused by
name (verl/trainer/verl_keys.py). On several machines, start an ordinary Ray cluster
(`ray start --head` on one, `ray start --address=HEAD:6379` on the others), then run this on the
head with trainer.nnodes / trainer.n_gpus_per_node set (`ray_kwargs.ray_init.address=auto`).
"""
from __future__ import annotations

import sys

import hydra
import ray
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import AutoTokenizer

from verl.trainer.config import (CONFIG_DIR, CONFIG_NAME, check_config, need_critic, need_reference_policy,
                                 register_schema, screen_overrides)
from verl.trainer.ppo.ray_trainer import RayPPOTrainer, total_training_steps
from verl.trainer.ppo.rollout_servers import actor_concurrency
from verl.trainer.ppo.reward import RewardManager, load_reward_function
from verl.utils.dataset import RLHFDataset


def load_tokenizer(config: DictConfig):
    model = config.actor_rollout_ref.model
    tokenizer = AutoTokenizer.from_pretrained(model.tokenizer_path or model.path,
                                              trust_remote_code=model.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_worker_groups(config: DictConfig):
    """(actor_rollout_wg, critic_wg or None) on one resource pool of nnodes x n_gpus_per_node workers,
    models initialised. The actor group also serves rollout and the reference policy."""
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup
    from verl.workers.fsdp_workers import ActorRolloutRefWorker, CriticWorker

    pool = RayResourcePool([config.trainer.n_gpus_per_node] * config.trainer.nnodes,
                           use_gpu=config.trainer.device == "cuda")
    role = "actor_rollout_ref" if need_reference_policy(config) else "actor_rollout"
    actor_rollout_wg = RayWorkerGroup(pool, RayClassWithInitArgs(ActorRolloutRefWorker, config=config.actor_rollout_ref,
                                                                 role=role),
                                      max_concurrency=actor_concurrency(config.actor_rollout_ref.rollout))
    actor_rollout_wg.init_model()
    critic_wg = None
    if need_critic(config):
        critic_wg = RayWorkerGroup(pool, RayClassWithInitArgs(CriticWorker, config=config.critic))
        critic_wg.init_model()
    return actor_rollout_wg, critic_wg


def build_trainer(config: DictConfig, tracker=None) -> RayPPOTrainer:
    """Datasets, reward function and worker groups for `config` (Ray must be running)."""
    check_config(config)
    OmegaConf.resolve(config)  # workers get plain subtrees, with no reference to the root
    tokenizer = load_tokenizer(config)
    reward = config.custom_reward_function
    compute_score = load_reward_function(reward.path, reward.name, OmegaConf.to_container(reward.reward_kwargs))
    train_dataset = RLHFDataset(config.data.train_files, tokenizer, config.data)
    val_dataset = RLHFDataset(config.data.val_files, tokenizer, config.data)
    with open_dict(config):  # the workers' lr schedules need the run length
        steps = total_training_steps(config, len(train_dataset))
        config.actor_rollout_ref.actor.optim.total_training_steps = steps
        config.critic.optim.total_training_steps = steps
    actor_rollout_wg, critic_wg = build_worker_groups(config)
    return RayPPOTrainer(config, tokenizer, actor_rollout_wg, critic_wg,
                         reward_fn=RewardManager(tokenizer, compute_score, num_examine=0),
                         val_reward_fn=RewardManager(tokenizer, compute_score, num_examine=1),
                         train_dataset=train_dataset, val_dataset=val_dataset, tracker=tracker)


def run_ppo(config: DictConfig) -> list[dict]:
    if not ray.is_initialized():
        ray.init(**ray_init_kwargs(config))
    history = build_trainer(config).fit()
    if config.ray_kwargs.timeline_json_file:
        ray.timeline(filename=config.ray_kwargs.timeline_json_file)
    return history


def ray_init_kwargs(config: DictConfig) -> dict:
    """`ray_kwargs.ray_init` without its null values: null leaves a ray.init argument at Ray's default,
    as in veRL (whose defaults list num_cpus and runtime_env.py_executable as null)."""
    return _without_nulls(OmegaConf.to_container(config.ray_kwargs.ray_init, resolve=True))


def _without_nulls(node):
    if isinstance(node, dict):
        return {key: _without_nulls(value) for key, value in node.items() if value is not None}
    return node


def screen_command_line(argv: list[str]) -> list[str]:
    """`argv` with veRL's keys screened before Hydra parses them: an accepted one left out, an alias
    rewritten; exits naming every refused key at once, instead of Hydra's generic error."""
    is_override = [not arg.startswith("-") and ("=" in arg or arg.startswith("~")) for arg in argv[1:]]
    screened = screen_overrides([arg for arg, yes in zip(argv[1:], is_override) if yes])
    if screened.problems:
        sys.exit("config: " + "; ".join(screened.problems))
    return [argv[0], *(arg for arg, yes in zip(argv[1:], is_override) if not yes), *screened.overrides]


register_schema()


@hydra.main(config_path=str(CONFIG_DIR), config_name=CONFIG_NAME, version_base=None)
def main(config: DictConfig) -> None:
    check_config(config)  # fail before Ray starts
    OmegaConf.resolve(config)
    print(OmegaConf.to_yaml(config), flush=True)
    run_ppo(config)


if __name__ == "__main__":
    sys.argv = screen_command_line(sys.argv)
    main()
