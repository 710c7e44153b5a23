"""Compose a Hydra config from `configs/` outside of `@hydra.main` (tests, scripts) and check it."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_checked(config_name: str, overrides: list[str] | None, register: Callable[[], None],
                    check: Callable[[DictConfig], None]) -> DictConfig:
    """The config an entry point would run with these `key=value` overrides, after `check` passed.

    `register` stores the entry point's dataclass schema in Hydra's ConfigStore (the YAML names it as
    its default), so unknown keys fail while composing."""
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(config_name=config_name, overrides=list(overrides or []))
    check(config)
    return config
