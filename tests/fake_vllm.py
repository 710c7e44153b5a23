"""A stand-in `vllm` package for CPU tests, built from the pinned release's API
(tests/fixtures/vllm_api.json, which scripts/gpu/vllm_api.py reads from the wheel).

It refuses what the pinned vLLM would not take: `LLM(...)` a keyword that is neither an
`LLM.__init__` parameter nor an `EngineArgs` field, or a value outside a Literal's choices; every
method binds its arguments against the release's signature; a method the release lacks does not
exist (AttributeError); `SamplingParams` takes only its fields and `TokensPrompt` only its keys.

The engine models what a rollout relies on: level 1 sleep offloads the weights and level 2 discards
them (both drop the KV cache and the prefix cache), `wake_up(tags)` brings back the named memory,
weights come in through `apply_model(lambda model: model.load_weights(...))`, and generating with
weights or a KV cache that are not resident, or with weights never loaded after `load_format="dummy"`
or a level 2 sleep, raises. Every method call lands in `llm.calls` as `Call(name, arguments)` (the
bound arguments, without self), and the weights a load received as `Call("load_weights", {name: tensor})`.

Generation is scripted: `respond(prompt_token_ids, sampling_params)` gives the sampled
`(token_id, log_prob)` pairs of one request; the engine cuts them at `max_tokens` (stop strings are
the script's business).

    for name, module in fake_vllm_modules(respond).items():
        monkeypatch.setitem(sys.modules, name, module)
"""
from __future__ import annotations

import inspect
import json
import types
from functools import cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

API_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "vllm_api.json"


@cache
def load_api() -> dict:
    return json.loads(API_FIXTURE.read_text())


class Call(NamedTuple):
    name: str
    arguments: dict


class _UnknownDefault:
    """A default the fixture could not hold (not a literal): a test must not depend on its value."""

    def __repr__(self) -> str:
        return "<non-literal default>"


UNKNOWN_DEFAULT = _UnknownDefault()


def _signature(params: list[dict]) -> inspect.Signature:
    return inspect.Signature([
        inspect.Parameter(p["name"], getattr(inspect.Parameter, p["kind"]),
                          default=p.get("default", UNKNOWN_DEFAULT) if p["has_default"] else inspect.Parameter.empty)
        for p in params
    ])


def _check_choices(owner: str, specs: dict[str, dict], values: dict) -> None:
    for name, value in values.items():
        choices = specs.get(name, {}).get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{owner}: {name}={value!r} is not one of {choices}")


def bind(owner: str, spec: dict, args: tuple, kwargs: dict) -> dict:
    """The arguments of a call to a method of the fixture (`spec`: its entry), defaults applied; raises
    TypeError as the real method would (unknown keyword, missing required argument)."""
    try:
        bound = _signature(spec["parameters"]).bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"{owner}(): {error}") from None
    bound.apply_defaults()
    _check_choices(owner, {p["name"]: p for p in spec["parameters"]}, bound.arguments)
    return dict(bound.arguments)


def _api_method(class_name: str, name: str, spec: dict, behaviour: Callable | None) -> Callable:
    owner = f"{class_name}.{name}"

    def method(*args, **kwargs):
        arguments = bind(owner, spec, args, kwargs)
        if behaviour is None:
            raise NotImplementedError(f"the test double does not model {owner}")
        receiver = None if spec["binding"] == "staticmethod" else arguments.pop(spec["parameters"][0]["name"])
        if name != "__init__":
            receiver.calls.append(Call(name, arguments))
        return behaviour(receiver, **arguments)

    method.__name__ = name
    wrap = {"classmethod": classmethod, "staticmethod": staticmethod}.get(spec["binding"])
    return wrap(method) if wrap else method


def _api_class(name: str, behaviours: dict[str, Callable]) -> type:
    """vLLM's class `name` with exactly the fixture's methods, each running `behaviours[method]`."""
    methods = load_api()["classes"][name]["methods"]
    namespace = {method: _api_method(name, method, spec, behaviours.get(method)) for method, spec in methods.items()}
    return type(name, (), namespace)


def _record_class(name: str) -> type:
    """A plain value class with the fields (or `__init__` parameters) of vLLM's class `name`, in their
    order, with their defaults (UNKNOWN_DEFAULT where that is not a literal)."""
    spec = load_api()["classes"][name]
    if "fields" in spec:
        params = [{"name": "self", "kind": "POSITIONAL_ONLY", "has_default": False}] + [
            {"name": field, "kind": "POSITIONAL_OR_KEYWORD", "has_default": not entry["required"],
             **{key: entry[key] for key in ("default", "choices") if key in entry}}
            for field, entry in spec["fields"].items()]
        init_spec = {"parameters": params}
    else:
        init_spec = spec["methods"]["__init__"]
    variadic = {p["name"] for p in init_spec["parameters"] if p["kind"].startswith("VAR_")}

    def __init__(*args, **kwargs):
        arguments = bind(name, init_spec, args, kwargs)
        self = arguments.pop(init_spec["parameters"][0]["name"])
        for field, value in arguments.items():
            if field not in variadic:
                setattr(self, field, value)

    return type(name, (), {"__init__": __init__})


