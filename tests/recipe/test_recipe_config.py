"""Profiles and overrides: the trainers' own keys, merged left to right, checked by name before any stage."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recipe.config import (PROFILE_DIR, REPO, RecipeConfig, check_settings, hydra_value, load_settings,
                           rl_overrides)

PROFILES = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def test_long_is_the_results_profile_carried_on_with_dev_questions():
    results, long = load_settings(["results"]), load_settings(["long"])
    assert (long.recipe.out_dir, long.recipe.dev_questions) == (REPO / "results-long", 50)
    assert long.rl.pop("trainer.total_training_steps") == 24
    assert results.rl.pop("trainer.total_training_steps") == 6
    # the same samples, agent and trainers: a long run resumes a results run at its last step
    assert (long.rl, long.sft, long.agent) == (results.rl, results.sft, results.agent)
    own = ("out_dir", "dev_questions", "eval_runs")
    assert {k: v for k, v in vars(long.recipe).items() if k not in own} == \
        {k: v for k, v in vars(results.recipe).items() if k not in own}
    assert set(results.recipe.eval_runs) < set(long.recipe.eval_runs)
    assert results.recipe.data_dir == REPO.parent / "shared" / "data" / "hotpotqa_closed"


def test_overrides_environment_and_later_profiles_win(tmp_path):
    settings = load_settings(["demo", "ppo"], ["rl.trainer.total_training_steps=4", "recipe.rl_questions=8",
                                               "recipe.eval_questions=null", "recipe.eval_runs=[rl-multi]",
                                               "agent.max_turns=3", "sft.optim.lr=1e-5"],
                             env={"DATA": str(tmp_path / "set"), "OUT": "elsewhere"})
    assert settings.rl["trainer.total_training_steps"] == 4 and settings.rl["algorithm.adv_estimator"] == "gae"
    assert settings.rl["trainer.experiment_name"] == "ppo_multi"  # ppo over demo (over base)
    assert settings.rl["critic.ppo_mini_batch_size"] == 4  # interpolated from demo's actor mini-batch
    assert (settings.recipe.rl_questions, settings.recipe.eval_questions, settings.recipe.eval_runs) == (8, None,
                                                                                                        ["rl-multi"])
    assert (settings.recipe.data_dir, settings.recipe.out_dir) == (tmp_path / "set", REPO / "elsewhere")
    assert settings.agent == {"mode": "multi", "max_turns": 3, "topk": 2, "max_obs_length": 512}
    assert settings.sft["optim.lr"] == 1e-5 and settings.sft["trainer.total_epochs"] == 2


def test_dotted_and_nested_keys_are_the_same_key(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("extends: " + str(PROFILE_DIR / "demo.yaml") + "\n"
                      "rl:\n  actor_rollout_ref:\n    actor:\n      optim.lr: 3.0e-5\n")
    assert load_settings([nested]).rl["actor_rollout_ref.actor.optim.lr"] == 3e-5
    twice = tmp_path / "twice.yaml"
    twice.write_text("rl:\n  trainer.save_freq: 2\n  trainer:\n    save_freq: 3\n")
    with pytest.raises(SystemExit, match="rl.trainer.save_freq is set twice"):
        load_settings([twice])


@pytest.mark.parametrize("override, refusal", [
    ("rl.trainer.total_trainig_steps=4", "rl.trainer.total_trainig_steps: not a key of the PPO trainer"),
    ("sft.optim.lrr=1e-5", "sft.optim.lrr: not a key of the SFT trainer"),
    ("recipe.rl_qestions=8", "recipe.rl_qestions: not a recipe key"),
    ("agent.max_turn=3", "agent.max_turn: not an agent key"),
    ("agent.max_queries=2", "agent.max_queries: rag_r1.eval has no flag for it"),
    ("agent.guide_file=g.jsonl", "agent.guide_file: set by the recipe from recipe.guides"),
    ("eval_agent.mode=single", "eval_agent.mode: evaluation takes max_turns, topk, max_obs_length"),
    ("rl.agent.max_turns=3", "rl.agent.max_turns: agent keys belong in the profile's agent node"),
    ("rl.data.train_files=x.parquet", "rl.data.train_files: set by the RL stage"),
    ("rl.data.seed=3", "rl.data.seed: set for each RL run by recipe.rl_seeds"),
    ("rl.actor_rollout_ref.rollout.seed=3",
     "rl.actor_rollout_ref.rollout.seed: set for each RL run by recipe.rl_seeds"),
    ("recipe.rl_seeds=[]", "recipe.rl_seeds=[]: expected one or more distinct seeds"),
    ("recipe.rl_seeds=[1,1]", "recipe.rl_seeds=[1, 1]: expected one or more distinct seeds"),
    ("sft.model.partial_pretrain=m", "sft.model.partial_pretrain: set by the SFT stage"),
    ("rl.retriever.timout=5", "unknown key(s) retriever.timout"),
    ("rl.custom_reward_function.reward_kwargs.round_cots=0.1", "unexpected keyword argument 'round_cots'"),
    ("rl.custom_reward_function.reward_kwargs.scorer=bleu", "'bleu' is not a scorer"),
    ("rl.data.train_batch_size=abc", "data.train_batch_size=abc"),
    ("rl.actor_rollout_ref.actor.ppo_mini_batch_size=3", "is not a multiple of actor_rollout_ref.actor.ppo_mini_batch_size=3"),
    ("rl.algorithm.negative_advantage_scale=1.5", "negative_advantage_scale=1.5: expected a share between 0 and 1"),
    ("agent.max_turns=0", "agent.max_turns=0: expected an integer >= 1"),
    ("recipe.eval_runs=[ppo-multi]", "recipe.eval_runs: unknown ['ppo-multi']"),
    ("recipe.sft_thought=cite", "recipe.sft_thought: expected one of fixed, quote, got 'cite'"),
    ("recipe.rl_questions=many", "rl_questions"),
    ("trainer.total_training_steps=4", "unknown node(s) trainer"),
])
def test_a_wrong_key_or_value_is_refused_by_name_before_any_stage(override, refusal):
    with pytest.raises(SystemExit) as refused:
        check_settings(load_settings(["demo"], [override]))
    assert refusal in str(refused.value)


def test_one_step_off_is_refused_before_any_stage_when_a_run_is_guided_and_taken_without_guides():
    one_step_off = ["rl.actor_rollout_ref.rollout.mode=async", "rl.actor_rollout_ref.rollout.lag=1"]
    with pytest.raises(SystemExit, match="rollout.lag=1 with agent.guide_file=.*use lag 0 with guides"):
        check_settings(load_settings(["demo"], one_step_off))
    with pytest.raises(SystemExit, match="rollout.lag=1 with agent.guide_file"):  # the control is guided
        check_settings(load_settings(["demo"], [*one_step_off, "recipe.guides=false"]))
    checked = check_settings(load_settings(["demo"], [*one_step_off, "recipe.guides=false",
                                                      "recipe.guide_control=false"]))
    assert checked.rl.actor_rollout_ref.rollout.lag == 1


def test_an_override_needs_a_node_a_key_and_a_value():
    with pytest.raises(SystemExit, match="expected node.key=value"):
        load_settings(["demo"], ["=4"])
    with pytest.raises(SystemExit, match="profile nothing: no file"):
        load_settings(["nothing"])
    with pytest.raises(SystemExit, match="recipe.data_dir, recipe.out_dir: not set"):
        load_settings([PROFILE_DIR / "base.yaml"])


def test_values_reach_the_trainer_as_they_were_written():
    from verl.trainer.config import compose_config

    values = {"text": "two words, one comma", "number_text": "1.5", "bool_text": "true", "quote": "it's",
              "number": 0.0001, "flag": False, "nothing": None, "items": ["a", 2]}
    settings = load_settings(["demo"])
    keys = {f"custom_reward_function.reward_kwargs.{k}": v for k, v in values.items()}
    overrides = rl_overrides(settings, {"data.train_files": "t", "data.val_files": "t",
                                        "actor_rollout_ref.model.path": "m", **keys})
    assert all(f"+{key}=" in " ".join(overrides) for key in keys)  # Hydra adds to an open mapping with +
    config = compose_config(overrides)
    assert OmegaConf.to_container(config.custom_reward_function.reward_kwargs) == {"scorer": "em", "round_cost": 0.1,
                                                                                   **values}
    assert [hydra_value(v) for v in (True, None, 1e-5, [1, "b c"], "a/b:c")] == ["true", "null", "1e-05",
                                                                                 "[1,'b c']", "a/b:c"]


def schema_default(node: str, key: str, defaults):
    """The default of a profile key: its trainer's (composed with only the stage's mandatory keys) or AgentConfig's."""
    from rag_r1.llm_agent.config import AgentConfig

    if node in ("agent", "eval_agent"):
        return getattr(AgentConfig, key)
    return OmegaConf.select(defaults[node], key)


