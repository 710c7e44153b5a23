"""Run the RAG-R1 recipe: index -> retrieval server -> SFT data -> SFT -> RL questions -> RL data -> RL
-> evaluation -> report (OUT/README.md).

    python -m recipe demo                        # make demo: data/demo on CPU (README: its time)
    python -m recipe results                     # make results: ../shared/data/hotpotqa_closed
    python -m recipe long                        # make results PROFILE=long
    python -m recipe demo rl.trainer.total_training_steps=4 recipe.rl_questions=8 agent.max_turns=3
    python -m recipe results ppo                 # profiles merge left to right (ppo: GAE with a critic)
    DATA=path/to/set OUT=out/dir python -m recipe results

A word without `=` names a profile (configs/recipe/<name>.yaml, or a path to a YAML file); a
`node.key=value` word overrides one key of the merged profiles, in the profile's own vocabulary:
`recipe.*` (recipe/config.py: RecipeConfig), `agent.*` and `eval_agent.*` (AgentConfig), `sft.*` (the
SFT trainer) and `rl.*` (the PPO trainer); docs/config.md lists every key. Values read as YAML
(1e-4, true, null, [rl-multi]). DATA= and OUT= set recipe.data_dir and recipe.out_dir.

The whole profile is checked against the trainers' schemas before any stage runs. Every stage's
command is printed and appended to OUT/commands.sh; re-running resumes where a run stopped.
"""
from __future__ import annotations

import os
import shlex
import sys

from recipe.config import load_settings
from recipe.pipeline import Pipeline


def split_words(argv: list[str]) -> tuple[list[str], list[str]]:
    """(profiles, overrides): words with `=` are overrides, the others profiles."""
    profiles = [word for word in argv if "=" not in word]
    overrides = [word for word in argv if "=" in word]
    return profiles, overrides


def invocation(argv: list[str]) -> str:
    """The command line that ran the recipe, with the DATA/OUT variables it read."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ("DATA", "OUT") if os.environ.get(k)]
    return " ".join([*env, "python", "-m", "recipe", *(shlex.quote(a) for a in argv)])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or {"-h", "--help"} & set(argv):
        print(__doc__)
        return
    profiles, overrides = split_words(argv)
    if not profiles:
        raise SystemExit("name a profile first, e.g. python -m recipe demo (configs/recipe/)")
    settings = load_settings(profiles, overrides, env=os.environ)
    Pipeline(settings).run(invocation(argv))


if __name__ == "__main__":
    main()
