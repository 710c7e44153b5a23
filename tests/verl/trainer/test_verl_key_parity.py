"""Every key of veRL v0.9's ppo_trainer config is honoured, or refused by name at the config check.

The keys and their defaults: tests/fixtures/verl_v0.9_ppo_trainer_keys.json, extracted from veRL's
wheel by scripts/verl_config_keys.py. A key is one of our schema's (verl/trainer/config.py), or an
entry of verl/trainer/verl_keys.py: accepted at the values where veRL does what we do, refused
otherwise, naming the key and why.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from rag_r1.llm_agent.loop import agent_config
from verl.trainer import verl_keys
from verl.trainer.config import compose_config, schema_has, screen_overrides
from verl.trainer.main_ppo import ray_init_kwargs, screen_command_line

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests/fixtures/verl_v0.9_ppo_trainer_keys.json"
VERL_KEYS_FIXTURE = json.loads(FIXTURE.read_text())["keys"]
WHEEL = Path(os.environ.get("VERL_WHEEL", ROOT / ".cache/wheels/verl-0.9.1-py3-none-any.whl"))
REQUIRED = ["data.train_files=train.parquet", "data.val_files=val.parquet", "actor_rollout_ref.model.path=m"]
SEARCH_AGENT = "actor_rollout_ref.rollout.loop=rag_r1.llm_agent.loop:SearchAgentLoop"


def hydra_value(value) -> str:
    """`value` written as a Hydra override's value (strings quoted, so `~/x` or `${...}` stay strings)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(map(hydra_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{hydra_value(item)}" for key, item in value.items()) + "}"
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def at_verl_default(key: str) -> str:
    return f"{key}={hydra_value(VERL_KEYS_FIXTURE[key])}"


def names(message: str, key: str) -> bool:
    """Whether `message` names `key` itself (not a longer key it is the start of)."""
    return re.search(re.escape(key) + r"(?![\w.])", message) is not None


def refused_keys(overrides: list[str]) -> tuple[str, set[str]]:
    """(the message, the keys of `overrides` it names) of composing them."""
    with pytest.raises((ValueError, ConfigCompositionException)) as error:
        compose_config(REQUIRED + overrides)
    message = str(error.value)
    keys = [override.split("=", 1)[0].lstrip("+~") for override in overrides]
    return message, {key for key in keys if names(message, key)}


@pytest.mark.skipif(not WHEEL.is_file(), reason=f"veRL's wheel is not at {WHEEL} (set VERL_WHEEL; "
                                                  "pip download verl==0.9.1 --no-deps -d .cache/wheels)")
def test_the_fixture_is_what_the_script_reads_from_verls_wheel():
    from scripts.verl_config_keys import wheel_keys

    fixture = json.loads(FIXTURE.read_text())
    assert wheel_keys(WHEEL) == fixture
    assert len(fixture["keys"]) == 898 and fixture["keys"]["actor_rollout_ref.rollout.max_model_len"] is None


def test_every_verl_key_is_in_the_schema_or_the_table_and_no_entry_is_dead():
    uncovered = [key for key in VERL_KEYS_FIXTURE if not schema_has(key) and verl_keys.verl_key(key) is None]
    assert uncovered == []
    # a schema key wins over the table: an entry for one would never apply
    assert [entry for entry in verl_keys.VERL_KEYS if schema_has(entry)] == []
    dead = [entry for entry in verl_keys.VERL_KEYS
            if not any(key == entry or key.startswith(entry + ".") for key in VERL_KEYS_FIXTURE)]
    assert dead == []


def test_every_verl_key_outside_the_schema_at_its_default_is_accepted_or_refused_by_name():
    outside = [key for key in VERL_KEYS_FIXTURE if not schema_has(key)]
    screened = screen_overrides([at_verl_default(key) for key in outside])
    assert screened.overrides == []  # none reaches Hydra: each is left out (accepted) or refused
    for key in outside:
        _, entry = verl_keys.verl_key(key)
        problems = [p for p in screened.problems if p.startswith(f"{key}=")]
        if verl_keys.accepts(entry, VERL_KEYS_FIXTURE[key]):
            assert problems == [], key
        else:
            assert len(problems) == 1 and entry.why in problems[0], key
    # compose_config screens before Hydra: one ValueError names every refused key, no "Could not override"
    with pytest.raises(ValueError) as error:
        compose_config(REQUIRED + [at_verl_default(key) for key in outside])
    assert str(error.value).count(" is not supported here: ") == len(screened.problems)


