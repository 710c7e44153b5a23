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

`AsyncLLM` is the same engine behind the release's coroutines: `AsyncLLM.from_engine_args` takes an
`AsyncEngineArgs` (its fields: EngineArgs' and its own), `generate` is an async generator of
cumulative RequestOutputs, and weights come in through the CUDA IPC weight transfer
(`weight_transfer_config={"backend": "ipc"}`, then `init_weight_transfer_engine`, and per version
`start_weight_update`, `update_weights`, `finish_weight_update`), whose request payloads must be the
release's fields. The tests have no CUDA: a handle is the `reduce_tensor` arguments of a CPU tensor
under the GPU id FAKE_GPU_UUID, rebuilt with torch's CPU counterpart of `rebuild_cuda_tensor`.

Generation is scripted: `respond(prompt_token_ids, sampling_params)` gives the sampled
`(token_id, log_prob)` pairs of one request; the engine cuts them at `max_tokens` (finish reason
"length"; else "stop": stop strings and eos are the script's business).

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

from torch.multiprocessing.reductions import rebuild_tensor

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
FAKE_GPU_UUID = "GPU-00000000-0000-0000-0000-000000000000"  # the device the fake engine runs on


def _signature(params: list[dict]) -> inspect.Signature:
    return inspect.Signature([
        inspect.Parameter(p["name"], getattr(inspect.Parameter, p["kind"]),
                          default=p.get("default", UNKNOWN_DEFAULT) if p["has_default"] else inspect.Parameter.empty)
        for p in params
    ])


def _check_choices(owner: str, specs: dict[str, dict], values: dict) -> None:
    for name, value in values.items():
        choices = specs.get(name, {}).get("choices")
        if choices is not None and value is not UNKNOWN_DEFAULT and value not in choices:  # the release's own default
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
        if name != "__init__" and spec["binding"] == "method":  # an instance's calls
            receiver.calls.append(Call(name, arguments))
        return behaviour(receiver, **arguments)

    method.__name__ = name
    wrap = {"classmethod": classmethod, "staticmethod": staticmethod}.get(spec["binding"])
    return wrap(method) if wrap else method


def _api_class(name: str, behaviours: dict[str, Callable]) -> type:
    """vLLM's class `name` with exactly the fixture's methods, each running `behaviours[method]`,
    which must be what the release's is: a plain function, a coroutine function or an async generator."""
    methods = load_api()["classes"][name]["methods"]
    for method, behaviour in behaviours.items():
        spec = methods[method]
        kind = ("async generator" if spec["generator"] else "coroutine") if spec["async"] else "plain"
        actual = ("async generator" if inspect.isasyncgenfunction(behaviour) else
                  "coroutine" if inspect.iscoroutinefunction(behaviour) else "plain")
        if actual != kind:
            raise TypeError(f"the double's {name}.{method} is a {actual} function; the release's is {kind}")
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
    records = {name: _record_class(name) for name in (
        "RequestOutput", "CompletionOutput", "Logprob", "AsyncEngineArgs", "WeightTransferConfig",
        "WeightTransferInitRequest", "WeightTransferUpdateRequest", "IPCWeightTransferInitInfo",
        "IPCWeightTransferUpdateInfo")}

    def start(self, arguments: dict) -> None:
        self.arguments = arguments
        self.calls: list[Call] = []
        self.weights_resident = self.kv_cache_resident = True
        self.paused = False
        self.weights_loaded = self.arguments.get("load_format") != "dummy"
        self.model = _Model(self)

    def init(self, **arguments):
        engine_args = arguments.pop("kwargs")
        unknown = sorted(set(engine_args) - set(api["classes"]["EngineArgs"]["fields"]))
        if unknown:
            raise TypeError(f"LLM(): {unknown} are neither LLM.__init__ parameters nor EngineArgs fields")
        _check_choices("LLM", api["classes"]["EngineArgs"]["fields"], engine_args)
        start(self, {**arguments, **engine_args})

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

    def check_can_generate(self) -> None:
        if self.paused:
            raise RuntimeError("generate on a sleeping engine: wake_up() first")
        if not self.weights_loaded:
            raise RuntimeError("generate with dummy or discarded weights: load the model's weights first")

    def generate(self, prompts, sampling_params, **options):
        check_can_generate(self)
        prompts = prompts if isinstance(prompts, list) else [prompts]
        return [request_output(str(i), prompt["prompt_token_ids"], sampled(prompt, sampling_params), sampling_params)
                for i, prompt in enumerate(prompts)]

    def sampled(prompt, params) -> list[tuple[int, float]]:
        return respond(prompt["prompt_token_ids"], params)[:params.max_tokens]

    def request_output(request_id, prompt_token_ids, sampled, params, finished=True):
        tokens = [t for t, _ in sampled]
        logprobs = None
        if params.logprobs is not None:
            logprobs = [{t: records["Logprob"](logprob=lp, rank=1)} for t, lp in sampled]
        finish_reason = ("length" if len(tokens) == params.max_tokens else "stop") if finished else None
        completion = records["CompletionOutput"](index=0, text="", token_ids=tokens,
                                                 cumulative_logprob=sum(lp for _, lp in sampled), logprobs=logprobs,
                                                 finish_reason=finish_reason)
        return records["RequestOutput"](request_id=request_id, prompt=None, prompt_token_ids=prompt_token_ids,
                                        prompt_logprobs=None, outputs=[completion], finished=finished)

    # AsyncLLM: the engine above behind coroutines, and the IPC weight transfer

    def from_engine_args(cls, engine_args, start_engine_loop, usage_context, stat_loggers):
        if not isinstance(engine_args, records["AsyncEngineArgs"]):  # the release reads enable_log_requests
            raise TypeError(f"AsyncLLM.from_engine_args needs AsyncEngineArgs, got {type(engine_args).__name__}")
        engine = object.__new__(cls)
        start(engine, dict(vars(engine_args)))
        transfer = engine.arguments["weight_transfer_config"]
        # EngineArgs turns a dict into WeightTransferConfig, refusing fields it lacks
        engine.transfer = records["WeightTransferConfig"](**transfer) if isinstance(transfer, dict) else None
        engine.updating = False
        return engine

    async def async_sleep(self, level, mode):
        sleep(self, level, mode)

    async def async_wake_up(self, tags):
        return wake_up(self, tags)

    async def async_reset_prefix_cache(self, reset_running_requests, reset_connector):
        return True

    async def is_sleeping(self):
        return self.paused or not (self.weights_resident and self.kv_cache_resident)

    async def async_generate(self, prompt, sampling_params, request_id, **options):
        check_can_generate(self)
        tokens = sampled(prompt, sampling_params)
        if len(tokens) > 1:  # outputs are cumulative: a caller keeps the last
            yield request_output(request_id, prompt["prompt_token_ids"], tokens[:1], sampling_params, finished=False)
        yield request_output(request_id, prompt["prompt_token_ids"], tokens, sampling_params)

    def transfer_info(self, kind: str):
        """The backend's info class for `kind` ("Init" or "Update"); raises as the release does
        without a weight_transfer_config."""
        if self.transfer is None:
            raise RuntimeError("Weight transfer not configured. Please set weight_transfer_config to enable "
                               "weight transfer.")
        if self.transfer.backend != "ipc":
            raise NotImplementedError(f"the test double models the ipc weight transfer, not {self.transfer.backend!r}")
        return records[f"IPCWeightTransfer{kind}Info"]

    def parse_info(self, kind: str, payload: dict):
        try:
            return transfer_info(self, kind)(**payload)
        except TypeError as error:  # the release's parse_init_info / parse_update_info
            raise ValueError(f"invalid {kind.lower()}_info: {error}") from None

    async def init_weight_transfer_engine(self, request):
        if not isinstance(request, records["WeightTransferInitRequest"]):
            raise TypeError(f"init_weight_transfer_engine takes a WeightTransferInitRequest, got {request!r}")
        parse_info(self, "Init", request.init_info)

    async def start_weight_update(self):
        transfer_info(self, "Update")
        if not self.weights_resident:
            raise RuntimeError("start_weight_update while the weights sleep: wake_up(tags=['weights']) first")
        self.updating = True

    async def update_weights(self, request):
        if not isinstance(request, records["WeightTransferUpdateRequest"]):
            raise TypeError(f"update_weights takes a WeightTransferUpdateRequest, got {request!r}")
        info = parse_info(self, "Update", request.update_info)
        if not self.updating:
            raise RuntimeError("start_weight_update must be called before update_weights.")
        handles = info.ipc_handles
        parallel = len(info.names) == len(info.dtype_names) == len(info.shapes) == len(handles or [])
        if not (isinstance(handles, list) and parallel):
            raise ValueError("update_info: names, dtype_names, shapes and ipc_handles (a list) must be parallel")
        loaded = {}
        for name, dtype_name, shape, handle in zip(info.names, info.dtype_names, info.shapes, handles):
            if FAKE_GPU_UUID not in handle:
                raise ValueError(f"IPC handle not found for GPU UUID {FAKE_GPU_UUID}. Available UUIDs: {list(handle)}")
            tensor = rebuild_tensor(*handle[FAKE_GPU_UUID])
            if (str(tensor.dtype).split(".")[-1], list(tensor.shape)) != (dtype_name, list(shape)):
                raise ValueError(f"{name}: the handle holds {tensor.dtype} {list(tensor.shape)}, the update says "
                                 f"{dtype_name} {shape}")
            loaded[name] = tensor.clone()  # the engine holds its own copy
        self.calls.append(Call("load_weights", loaded))

    async def finish_weight_update(self, weight_version):
        if not self.updating:
            raise RuntimeError("finish_weight_update called without a matching start_weight_update.")
        self.updating = False
        self.weights_loaded = True

    classes = {
        "LLM": _api_class("LLM", {"__init__": init, "sleep": sleep, "wake_up": wake_up, "apply_model": apply_model,
                                  "reset_prefix_cache": reset_prefix_cache, "generate": generate}),
        "AsyncLLM": _api_class("AsyncLLM", {
            "from_engine_args": from_engine_args, "sleep": async_sleep, "wake_up": async_wake_up,
            "is_sleeping": is_sleeping, "reset_prefix_cache": async_reset_prefix_cache, "generate": async_generate,
            "init_weight_transfer_engine": init_weight_transfer_engine, "start_weight_update": start_weight_update,
            "update_weights": update_weights, "finish_weight_update": finish_weight_update}),
        "SamplingParams": _record_class("SamplingParams"),
        "TokensPrompt": _tokens_prompt(),
        **records,
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
