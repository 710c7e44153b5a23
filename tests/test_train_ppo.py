"""The PPO launchers: every key they set exists in the trainer's schema and passes both the
trainer's and the agent's validation; environment and command line override the defaults."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rag_r1.llm_agent.loop import agent_config
from repeated_defaults import repeated_defaults
from verl.trainer.config import compose_config

ROOT = Path(__file__).resolve().parents[1]


def launcher_overrides(script: str, *args: str, **env: str) -> list[str]:
    out = subprocess.run(["bash", str(ROOT / script), *args], env={**os.environ, "DRY_RUN": "1", **env},
                         capture_output=True, text=True, check=True, timeout=120).stdout
    argv = shlex.split(out)
    assert argv[1:3] == ["-m", "verl.trainer.main_ppo"]
    return argv[3:]


def as_dict(overrides: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in overrides)


@pytest.mark.parametrize("script, mode", [("train_ppo.sh", "single"), ("train_ppo_mq.sh", "multi")])
def test_paper_defaults_compose(script, mode):
    overrides = launcher_overrides(script)
    values = as_dict(overrides)
    assert values["agent.mode"] == mode
    assert values["data.train_batch_size"] == "512" and values["actor_rollout_ref.rollout.top_p"] == "0.95"
    config = compose_config(overrides)
    assert config.actor_rollout_ref.actor.state_masking is True
    assert config.algorithm.kl_ctrl.kl_coef == 0.001 and config.algorithm.use_kl_in_reward is True
    agent = agent_config(config)
    assert (agent.mode, agent.max_turns, agent.topk, agent.max_obs_length, agent.max_prompt_length,
            agent.max_start_length, agent.max_response_length) == (mode, 4, 3, 1000, 8192, 2048, 500)


def test_environment_and_command_line_override():
    overrides = launcher_overrides("train_ppo_mq.sh", "agent.max_turns=2", "trainer.total_training_steps=7",
                                   TRAIN_BATCH="256", RETRIEVER_URL="http://10.0.0.1:8000/retrieve")
    config = compose_config(overrides)  # the command line comes last, so it wins
    assert config.agent.max_turns == 2 and config.trainer.total_training_steps == 7
    assert config.data.train_batch_size == 256 and config.retriever.url == "http://10.0.0.1:8000/retrieve"


def test_cpu_profile_uses_smollm2_and_hf(tmp_path):
    # MODEL_PATH given so the test does not convert the GGUF; the profile's own default runs it.
    overrides = launcher_overrides("train_ppo_mq.sh", PROFILE="cpu", MODEL_PATH=str(tmp_path))
    config = compose_config(overrides)
    assert config.actor_rollout_ref.rollout.name == "hf" and config.trainer.device == "cpu"
    assert config.data.train_batch_size == 4 and config.trainer.total_training_steps == 2
    assert config.data.train_files.endswith("data/hotpotqa_closed_mq/train.parquet")


def ppo_value(config, key: str):
    """A key's value as the run sees it: agent.* through the agent's own schema (AgentConfig)."""
    if key.startswith("agent."):
        return getattr(agent_config(config), key.removeprefix("agent."))
    return OmegaConf.select(config, key)


@pytest.mark.parametrize("script", ["train_ppo.sh", "train_ppo_mq.sh"])
def test_the_launchers_repeat_no_default_but_the_named_ones(script):
    repeated = repeated_defaults(launcher_overrides(script), compose_config, ppo_value)
    # The algorithm and the mode are named on purpose (the mode must match the data's prompts); one
    # OFFLOAD switch moves every model's weights, the reference's offload being on by default.
    named = {"algorithm.adv_estimator=gae", "actor_rollout_ref.ref.fsdp_config.param_offload=true"}
    assert set(repeated) - named == ({"agent.mode=multi"} if script == "train_ppo_mq.sh" else set())