def _tokens_prompt() -> Callable[..., dict]:
    keys = load_api()["classes"]["TokensPrompt"]["keys"]

    def TokensPrompt(**values) -> dict:
        unknown = sorted(set(values) - set(keys))
        missing = sorted(k for k, entry in keys.items() if entry["required"] and k not in values)
        if unknown or missing:
            raise TypeError(f"TokensPrompt: unknown key(s) {unknown}, missing required key(s) {missing}")
        return dict(values)

    return TokensPrompt


class _Model:
    """What `apply_model` hands its function: vLLM's model, of which the rollout uses `load_weights`."""

    def __init__(self, engine):
        self.engine = engine

    def load_weights(self, weights) -> set[str]:
        # consumes the generator, as vLLM does, and copies: the engine holds its own weights
        loaded = {name: tensor.detach().clone() for name, tensor in weights}
        self.engine.calls.append(Call("load_weights", loaded))
        self.engine.weights_loaded = True
        return set(loaded)


def fake_vllm_modules(respond: Callable[[list[int], Any], list[tuple[int, float]]]) -> dict[str, types.ModuleType]:
    """{module name: module} of the stand-in package (parents included), ready for `sys.modules`."""
    api = load_api()
    request_output, completion_output, logprob = (
        _record_class("RequestOutput"), _record_class("CompletionOutput"), _record_class("Logprob"))

    def init(self, **arguments):
        engine_args = arguments.pop("kwargs")
        unknown = sorted(set(engine_args) - set(api["classes"]["EngineArgs"]["fields"]))
        if unknown:
            raise TypeError(f"LLM(): {unknown} are neither LLM.__init__ parameters nor EngineArgs fields")
        _check_choices("LLM", api["classes"]["EngineArgs"]["fields"], engine_args)
        self.arguments = {**arguments, **engine_args}
        self.calls: list[Call] = []
        self.weights_resident = self.kv_cache_resident = True
        self.paused = False
        self.weights_loaded = self.arguments.get("load_format") != "dummy"
        self.model = _Model(self)

    def sleep(self, level, mode):
        if not self.arguments.get("enable_sleep_mode"):
            raise RuntimeError("sleep mode is not enabled (LLM(enable_sleep_mode=True))")
        self.paused = True
        if level >= 1:
            self.weights_resident = self.kv_cache_resident = False
        if level >= 2:
            self.weights_loaded = False

    def wake_up(self, tags):
        tags = ["weights", "kv_cache", "scheduling"] if tags is None else tags
        unknown = sorted(set(tags) - {"weights", "kv_cache", "scheduling"})
        if unknown:
            raise ValueError(f"wake_up: unknown tag(s) {unknown}")
        self.weights_resident = self.weights_resident or "weights" in tags
        self.kv_cache_resident = self.kv_cache_resident or "kv_cache" in tags
        fully_awake = self.weights_resident and self.kv_cache_resident
        self.paused = self.paused and not fully_awake  # scheduling resumes once all memory is back
        return fully_awake

    def apply_model(self, func):
        if not self.weights_resident:
            raise RuntimeError("apply_model while the weights sleep: wake_up(tags=['weights']) first")
        return [func(self.model)]

    def reset_prefix_cache(self, reset_running_requests, reset_connector):
        return True

    def generate(self, prompts, sampling_params, **options):
        if self.paused:
            raise RuntimeError("generate on a sleeping engine: wake_up() first")
        if not self.weights_loaded:
            raise RuntimeError("generate with dummy or discarded weights: load the model's weights first")
        prompts = prompts if isinstance(prompts, list) else [prompts]
        return [request(i, prompt, sampling_params) for i, prompt in enumerate(prompts)]

    def request(i, prompt, params):
        sampled = respond(prompt["prompt_token_ids"], params)[:params.max_tokens]
        tokens = [t for t, _ in sampled]
        logprobs = None
        if params.logprobs is not None:
            logprobs = [{t: logprob(logprob=lp, rank=1)} for t, lp in sampled]
        completion = completion_output(index=0, text="", token_ids=tokens,
                                       cumulative_logprob=sum(lp for _, lp in sampled), logprobs=logprobs)
        return request_output(request_id=str(i), prompt=None, prompt_token_ids=prompt["prompt_token_ids"],
                              prompt_logprobs=None, outputs=[completion], finished=True)

    classes = {
        "LLM": _api_class("LLM", {"__init__": init, "sleep": sleep, "wake_up": wake_up, "apply_model": apply_model,
                                  "reset_prefix_cache": reset_prefix_cache, "generate": generate}),
        "AsyncLLM": _api_class("AsyncLLM", {}),
        "SamplingParams": _record_class("SamplingParams"),
        "TokensPrompt": _tokens_prompt(),
        "RequestOutput": request_output,
        "CompletionOutput": completion_output,
        "Logprob": logprob,
    }
    modules: dict[str, types.ModuleType] = {}

    def module(name: str) -> types.ModuleType:
        if name not in modules:
            modules[name] = types.ModuleType(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(module(parent), child, modules[name])
        return modules[name]

    module("vllm").__version__ = api["vllm"]
    for name, cls in classes.items():
        spec = api["classes"][name]
        for home in [spec["module"], *spec["exported_by"]]:
            setattr(module(home), name, cls)
    return modules
