from __future__ import annotations

import re

import pytest
from hydra.errors import ConfigCompositionException

from verl.trainer.config import compose_config, need_critic, need_reference_policy
from verl.trainer.ppo import core_algos

REQUIRED = ["data.train_files=train.parquet", "data.val_files=val.parquet", "actor_rollout_ref.model.path=m"]


def test_defaults_come_from_the_schema_and_overrides_apply():
    config = compose_config(REQUIRED + ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n=4",
                                        "data.max_response_length=7", "agent.max_turns=3", "retriever.topk=2"])
    assert config.actor_rollout_ref.rollout.response_length == 7  # interpolated from data.*
    assert config.algorithm.kl_ctrl.kl_coef == 0.001 and config.trainer.resume_mode == "auto"
    assert config.agent == {"max_turns": 3} and config.retriever == {"topk": 2}  # free-form nodes
    assert not need_critic(config) and not need_reference_policy(config)
    assert need_critic(compose_config(REQUIRED))


@pytest.mark.parametrize("bad", ["data.trian_files=x", "actor_rollout_ref.actor.clip_ration=0.1",
                                 "algorithm.kl_ctrl.kl_cof=0.1", "trainer.save_frq=3"])
def test_misspelled_key_fails_naming_it(bad):
    with pytest.raises(ConfigCompositionException, match=bad.split("=")[0].replace(".", r"\.")):
        compose_config(REQUIRED + [bad])


def test_missing_keys_and_wrong_values_are_named():
    with pytest.raises(ValueError, match="'actor_rollout_ref.model.path'.*'data.train_files'.*'data.val_files'"):
        compose_config([])
    with pytest.raises(ValueError, match="missing mandatory key 'data.val_files'"):
        compose_config(["data.train_files=t.parquet"])
    with pytest.raises(ValueError, match="rollout.n must be >= 2"):
        compose_config(REQUIRED + ["algorithm.adv_estimator=grpo"])
    with pytest.raises(ValueError, match="algorithm.adv_estimator.*'ppo2'"):
        compose_config(REQUIRED + ["algorithm.adv_estimator=ppo2"])
    with pytest.raises(ValueError, match="not a multiple of critic.ppo_mini_batch_size=5"):
        compose_config(REQUIRED + ["critic.ppo_mini_batch_size=5"])
    # GRPO builds no critic, so the critic's batch sizes are not its business
    compose_config(REQUIRED + ["critic.ppo_mini_batch_size=5", "algorithm.adv_estimator=grpo",
                               "actor_rollout_ref.rollout.n=2"])
    with pytest.raises(ConfigCompositionException, match="clip_ratio"):
        compose_config(REQUIRED + ["actor_rollout_ref.actor.clip_ratio=abc"])
    for share in ("-0.1", "1.5"):
        with pytest.raises(ValueError, match=f"algorithm.negative_advantage_scale={share}: expected a share"):
            compose_config(REQUIRED + [f"algorithm.negative_advantage_scale={share}"])
    assert compose_config(REQUIRED + ["algorithm.negative_advantage_scale=0"]).algorithm.negative_advantage_scale == 0


def test_command_line_fails_at_start_naming_the_key():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", *REQUIRED, "trainer.n_gpus_per_nod=2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "trainer.n_gpus_per_nod" in run.stderr


@pytest.mark.parametrize("override", [
    "actor_rollout_ref.hybrid_engine=false", "actor_rollout_ref.actor.strategy=megatron", "critic.strategy=megatron",
    "critic.model.tokenizer_path=other", "actor_rollout_ref.rollout.free_cache_engine=false",
    "actor_rollout_ref.actor.optim.total_training_steps=100", "critic.optim.total_training_steps=100",
    "actor_rollout_ref.actor.fsdp_config.fsdp_size=1", "actor_rollout_ref.ref.fsdp_config.fsdp_size=1",
    "critic.model.fsdp_config.fsdp_size=1", "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
])
def test_a_key_set_to_what_nothing_implements_fails_naming_it(override):
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=rf"{re.escape(key)}=\S+ is not supported"):
        compose_config(REQUIRED + ["trainer.n_gpus_per_node=2", override])


def test_keys_at_what_is_implemented_pass():
    config = compose_config(REQUIRED + ["actor_rollout_ref.actor.strategy=fsdp2", "critic.strategy=fsdp",
                                        "trainer.n_gpus_per_node=2", "actor_rollout_ref.actor.fsdp_config.fsdp_size=2",
                                        "actor_rollout_ref.rollout.name=vllm",
                                        "actor_rollout_ref.rollout.tensor_model_parallel_size=2",
                                        "actor_rollout_ref.model.use_remove_padding=true",
                                        "critic.model.use_remove_padding=true"])
    assert config.actor_rollout_ref.model.use_remove_padding is True and config.critic.model.use_remove_padding is True


def test_data_max_obs_length_is_gone():
    # the agent's observation cap is agent.max_obs_length (rag_r1.llm_agent.config.AgentConfig)
    with pytest.raises(ConfigCompositionException, match=r"data\.max_obs_length"):
        compose_config(REQUIRED + ["data.max_obs_length=1000"])


@pytest.mark.parametrize("override, message", [
    ("algorithm.kl_ctrl.type=pid", "algorithm.kl_ctrl.type='pid': expected one of adaptive, fixed"),
    ("actor_rollout_ref.actor.kl_loss_type=k4", "kl_loss_type='k4': expected one of abs, k1, k2, k3, kl, low_var_kl, mse"),
    ("critic.loss_agg_mode=sum", "critic.loss_agg_mode='sum': expected one of seq-mean-token-mean"),
])
def test_registry_names_come_from_core_algos(override, message):
    with pytest.raises(ValueError, match=message):
        compose_config(REQUIRED + [override])


def test_a_name_registered_in_core_algos_passes_the_check(monkeypatch):
    monkeypatch.setitem(core_algos.KL_CONTROLLERS, "pid", core_algos.KL_CONTROLLERS["fixed"])
    compose_config(REQUIRED + ["algorithm.kl_ctrl.type=pid"])
