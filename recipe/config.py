"""The recipe's settings: profiles written in the trainers' own keys, plus the few keys that are the recipe's.

A profile (configs/recipe/<name>.yaml) has these nodes, each optional:

    extends: base.yaml   # the profile this one changes (a path relative to this file)
    recipe:              # RecipeConfig below: data, model, sizes, evaluations
    agent:               # AgentConfig keys (rag_r1/llm_agent/config.py): SFT data, RL, frontier and evaluation alike
    eval_agent:          # AgentConfig keys evaluation runs with instead of agent's, where a profile means them to differ
    sft:                 # SFT trainer keys (verl/trainer/fsdp_sft_trainer.py)
    rl:                  # PPO trainer keys (verl/trainer/config.py)

A key is a dotted path (`actor_rollout_ref.actor.optim.lr: 1.0e-4`) or a nested mapping alike; a value
may interpolate another (`${rl.data.max_response_length}`). Command-line overrides speak the same
vocabulary: `rl.trainer.total_training_steps=4 recipe.rl_questions=8`. Every default lives in its
schema (docs/config.md lists them all): a profile sets only what the recipe changes.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO / "configs" / "recipe"
NODES = ("recipe", "agent", "eval_agent", "sft", "rl")
MODELS = ("base", "sft", "rl")
MODES = ("single", "multi")
CONTROL = "control"
# What makes the control imitation only: the guides alone, each weighed as in a group the policy failed,
# and nothing sampled.
CONTROL_KEYS = {"algorithm.guides.only": True}


@dataclass
class RecipeConfig:
    # corpus.jsonl, train.jsonl and test.jsonl (scripts/data_process/closed_corpus.py writes them); a
    # relative path is read from the repository root, as is out_dir. DATA= sets it from the environment.
    data_dir: Path = MISSING
    out_dir: Path = MISSING  # everything a run writes, and what a re-run resumes from; OUT= sets it
    model: Optional[str] = None  # base HF checkpoint; None = the pip-shipped SmolLM2-135M-Instruct, converted
    encoder: str = "minilm"  # the retrieval server's sentence-transformers dir or name; minilm = the pip-shipped MiniLM
    data_source: str = "closed_multihop"  # data_source of the RL rows: it picks their reward (rag_r1.reward.REWARDS)
    seed: int = 0  # draws the SFT, RL, dev and evaluated test questions
    sft_questions: int = 64  # train questions per mode (a seeded sample) turned into SFT conversations
    # The thought before the answer in SFT conversations and guides: fixed (one sentence for every
    # answer) or quote (the supporting sentence that holds the answer; rag_r1.sft.evidence).
    sft_thought: str = "fixed"
    rl_questions: Optional[int] = 64  # a seeded sample of train questions RL draws from; None = all
    # With n > 0 the SFT model answers each drawn RL question n times first, and RL keeps those at its
    # frontier: right sometimes but not always (with guides, never too). 0 trains on the draw as it is.
    frontier_n: int = 0
    # Draw the RL questions evenly over the rows' `type` (e.g. bridge / comparison) instead of in the
    # train set's proportions, so a rare type still teaches its own search pattern.
    rl_balance_types: bool = False
    # Whether RL questions may be answered by yes or no: a one-bit answer scores a fixed guess half the
    # time, so on them RL may teach which guess to make rather than to read. false drops them from
    # the draw; the dev questions stay the same.
    rl_yes_no: bool = True
    guides: bool = True  # mix the gold evidence trajectory of each RL question into its group (agent.guide_file)
    # One RL run per seed, from the same SFT model, questions and guides, so that a gain can be told from
    # one run's luck. A seed is the run's data.seed (question order) and actor_rollout_ref.rollout.seed (its
    # workers' adapter initialisation and sampling). The first seed's model is `rl`, seed k's `rl_seed<k>`.
    rl_seeds: list[int] = field(default_factory=lambda: [0])
    # A guide-only control run per RL seed (`control`, `control_seed<k>`): that seed's RL run on its guides
    # alone (built even when guides is false), each at the advantage a guide gets in a group whose own
    # samples all failed, and no rollouts (algorithm.guides.only). Evaluated beside rl in agent.mode: how
    # much of RL's gain imitating the guides alone reaches, seed against seed.
    guide_control: bool = False
    # model-mode pairs evaluated on the test questions, in this order (model: base | sft | rl; mode: single | multi);
    # rl-<mode> evaluates every seed's RL model
    eval_runs: list[str] = field(default_factory=lambda: ["base-multi", "sft-multi", "rl-multi"])
    eval_questions: Optional[int] = 50  # a seeded sample of test questions evaluated; None = all
    # Train questions that neither SFT nor RL drew, on which the SFT, RL and control models are evaluated
    # in agent.mode too (eval/<model>-<mode>/dev): the set to compare settings on, so that the test
    # questions decide nothing. 0 = none.
    dev_questions: int = 0
    eval_batch_size: int = 16  # trajectories an evaluation advances together


@dataclass(frozen=True)
class Settings:
    """A profile, merged and split by node: what a Pipeline runs."""

    recipe: RecipeConfig
    agent: dict[str, Any]  # agent keys the profile sets
    eval_agent: dict[str, Any]  # agent keys evaluation changes
    sft: dict[str, Any]  # dotted SFT trainer key -> value
    rl: dict[str, Any]  # dotted PPO trainer key -> value

    def as_profile(self) -> dict:
        """The settings as one profile (what OUT/config.json records)."""
        recipe = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.recipe).items()}
        return {"recipe": recipe, "agent": dict(self.agent), "eval_agent": dict(self.eval_agent),
                "sft": dict(self.sft), "rl": dict(self.rl)}


def load_settings(profiles: Iterable[str | Path], overrides: Iterable[str] = (),
                  env: Mapping[str, str] | None = None) -> Settings:
    """The profiles merged left to right, then DATA= and OUT= from `env`, then the `node.key=value`
    overrides; every problem raises SystemExit naming the key."""
    merged = OmegaConf.create({})
    for profile in profiles:
        merged = OmegaConf.merge(merged, load_profile(profile_path(profile)))
    for var, key in (("DATA", "data_dir"), ("OUT", "out_dir")):
        if (env or {}).get(var):
            OmegaConf.update(merged, f"recipe.{key}", env[var], force_add=True)
    merged = OmegaConf.merge(merged, parse_overrides(overrides))
    try:
        values = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as error:
        raise SystemExit(f"profile: {error}") from error
    return Settings(recipe=recipe_config(values.get("recipe") or {}),
                    agent=flat(values.get("agent") or {}), eval_agent=flat(values.get("eval_agent") or {}),
                    sft=flat(values.get("sft") or {}), rl=flat(values.get("rl") or {}))


def profile_path(profile: str | Path) -> Path:
    """configs/recipe/<name>.yaml for a bare name, else the path given."""
    path = Path(profile)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILE_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise SystemExit(f"profile {profile}: no file {path} (profiles: {known})")
    return path


def load_profile(path: Path) -> DictConfig:
    """One profile file over the one it extends."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    parent = raw.pop("extends", None)
    check_nodes(raw, str(path))
    own = OmegaConf.create(nested(raw, str(path)))
    if parent is None:
        return own
    return OmegaConf.merge(load_profile(path.parent / parent), own)