def test_every_schema_key_at_verls_default_composes_or_is_refused_by_name():
    """All of them at once: each refusal is named; without the named ones the rest compose, and the
    config holds veRL's value (an interpolation resolves)."""
    left = {key: at_verl_default(key) for key in VERL_KEYS_FIXTURE if schema_has(key)}
    refused = set()
    while True:
        try:
            config = compose_config(REQUIRED + list(left.values()))
            break
        except (ValueError, ConfigCompositionException) as error:
            named = {key for key in left if names(str(error), key)}
            assert named, str(error)  # every failure names a key that was set
            refused |= named
            for key in named:
                del left[key]
    assert "actor_rollout_ref.rollout.name" in refused  # veRL's ??? : no engine named
    assert {"actor_rollout_ref.rollout.tensor_model_parallel_size", "data.seed",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"} <= refused
    assert "actor_rollout_ref.rollout.mode" in left  # veRL's async rollouts run here
    for key in left:
        value, default = OmegaConf.select(config, key), VERL_KEYS_FIXTURE[key]
        if not (isinstance(default, str) and "${" in default):
            assert value == default, key
    assert len(left) > 100


@pytest.mark.parametrize("override, message", [
    ("actor_rollout_ref.rollout.mode=batch", "actor_rollout_ref.rollout.mode='batch': expected sync | async"),
    ("actor_rollout_ref.rollout.name=sglang", "actor_rollout_ref.rollout.name='sglang' is not supported: hf | vllm"),
    ("actor_rollout_ref.actor.ppo_micro_batch_size=8", "actor_rollout_ref.actor.ppo_micro_batch_size=8 is not "
     "supported here: veRL's deprecated global micro-batch size; set "
     "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"),
    ("actor_rollout_ref.rollout.log_prob_micro_batch_size=8",
     "set actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"),
    ("data.train_max_samples=100", "data.train_max_samples=100 is not supported here: not yet"),
    ("actor_rollout_ref.rollout.enable_chunked_prefill=false", "enable_chunked_prefill=false is not supported here"),
    ("actor_rollout_ref.actor.policy_loss.loss_mode=clip_cov", "loss_mode=clip_cov is not supported here: the policy "
     "loss is PPO's clipped objective"),
    ("actor_rollout_ref.actor.optim.warmup_style=cosine", "set actor_rollout_ref.actor.optim.lr_scheduler_type"),
    ("actor_rollout_ref.rollout.multi_turn.tool_config_path=tools.yaml", "tool_config_path=tools.yaml needs a "
     "multi-turn actor_rollout_ref.rollout.loop that calls tools"),
    ("actor_rollout_ref.rollout.multi_turn.enable=true", "multi_turn.enable=true needs a multi-turn "
     "actor_rollout_ref.rollout.loop"),
    ("actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3", "max_assistant_turns=3 needs a multi-turn"),
    ("critic.fsdp.param_offload=true", "set critic.model.fsdp_config.param_offload"),
    ("ray_kwargs.timeline_json_file=[1]", "ray_kwargs.timeline_json_file"),
    ("+trainer.val_only=true", "trainer.val_only=true is not supported here: not yet"),
    ("algorithm.filter_groups.metric=reward", "veRL's name for the sequence score; set score"),
])
def test_a_verl_key_is_refused_naming_it_and_what_to_do(override, message):
    with pytest.raises((ValueError, ConfigCompositionException), match=re.escape(message)):
        compose_config(REQUIRED + [override])


def test_verl_keys_at_the_values_that_work_compose():
    config = compose_config(REQUIRED + [
        "actor_rollout_ref.rollout.mode=sync", "data.return_raw_chat=true",
        "actor_rollout_ref.actor.ppo_micro_batch_size=null", "actor_rollout_ref.rollout.enable_chunked_prefill=true",
        "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=cosine", "critic.enable=null",
        "+actor_rollout_ref.actor.use_torch_compile=false", SEARCH_AGENT,
        "actor_rollout_ref.rollout.multi_turn.enable=true",
        "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=3",
    ])
    assert config.data.return_raw_chat is True and config.actor_rollout_ref.actor.optim.lr_scheduler_type == "cosine"
    assert config.actor_rollout_ref.rollout.multi_turn.max_assistant_turns == 3
    assert "policy_loss" not in config.actor_rollout_ref.actor  # accepted at what we do: nothing to store


def test_max_model_len_defaults_to_prompt_plus_response_length():
    config = compose_config(REQUIRED + ["data.max_prompt_length=4096", "data.max_response_length=3000"])
    assert config.actor_rollout_ref.rollout.max_model_len == 7096
    config = compose_config(REQUIRED + ["actor_rollout_ref.rollout.max_model_len=15000"])
    assert config.actor_rollout_ref.rollout.max_model_len == 15000


def test_ray_kwargs_is_the_home_and_ray_init_an_alias():
    config = compose_config(REQUIRED + ["ray_init.include_dashboard=false", "ray_kwargs.ray_init.num_cpus=null",
                                        "+ray_kwargs.ray_init.runtime_env={py_executable:null,env_vars:{A:'1'}}"])
    assert "ray_init" not in config
    assert ray_init_kwargs(config) == {"include_dashboard": False, "runtime_env": {"env_vars": {"A": "1"}}}


def test_the_command_line_is_screened_before_hydra():
    argv = ["main_ppo.py", "--config-name", "ppo_trainer", "ray_init.address=auto",
            "actor_rollout_ref.rollout.calculate_log_probs=true", "trainer.nnodes=2"]
    assert screen_command_line(argv) == ["main_ppo.py", "--config-name", "ppo_trainer",
                                         "ray_kwargs.ray_init.address=auto", "trainer.nnodes=2"]
    with pytest.raises(SystemExit, match="actor_rollout_ref.actor.ppo_micro_batch_size=4 .*; "
                                         "data.train_max_samples=8 "):
        screen_command_line(["main_ppo.py", "actor_rollout_ref.actor.ppo_micro_batch_size=4",
                             "data.train_max_samples=8"])


def test_a_verl_key_in_a_yaml_file_is_refused_by_name(tmp_path, monkeypatch):
    from verl.utils import hydra_config

    (tmp_path / "mine.yaml").write_text("defaults:\n  - ppo_trainer_schema\n  - _self_\n"
                                        "data:\n  train_max_samples: 256\n")
    monkeypatch.setattr(hydra_config, "CONFIG_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"data\.train_max_samples \(set in a YAML file\) is "
                                         r"not supported here: not yet"):
        compose_config(REQUIRED, config_name="mine")


# Keys added for veRL parity, and the code that reads each (a key nothing reads is refused instead).
READERS = {
    "data.return_raw_chat": "verl/utils/dataset/rl_dataset.py",
    "actor_rollout_ref.rollout.max_model_len": "verl/workers/rollout/vllm_rollout.py",
    "actor_rollout_ref.rollout.max_num_seqs": "verl/workers/rollout/vllm_rollout.py",
    "actor_rollout_ref.rollout.multi_turn.enable": "verl/trainer/config.py",
    "actor_rollout_ref.rollout.multi_turn.max_assistant_turns": "rag_r1/llm_agent/loop.py",
    "actor_rollout_ref.rollout.multi_turn.tool_config_path": "rag_r1/llm_agent/loop.py",
    "actor_rollout_ref.actor.optim.lr_scheduler_type": "verl/utils/fsdp_utils.py",
    "ray_kwargs.ray_init": "verl/trainer/main_ppo.py",
    "ray_kwargs.timeline_json_file": "verl/trainer/main_ppo.py",
}


@pytest.mark.parametrize("key", sorted(READERS))
def test_an_added_key_is_in_the_schema_and_read(key):
    assert schema_has(key)
    source = (ROOT / READERS[key]).read_text()
    leaf = key.rsplit(".", 1)[-1]
    assert re.search(rf"\.{leaf}\b", source) or key in source, f"{READERS[key]} does not read {key}"


# veRL's Search-R1-like example (examples/sglang_multiturn/search_r1_like: its launcher and the YAML
# it names), as the command-line overrides a researcher would bring.
SEARCH_R1_LIKE = [
    "algorithm.adv_estimator=grpo", "data.train_batch_size=512", "data.val_batch_size=256",
    "data.max_prompt_length=4096", "data.max_response_length=3000", "data.filter_overlong_prompts=True",
    "data.truncation='error'", "data.return_raw_chat=True", "data.shuffle=False",
    "actor_rollout_ref.hybrid_engine=True", "actor_rollout_ref.model.path=Qwen/Qwen2.5-3B-Instruct",
    "actor_rollout_ref.actor.optim.lr=1e-6", "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.285",
    "actor_rollout_ref.model.use_remove_padding=True", "actor_rollout_ref.actor.ppo_mini_batch_size=256",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8", "actor_rollout_ref.actor.use_kl_loss=True",
    "actor_rollout_ref.actor.kl_loss_coef=0.001", "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.entropy_coeff=0", "actor_rollout_ref.model.enable_gradient_checkpointing=True",
    "actor_rollout_ref.actor.fsdp_config.param_offload=False",
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload=False", "actor_rollout_ref.rollout.max_model_len=15000",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1", "actor_rollout_ref.rollout.name=sglang",
    "actor_rollout_ref.rollout.mode=async", "actor_rollout_ref.rollout.gpu_memory_utilization=0.5",
    "actor_rollout_ref.rollout.n=5", "actor_rollout_ref.rollout.multi_turn.enable=True",
    "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=2", "actor_rollout_ref.rollout.multi_turn.format=qwen",
    "actor_rollout_ref.rollout.multi_turn.tool_config_path=search_tool_config.yaml",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8", "actor_rollout_ref.ref.fsdp_config.param_offload=True",
    "algorithm.use_kl_in_reward=False", "trainer.critic_warmup=0", "trainer.val_before_train=False",
    "trainer.logger=['console','wandb']", "trainer.project_name='search_r1_like_async_rl'",
    "trainer.experiment_name='qwen2.5-3b-instruct-search-multiturn'", "trainer.n_gpus_per_node=8",
    "trainer.nnodes=1", "trainer.save_freq=100", "trainer.test_freq=50", "data.train_files=train.parquet",
    "data.val_files=test.parquet", "trainer.total_epochs=1",
]


def test_the_search_r1_like_launcher_works_or_is_refused_by_name_in_one_message(tmp_path):
    tools = tmp_path / "search_tool_config.yaml"
    tools.write_text("tools: []\n")  # the loop reads it; the config only needs it to exist
    launcher = [o.replace("=search_tool_config.yaml", f"={tools}") for o in SEARCH_R1_LIKE]
    message, refused = refused_keys(launcher)
    multi_turn = {"actor_rollout_ref.rollout.multi_turn.enable",
                  "actor_rollout_ref.rollout.multi_turn.max_assistant_turns",
                  "actor_rollout_ref.rollout.multi_turn.tool_config_path"}
    assert refused == {"actor_rollout_ref.rollout.name", "actor_rollout_ref.rollout.multi_turn.format"} | multi_turn
    assert "SingleTurnLoop generates once" in message and "format=qwen is not supported here: tool calls" in message
    # the rest works as given (async rollouts and the tool config included) with the search agent as the loop
    kept = [o for o in launcher if o.split("=", 1)[0] not in refused - multi_turn]
    config = compose_config(kept + [SEARCH_AGENT])
    parser = OverridesParser.create()
    for override in kept:
        parsed = parser.parse_override(override)
        value = OmegaConf.select(config, parsed.key_or_group)
        assert OmegaConf.to_container(value) if OmegaConf.is_list(value) else value == parsed.value(), override
    assert config.actor_rollout_ref.rollout.max_model_len == 15000 and config.data.return_raw_chat is True
    assert config.actor_rollout_ref.rollout.mode == "async"
    assert config.actor_rollout_ref.rollout.multi_turn.tool_config_path == str(tools)
    assert agent_config(config).max_turns == 1  # two assistant turns: one that may search, one that answers
