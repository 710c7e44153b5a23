"""Compose a Hydra config from `configs/` outside of `@hydra.main` (tests, scripts) and check it."""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
PREFIX = "config: "  # how the checks' ValueErrors start


class Screened(Protocol):
    overrides: list[str]  # what Hydra composes
    problems: list[str]  # one per refused key, naming it


def compose_checked(config_name: str, overrides: list[str] | None, register: Callable[[], None],
                    check: Callable[[DictConfig], None],
                    screen: Callable[[list[str]], Screened] | None = None,
                    explain: Callable[[str], str | None] | None = None) -> DictConfig:
    """The config an entry point would run with these `key=value` overrides, after `check` passed.

    `register` stores the entry point's dataclass schema in Hydra's ConfigStore (the YAML names it as
    its default), so unknown keys fail while composing. `screen` may refuse keys by name before Hydra
    sees them (and rewrite the rest); `explain(key)` words the problem of a key a YAML file set that
    the schema lacks, instead of Hydra's generic error. Screen and check problems are raised together,
    as one ValueError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException

    register()
    overrides = list(overrides or [])
    problems: list[str] = []
    if screen is not None:
        screened = screen(overrides)
        overrides, problems = screened.overrides, list(screened.problems)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            config = compose(config_name=config_name, overrides=overrides)
    except ConfigCompositionException as error:
        explained = _explained(error, explain)
        if explained is None and not problems:
            raise
        raise ValueError(PREFIX + "; ".join(problems + [explained or str(error)])) from error
    try:
        check(config)
    except ValueError as error:
        problems.append(str(error).removeprefix(PREFIX))
    if problems:
        raise ValueError(PREFIX + "; ".join(problems))
    return config


def _explained(error: Exception, explain: Callable[[str], str | None] | None) -> str | None:
    """`explain`'s words for the key a composition error names as its `full_key`, if any."""
    found = re.search(r"full_key: (\S+)", str(error))
    return explain(found.group(1)) if explain is not None and found else None
