"""scripts/gpu/vllm_api.py: the committed fixture is the pinned wheel's API, and the extractor reads
fields, defaults, Literal choices, signatures and TypedDict keys from source without importing it."""
from __future__ import annotations

import ast
import json

import pytest

from scripts.gpu.vllm_api import (FIXTURE, Sources, cached_wheel, class_fields, find_method, pinned_version,
                                  public_names, signature, typed_dict_keys, wheel_api)


def test_fixture_describes_the_pinned_release():
    assert json.loads(FIXTURE.read_text())["vllm"] == pinned_version()


def test_committed_fixture_is_what_the_pinned_wheel_gives():
    version = pinned_version()
    wheel = cached_wheel(version)
    if wheel is None:
        pytest.skip(f"the vllm {version} wheel is not in .cache/wheels (python scripts/gpu/vllm_api.py downloads it)")
    assert wheel_api(wheel) == json.loads(FIXTURE.read_text())


CONFIG = '''
from typing import Literal
from pydantic import Field
Mode = Literal["fast", "exact"]

class ModelConfig:
    dtype: str = "auto"
    mode: Mode = "fast"
    limit: int = Field(default=20, ge=-1)
    nested: str = "x"
'''

ENGINE = '''
from dataclasses import dataclass, field
from typing import ClassVar, Literal, NotRequired, TypedDict, overload

@dataclass
class EngineArgs:
    model: str
    dtype: str = ModelConfig.dtype
    mode: Mode = ModelConfig.mode
    limit: int = ModelConfig.limit
    tags: list[str] = field(default_factory=list)
    kind: Literal["a", "b"] = field(default="a")
    sizes: tuple = (1, 2)
    seen: set = {1}
    _private: int = 0
    registry: ClassVar[dict] = {}

class _Options(TypedDict):
    cache_salt: NotRequired[str]

class TokensPrompt(_Options):
    prompt_token_ids: list[int]
    prompt: NotRequired[str]

class Loose(TypedDict, total=False):
    a: int

class Base:
    def shared(self, x, /, y=1, *args, z, w=None, **kwargs): ...

class Engine(Base):
    def __init__(self, model: str, *, mode: Mode = "fast", seed: int = 0): ...

    @overload
    def generate(self, prompts: str) -> str: ...

    def generate(self, prompts, params=None, *, use_tqdm=True): ...

    @classmethod
    def from_args(cls, args): ...

    async def wake_up(self, tags: list[str] | None = None): ...
'''

INIT = '''
MODULE_ATTRS = {"Engine": ".engine:Engine"}
__all__ = ["EngineArgs", "TokensPrompt"]
'''


@pytest.fixture(scope="module")
def sources():
    return Sources({"pkg/config/model.py": CONFIG, "pkg/engine.py": ENGINE, "pkg/__init__.py": INIT})


def test_fields_follow_defaults_into_config_classes_and_keep_literal_choices(sources):
    fields = class_fields(sources.find_class("pkg/engine.py", "EngineArgs"), sources)
    assert fields == {
        "model": {"required": True},
        "dtype": {"required": False, "default": "auto"},
        "mode": {"required": False, "default": "fast", "choices": ["fast", "exact"]},
        "limit": {"required": False, "default": 20},
        "tags": {"required": False},  # a factory: has a default, not a literal one
        "kind": {"required": False, "default": "a", "choices": ["a", "b"]},
        "sizes": {"required": False, "default": [1, 2]},
        "seen": {"required": False},  # a set has no JSON form
    }


def test_typed_dict_keys_include_the_bases_and_totality(sources):
    assert typed_dict_keys(sources.find_class("pkg/engine.py", "TokensPrompt"), sources) == {
        "cache_salt": {"required": False}, "prompt_token_ids": {"required": True}, "prompt": {"required": False}}
    assert typed_dict_keys(sources.find_class("pkg/engine.py", "Loose"), sources) == {"a": {"required": False}}


def test_signatures_give_kinds_defaults_and_bindings(sources):
    engine = sources.find_class("pkg/engine.py", "Engine")

    def params(name):
        spec = signature(find_method(engine, name, sources), sources)
        return spec["async"], spec["binding"], [tuple(p.values()) for p in spec["parameters"]]

    assert params("__init__") == (False, "method", [
        ("self", "POSITIONAL_OR_KEYWORD", False), ("model", "POSITIONAL_OR_KEYWORD", False),
        ("mode", "KEYWORD_ONLY", True, "fast", ["fast", "exact"]), ("seed", "KEYWORD_ONLY", True, 0)])
    assert params("generate") == (False, "method", [  # the implementation, not the @overload
        ("self", "POSITIONAL_OR_KEYWORD", False), ("prompts", "POSITIONAL_OR_KEYWORD", False),
        ("params", "POSITIONAL_OR_KEYWORD", True, None), ("use_tqdm", "KEYWORD_ONLY", True, True)])
    assert params("from_args")[1] == "classmethod"
    assert params("wake_up") == (True, "method", [
        ("self", "POSITIONAL_OR_KEYWORD", False), ("tags", "POSITIONAL_OR_KEYWORD", True, None)])
    assert params("shared") == (False, "method", [  # found on the base class
        ("self", "POSITIONAL_ONLY", False), ("x", "POSITIONAL_ONLY", False), ("y", "POSITIONAL_OR_KEYWORD", True, 1),
        ("args", "VAR_POSITIONAL", False), ("z", "KEYWORD_ONLY", False), ("w", "KEYWORD_ONLY", True, None),
        ("kwargs", "VAR_KEYWORD", False)])
    assert find_method(engine, "sleep", sources) is None


def test_public_names_read_all_and_lazy_imports():
    assert public_names(ast.parse(INIT)) == {"Engine", "EngineArgs", "TokensPrompt"}


def test_fields_include_the_bases_and_async_generators_are_marked():
    sources = Sources({"pkg/engine.py": '''
from dataclasses import dataclass

@dataclass
class EngineArgs:
    model: str = "m"

@dataclass
class AsyncEngineArgs(EngineArgs):
    enable_log_requests: bool = False

class Engine:
    async def generate(self, prompt):
        yield prompt

    async def sleep(self, level=1):
        def levels():
            yield level
        return list(levels())
'''})
    assert class_fields(sources.find_class("pkg/engine.py", "AsyncEngineArgs"), sources) == {
        "model": {"required": False, "default": "m"}, "enable_log_requests": {"required": False, "default": False}}
    engine = sources.find_class("pkg/engine.py", "Engine")
    generate, sleep = (signature(find_method(engine, name, sources), sources) for name in ("generate", "sleep"))
    assert (generate["async"], generate["generator"]) == (True, True)
    assert (sleep["async"], sleep["generator"]) == (True, False)  # only a function nested in it yields
