"""Rollout servers: engines that generate for one trajectory at a time, token ids in, token ids out.

The batch rollout (`BaseRollout.generate_sequences`) makes every turn of an agent wait for the
slowest row of the batch. A server instead takes one request at a time from many callers at once
and batches them itself, continuously: a request joins the running batch at the engine's next
step and leaves it the step it finishes, so a trajectory waiting for retrieval holds up no other.

The contract (every engine implements `RolloutServer`):

    output = await server.generate(request_id, prompt_ids, SamplingSettings(...))
    output.token_ids, output.log_probs, output.finish_reason

- `request_id` names a trajectory, not a call: an agent sends each of its turns under the same
  id, one turn at a time, and each turn's prompt extends the previous one's context (previous
  prompt + generated tokens + observation tokens). The engine keeps the keys/values of the id's
  last turn and encodes only the new tokens. A caller spreading trajectories over several servers
  sends all turns of one id to the same server.
- Token ids only: stop strings are matched in the decoded generated text (never across the
  prompt), and the tokens up to and including the one that completes the first stop string or
  the eos token are returned.
- `log_probs[i]` is the log-prob of `token_ids[i]` under log_softmax(logits / temperature) over the
  whole vocabulary (greedy: temperature 1), the number the trainer recomputes (`rollout_log_probs`
  in docs/architecture.md; vLLM's, with top-k/top-p on, are of the truncated distribution).
- `update_weights(weights)`: the policy's new weights, (name, tensor) pairs of the HF state dict,
  once per training step, while no request is in flight; the cached keys/values of the old
  weights are dropped and the engine is left resumed.
- `release()` frees the engine's memory for training (no request may be in flight); `resume()`
  brings it back before the next request. An engine whose `holds_weights` is False (vLLM frees the
  weights too) needs `update_weights` before it generates again.

A new engine subclasses `RolloutServer` (HFServer in hf_server.py, VLLMServer in vllm_server.py)
and is built by the actor worker's `_build_server` (verl/workers/fsdp_workers.py), which hosts it
behind `ServerHost` so that a threaded Ray actor's methods can block on it.
"""
from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from omegaconf import DictConfig

Weights = Iterable[tuple[str, torch.Tensor]]


@dataclass(frozen=True)
class SamplingSettings:
    """How one request samples; `from_config` fills what a caller leaves out from the rollout config."""

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int  # -1 or 0: off
    stop: tuple[str, ...] = ()  # generation ends right after the first one, which stays in the output
    seed: int | None = None  # the request's own random stream (same seed, same tokens); None: the engine's

    @classmethod
    def from_config(cls, config: DictConfig, **values) -> "SamplingSettings":
        """`values` override the rollout config's `do_sample`, `temperature`, `top_p`, `top_k`;
        `max_new_tokens` defaults to its `response_length`."""
        values.setdefault("max_new_tokens", config.response_length)
        for key in ("do_sample", "temperature", "top_p", "top_k"):
            values.setdefault(key, config[key])
        values["stop"] = tuple(values.get("stop") or ())
        return cls(**values)

    @classmethod
    def from_meta(cls, config: DictConfig, meta: dict, max_new_tokens: int) -> "SamplingSettings":
        """The settings of a batch rollout call whose `meta_info` may set do_sample, temperature,
        top_p, top_k and stop (BaseRollout's contract)."""
        keys = ("do_sample", "temperature", "top_p", "top_k", "stop")
        return cls.from_config(config, max_new_tokens=max_new_tokens, **{k: meta[k] for k in keys if k in meta})

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature <= 0  # veRL reads temperature 0 as greedy


@dataclass(frozen=True)
class GenerationOutput:
    token_ids: list[int]
    log_probs: list[float]  # one per token, see the module docstring
    finish_reason: str  # "stop" (eos or a stop string) | "length" (max_new_tokens)


class RolloutServer(ABC):
    """One engine serving many concurrent requests; see the module docstring for the contract."""

    @abstractmethod
    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        ...

    @abstractmethod
    async def update_weights(self, weights: Weights) -> None:
        ...

    @abstractmethod
    async def release(self) -> None:
        ...

    @abstractmethod
    async def resume(self) -> None:
        ...

    @property
    def holds_weights(self) -> bool:
        """False while the engine has no usable weights (never loaded, or freed by `release`)."""
        return True

    def metrics(self) -> dict[str, float]:
        """Engine counters for logging (`server/...`)."""
        return {}


class ServerHost:
    """A RolloutServer on an event loop of its own thread, for callers that block (the methods of a
    threaded Ray actor), and the weights it generates with.

    The owner of the weights calls `weights_changed()` after they change and `release()` when its
    training passes start; `ready()` then loads the weights (`weights()` gives them) and resumes the
    engine, once, before the next request. With `load_on_generate` the first `generate` after a
    change does that itself; without it (gathering the weights is collective across ranks, so every
    rank must call `ready()` together) a generate with stale weights raises.
    """

    def __init__(self, server: RolloutServer, weights: Callable[[], Weights], load_on_generate: bool):
        self.server, self.weights, self.load_on_generate = server, weights, load_on_generate
        self.stale = True  # the engine's weights are older than the owner's
        self.released = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rollout-server", daemon=True)
        self.thread.start()
        self.lock = asyncio.Lock()  # one weight load at a time; requests wait for it

    def call(self, coroutine):
        """Run `coroutine` on the server's loop and block until it returns (or raises)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        return self.call(self._generate(request_id, prompt_ids, params))

    def ready(self) -> None:
        self.call(self._ready(load=True))

    def release(self) -> None:
        if not self.released:
            self.call(self.server.release())
            self.released = True

    def weights_changed(self) -> None:
        self.stale = True

    def close(self) -> None:
        """Stop the event loop's thread (requests still in flight never return)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()

    async def _generate(self, request_id: str, prompt_ids: list[int], params: SamplingSettings) -> GenerationOutput:
        await self._ready(load=self.load_on_generate)
        return await self.server.generate(request_id, prompt_ids, params)

    async def _ready(self, load: bool) -> None:
        async with self.lock:
            if self.stale or not self.server.holds_weights:
                if not load:
                    raise RuntimeError("the rollout server's weights are stale: call ready() on every rank "
                                       "(the worker's wake_server) before generating")
                await self.server.update_weights(self.weights())
                self.stale = self.released = False
            elif self.released:
                await self.server.resume()
                self.released = False