def parse_overrides(overrides: Iterable[str]) -> DictConfig:
    """`node.key=value` words as one nested profile (values read as YAML: 1e-4, true, null, [a,b])."""
    overrides = list(overrides)
    for word in overrides:
        if "=" not in word or word.startswith("="):
            raise SystemExit(f"override {word!r}: expected node.key=value (e.g. rl.trainer.total_training_steps=4)")
    tree = OmegaConf.to_container(OmegaConf.from_dotlist(overrides), resolve=False)
    check_nodes(tree, "overrides")
    return OmegaConf.create(tree)


def check_nodes(tree: dict, where: str) -> None:
    unknown = sorted(set(tree) - set(NODES))
    if unknown:
        raise SystemExit(f"{where}: unknown node(s) {', '.join(unknown)}; a profile has {', '.join(NODES)} "
                         "(and extends)")


def nested(tree: dict, where: str) -> dict:
    """`tree` with every dotted key spelled out as nested mappings; a key set twice raises."""
    out: dict[str, Any] = {}
    for key, value in flat(tree, where=where).items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SystemExit(f"{where}: {key} is set twice")
        if leaf in node:
            raise SystemExit(f"{where}: {key} is set twice")
        node[leaf] = value
    return out


def flat(tree: dict, prefix: str = "", where: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf (a list or an empty mapping is a leaf); a key set twice raises."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        leaves = flat(value, f"{prefix}{key}.", where) if isinstance(value, dict) and value else {
            f"{prefix}{key}": value}
        twice = sorted(set(leaves) & set(out))
        if twice:
            raise SystemExit(f"{where}: {twice[0]} is set twice")
        out.update(leaves)
    return out