def profile_settings(profile: str):
    """A profile's settings; base.yaml and the ppo overlay name no data of their own."""
    paths = ["recipe.data_dir=d", "recipe.out_dir=o"]
    if profile == "ppo":
        return load_settings(["base", "ppo"], paths)
    return load_settings([profile], paths if profile == "base" else [])


@pytest.mark.parametrize("profile", PROFILES)
def test_a_profile_composes_and_sets_only_what_differs_from_the_schemas_defaults(profile):
    from verl.trainer.config import compose_config as compose_ppo
    from verl.trainer.fsdp_sft_trainer import compose_config as compose_sft

    settings = profile_settings(profile)
    checked = check_settings(settings)
    # RL is trained for the episode it is scored on
    assert (checked.agent.mode, checked.agent.max_turns, checked.eval_agent.max_turns) == ("multi", 2, 2)
    defaults = {"rl": compose_ppo(["data.train_files=t", "data.val_files=t", "actor_rollout_ref.model.path=m"]),
                "sft": compose_sft(["data.train_files=t", "model.partial_pretrain=m"])}
    repeated = [f"{node}.{key}" for node in ("agent", "eval_agent", "rl", "sft")
                for key, value in getattr(settings, node).items() if value == schema_default(node, key, defaults)]
    # named on purpose: the mode RL, its data and its questions are built in; and GAE in the ppo profile
    assert set(repeated) <= {"agent.mode", "rl.algorithm.adv_estimator"}
    recipe_defaults = RecipeConfig(data_dir=Path("d"), out_dir=Path("o"))
    profile_recipe = OmegaConf.to_container(OmegaConf.load(PROFILE_DIR / f"{profile}.yaml")).get("recipe", {})
    assert [k for k, v in profile_recipe.items() if getattr(recipe_defaults, k) == v] == []
