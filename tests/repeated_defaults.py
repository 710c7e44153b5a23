"""Which `key=value` overrides of a launcher only repeat a default: each one is dropped in turn and
the config composed without it compared with the full one at that key."""
from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf


def repeated_defaults(overrides: list[str], compose: Callable[[list[str]], DictConfig],
                      value_of: Callable[[DictConfig, str], object] = OmegaConf.select) -> list[str]:
    """The overrides whose key has the same value without them (a mandatory key is never one)."""
    full = compose(overrides)
    repeated = []
    for i, override in enumerate(overrides):
        key = override.split("=", 1)[0].lstrip("+")
        try:
            without = compose(overrides[:i] + overrides[i + 1:])
        except ValueError:  # the check names a mandatory key left unset
            continue
        if value_of(without, key) == value_of(full, key):
            repeated.append(override)
    return repeated