def recipe_config(values: dict) -> RecipeConfig:
    """RecipeConfig from the recipe node: an unknown key or a wrong type raises naming it; relative
    paths are read from the repository root."""
    known = [f.name for f in fields(RecipeConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SystemExit(f"recipe.{', recipe.'.join(unknown)}: not a recipe key; known: {', '.join(known)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RecipeConfig), values)
    except OmegaConfBaseException as error:
        raise SystemExit(f"recipe: {error}".replace("\n", " ")) from error
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise SystemExit(f"recipe.{', recipe.'.join(missing)}: not set (a profile sets it; DATA= and OUT= set the "
                         "data and output directories)")
    config = OmegaConf.to_object(merged)
    for key in ("data_dir", "out_dir"):  # an absolute path stays as it is
        setattr(config, key, Path(os.path.abspath(REPO / getattr(config, key))))
    check_recipe(config)
    return config


def check_recipe(config: RecipeConfig) -> None:
    from rag_r1.sft.evidence import FINAL_THOUGHTS

    known = {f"{model}-{mode}" for model in MODELS for mode in MODES}
    problems = []
    unknown = [run for run in config.eval_runs if run not in known]
    if unknown:
        problems.append(f"recipe.eval_runs: unknown {unknown}; expected model-mode pairs of {', '.join(MODELS)} and "
                        f"{', '.join(MODES)} (e.g. rl-multi)")
    if config.sft_thought not in FINAL_THOUGHTS:
        problems.append(f"recipe.sft_thought: expected one of {', '.join(FINAL_THOUGHTS)}, got {config.sft_thought!r}")
    for key in ("sft_questions", "eval_batch_size"):
        if getattr(config, key) < 1:
            problems.append(f"recipe.{key}={getattr(config, key)}: expected an integer >= 1")
    for key in ("frontier_n", "dev_questions"):
        if getattr(config, key) < 0:
            problems.append(f"recipe.{key}={getattr(config, key)}: expected an integer >= 0")
    if not config.rl_seeds or len(set(config.rl_seeds)) < len(config.rl_seeds):
        problems.append(f"recipe.rl_seeds={config.rl_seeds}: expected one or more distinct seeds")
    if problems:
        raise SystemExit("; ".join(problems))


# ---------------------------------------------------------------- the RL runs

@dataclass(frozen=True)
class RLRun:
    """One run of the RL stage: its model is checkpoints/<name>, its log runs/<name>, its evaluations
    eval/<name>-<mode>/."""

    name: str  # rl (the first seed), rl_seed<k>, control (the first seed's control) or control_seed<k>
    seed: int
    guided: bool  # whether its groups get the guides (agent.guide_file)
    control: bool = False  # the guide-only control: CONTROL_KEYS over the RL stage's keys

    def trainer_keys(self) -> dict[str, Any]:
        """The PPO trainer keys this run sets over the RL stage's."""
        seeds = {key: self.seed for key in RL_SEED_KEYS}
        return {**seeds, **CONTROL_KEYS} if self.control else seeds


def rl_runs(config: RecipeConfig) -> list[RLRun]:
    """The RL stage's runs, in the order they train: one per seed, then with guide_control a control per seed."""
    runs = [RLRun(seed_name("rl", i, seed), seed, config.guides) for i, seed in enumerate(config.rl_seeds)]
    if config.guide_control:
        runs += [RLRun(seed_name(CONTROL, i, seed), seed, guided=True, control=True)
                 for i, seed in enumerate(config.rl_seeds)]
    return runs


def seed_name(kind: str, index: int, seed: int) -> str:
    """The run of `kind` (rl or control) with the index-th of recipe.rl_seeds: the first is `kind` itself."""
    return kind if index == 0 else f"{kind}_seed{seed}"


# ---------------------------------------------------------------- the stages' trainer commands, checked

# Keys the stages set from their own paths (and agent.guide_file from recipe.guides): not a profile's.
RL_STAGE_KEYS = ("data.train_files", "data.val_files", "actor_rollout_ref.model.path", "trainer.default_local_dir",
                 "retriever.url")
SFT_STAGE_KEYS = ("data.train_files", "model.partial_pretrain", "trainer.default_local_dir")
RL_SEED_KEYS = ("data.seed", "actor_rollout_ref.rollout.seed")  # each RL run's seed (recipe.rl_seeds)
# rag_r1.eval and the frontier take these agent keys as flags; an agent key evaluation has no flag for
# (max_queries, query_delimiter) would leave RL and evaluation disagreeing, so a profile cannot set it.
EVAL_AGENT_KEYS = ("max_turns", "topk", "max_obs_length", "unseen_passages")
RL_ONLY_AGENT_KEYS = ("mode", "evidence_reward_weight")  # mode: the RL mode (evaluation names its own)
# Stand-ins for the paths a stage knows only when it runs: the check composes with them.
PLACEHOLDER_URL = "http://127.0.0.1:8000/retrieve"
PLACEHOLDER_OUT = Path("OUT")


@dataclass(frozen=True)
class Checked:
    """What the checks composed: the values the stages read besides the profile's own."""

    rl: DictConfig  # the PPO trainer's config of the RL stage
    agent: Any  # AgentConfig of SFT data, guides, the frontier and RL
    eval_agent: Any  # AgentConfig of evaluation: agent with eval_agent's keys


def rl_overrides(settings: Settings, stage: Mapping[str, Any], run: RLRun | None = None) -> list[str]:
    """The PPO trainer's overrides of one RL run (`run`; None: the first): its paths (`stage`), the rl
    node, the run's own keys over it and the agent node."""
    from verl.trainer.config import FREE_FORM_NODES, PPOConfig

    run = run or rl_runs(settings.recipe)[0]
    agent = {f"agent.{key}": value for key, value in settings.agent.items()}
    return trainer_overrides({**stage, **settings.rl, **run.trainer_keys(), **agent}, PPOConfig, FREE_FORM_NODES)


def sft_overrides(settings: Settings, stage: Mapping[str, Any]) -> list[str]:
    """The SFT trainer's overrides of the SFT stage: its paths (`stage`) and the sft node."""
    from verl.trainer.fsdp_sft_trainer import SFTConfig

    return trainer_overrides({**stage, **settings.sft}, SFTConfig)


def check_settings(settings: Settings) -> Checked:
    """Compose both trainers' configs as their stages will, and the agent's, before any stage runs: a
    misspelt key, a wrong type or an inconsistent setting raises SystemExit naming it now, not
    after the stages before it."""
    from dataclasses import replace

    from rag_r1.llm_agent.config import AgentConfig

    check_stage_keys(settings)
    out = PLACEHOLDER_OUT
    rl = composed("rl", tuple(rl_overrides(settings, {
        "data.train_files": out / "rl_data/train.parquet", "data.val_files": out / "rl_data/train.parquet",
        "actor_rollout_ref.model.path": out / "checkpoints/sft", "trainer.default_local_dir": out / "runs/rl",
        "retriever.url": PLACEHOLDER_URL})))
    composed("sft", tuple(sft_overrides(settings, {
        "data.train_files": [out / "sft_data/multi.jsonl", out / "sft_data/single.jsonl"],
        "model.partial_pretrain": out / "checkpoints/base", "trainer.default_local_dir": out / "runs/sft"})))
    try:
        agent = AgentConfig.from_config(rl)
        eval_agent = replace(agent, **settings.eval_agent)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    check_retriever_and_reward(rl, settings.recipe.data_source)
    if any(run.guided for run in rl_runs(settings.recipe)):
        check_guided(rl, out / "rl_data/guides.jsonl")
    return Checked(rl=rl, agent=agent, eval_agent=eval_agent)


def check_guided(rl: DictConfig, guide_file: Path) -> None:
    """The trainer's checks of guides, on the RL config as a guided run gets it (the guide file is
    only written by a later stage, so the composed config above has none)."""
    from verl.trainer.config import guides_problems

    guided = OmegaConf.merge(rl, {"agent": {"guide_file": str(guide_file)}})
    problems = guides_problems(guided)
    if problems:
        raise SystemExit("; ".join(problems))


def check_stage_keys(settings: Settings) -> None:
    from rag_r1.llm_agent.config import AgentConfig

    problems = [f"rl.{key}: set by the RL stage" for key in RL_STAGE_KEYS if key in settings.rl]
    problems += [f"rl.{key}: set for each RL run by recipe.rl_seeds" for key in RL_SEED_KEYS if key in settings.rl]
    problems += [f"sft.{key}: set by the SFT stage" for key in SFT_STAGE_KEYS if key in settings.sft]
    problems += [f"rl.{key}: agent keys belong in the profile's agent node" for key in settings.rl
                 if key.split(".")[0] == "agent"]
    agent_keys = {f.name for f in fields(AgentConfig) if f.default is not MISSING_FIELD}
    settable = EVAL_AGENT_KEYS + RL_ONLY_AGENT_KEYS
    for key in settings.agent:
        if key == "guide_file":
            problems.append("agent.guide_file: set by the recipe from recipe.guides")
        elif key in agent_keys and key not in settable:
            problems.append(f"agent.{key}: rag_r1.eval has no flag for it, so evaluation would not run with it")
        elif key not in agent_keys:
            problems.append(f"agent.{key}: not an agent key a profile sets (those are {', '.join(settable)}; the "
                            "length caps are rl.data.*)")
    problems += [f"eval_agent.{key}: evaluation takes {', '.join(EVAL_AGENT_KEYS)} only"
                 for key in settings.eval_agent if key not in EVAL_AGENT_KEYS]
    if problems:
        raise SystemExit("; ".join(problems))


@lru_cache(maxsize=32)
def composed(node: str, overrides: tuple[str, ...]) -> DictConfig:
    """The trainer's config these overrides compose to, checked by the trainer's own check."""
    if node == "rl":
        from verl.trainer.config import compose_config
    else:
        from verl.trainer.fsdp_sft_trainer import compose_config
    from hydra.errors import ConfigCompositionException

    trainer = "PPO trainer" if node == "rl" else "SFT trainer"
    try:
        return compose_config(list(overrides))
    except ConfigCompositionException as error:
        unknown = re.match(r"Could not override '([^']+)'", str(error))
        if unknown:  # Hydra would suggest `+key`, which only hides the misspelling
            raise SystemExit(f"{node}.{unknown.group(1)}: not a key of the {trainer} (docs/config.md)") from error
        cause = f" ({error.__cause__})" if error.__cause__ else ""
        raise SystemExit(f"{node}: {error}{cause}".replace("\n", " ")) from error
    except ValueError as error:  # the trainer's own check, naming every problem
        raise SystemExit(f"{node}: {error}") from error


def check_retriever_and_reward(rl: DictConfig, data_source: str) -> None:
    """The retriever node as the agent loop reads it, and one call of the reward function with its
    reward_kwargs on a made-up answer: a misspelt keyword or scorer fails now."""
    from rag_r1.llm_agent.loop import RetrieverSettings
    from verl.trainer.ppo.reward import load_reward_function

    reward = rl.custom_reward_function
    try:
        RetrieverSettings.from_config(rl.retriever)
        score = load_reward_function(reward.path, reward.name, OmegaConf.to_container(reward.reward_kwargs))
        score(data_source, "<answer> x </answer>", {"target": ["x"]}, {})
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as error:
        raise SystemExit(f"rl: {error}") from error


# ---------------------------------------------------------------- trainer keys as command-line overrides

def trainer_overrides(keys: Mapping[str, Any], schema: type, free_form: tuple[str, ...] = ()) -> list[str]:
    """`key=value` overrides of the trainer whose schema is the dataclass `schema`, `+key=value` where
    Hydra asks for it. A key the trainer lacks is its own check's to refuse, by name (`composed`)."""
    root = OmegaConf.structured(schema)
    return [f"{'+' if needs_plus(root, key, free_form) else ''}{key}={hydra_value(value)}"
            for key, value in keys.items()]


def needs_plus(root: DictConfig, key: str, free_form: tuple[str, ...]) -> bool:
    """Whether `key` is new under a mapping the schema leaves open (custom_reward_function.reward_kwargs.*):
    Hydra adds such a key only as `+key=value`. The free-form nodes take new keys without it."""
    node: Any = root
    parts = key.split(".")
    for i, part in enumerate(parts):
        if ".".join(parts[:i]) in free_form or not isinstance(node, DictConfig):
            return False
        if part not in node.keys():  # keys(), not `in`: a mandatory key left at ??? is not `in` its node
            return OmegaConf.get_type(node) is dict
        node = node._get_node(part)
    return False


SAFE_TEXT = re.compile(r"[\w./:@+-]+")


def hydra_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if SAFE_TEXT.fullmatch(text) and not reads_as_other_type(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def reads_as_other_type(text: str) -> bool:
    """Whether Hydra would read this unquoted text as a number, a bool or null."""
    if text.lower() in ("true", "false", "null", "nan", "inf", "+inf", "-inf"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
