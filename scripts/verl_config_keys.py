"""veRL's PPO config keys with their defaults, read from a veRL wheel without importing veRL.

veRL ships its whole PPO config flattened into one file, verl/trainer/config/_generated_ppo_trainer.yaml
(ppo_trainer.yaml with every group of its defaults list merged in). This lists its keys as dotted
paths, each with its default as written (an interpolation stays a `${...}` string), for the test
that checks every veRL key against this trainer's config (tests/verl/trainer/test_verl_key_parity.py):

    pip download verl==0.9.1 --no-deps -d .cache/wheels
    python -m scripts.verl_config_keys .cache/wheels/verl-0.9.1-py3-none-any.whl \\
        --out tests/fixtures/verl_v0.9_ppo_trainer_keys.json
"""
from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

GENERATED = "verl/trainer/config/_generated_ppo_trainer.yaml"


def leaf_keys(node: dict, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every leaf; a list or an empty mapping is a leaf (a value, not a node)."""
    keys = {}
    for name, value in node.items():
        if isinstance(value, dict) and value:
            keys.update(leaf_keys(value, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = value
    return keys


def wheel_keys(wheel: str | Path) -> dict:
    """The fixture's content for `wheel`: where the keys come from and {dotted key: default}."""
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(GENERATED).decode()
    config = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    return {"source": f"{Path(wheel).name}:{GENERATED}", "keys": leaf_keys(config)}


def as_json(fixture: dict) -> str:
    """JSON with one key per line, so that a new veRL version's changes read as a line diff."""
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in fixture["keys"].items()]
    return f'{{\n "source": {json.dumps(fixture["source"])},\n "keys": {{\n' + ",\n".join(lines) + "\n }\n}\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", help="a veRL wheel (.whl)")
    parser.add_argument("--out", help="JSON file to write (default: print)")
    args = parser.parse_args(argv)
    fixture = wheel_keys(args.wheel)
    text = as_json(fixture)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return fixture


if __name__ == "__main__":
    main()
