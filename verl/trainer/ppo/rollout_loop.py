"""Rollout loops: how a batch of prompts becomes a batch of trajectories.

The trainer never knows what a trajectory looks like: it builds the loop named by
`actor_rollout_ref.rollout.loop` ("module:Class") with the full config, the tokenizer and a
`generate` function (the actor worker group's `generate_sequences`, or a local engine in
evaluation), and calls `loop.run(prompts)`. `SingleTurnLoop` generates one response per prompt;
RAG-R1's search agent (`rag_r1.llm_agent.loop:SearchAgentLoop`) interleaves generation and
retrieval in the same interface.

With `actor_rollout_ref.rollout.mode=async` the loop is also given `servers`, the workers' rollout
servers (verl/trainer/ppo/rollout_servers.py: `await servers.generate(request_id, prompt_ids,
params)`, one trajectory turn per request), and `generate` runs each row of a batch as its own
request on them, so a loop that knows only batches works unchanged. A loop that takes advantage of
the servers runs every trajectory on its own (the search agent does).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from verl.protocol import DataProto
from verl.trainer.ppo.rollout_servers import ServerPool

GenerateFn = Callable[[DataProto], DataProto]
TRAJECTORY_KEYS = ("prompts", "responses", "input_ids", "attention_mask", "position_ids", "response_mask", "info_mask",
                   "rollout_log_probs")


class RolloutLoop:
    """Base class. `run(prompts, validate)` returns the prompts' non-tensor keys plus the batch
    keys in TRAJECTORY_KEYS (and any non-tensor keys the loop adds), with loop metrics such as
    `env/search_calls` in `meta_info["metrics"]`. `rollout_log_probs` [B, R] is the engine's log-prob
    of each token the policy sampled (0 elsewhere), which the trainer compares with its own.
    """

    def __init__(self, config: DictConfig, tokenizer, generate: GenerateFn, servers: ServerPool | None = None):
        """`servers`: the rollout servers in async mode (module docstring), None in sync mode."""
        self.config = config
        self.tokenizer = tokenizer
        self.generate = generate
        self.servers = servers

    def run(self, prompts: DataProto, validate: bool = False) -> DataProto:
        raise NotImplementedError

    def demonstrations(self, prompts: DataProto) -> DataProto:
        """Trajectories of the prompts that no policy sampled (algorithm.guides.only trains on these
        alone), in the keys of `run`, rows marked in the non-tensor column `guided`."""
        raise NotImplementedError(f"{type(self).__name__} has no demonstrations for algorithm.guides.only; the "
                                  "search agent (rag_r1.llm_agent.loop:SearchAgentLoop) gives those of agent.guide_file")

    def sampling_meta(self, validate: bool) -> dict:
        """`meta_info` generation settings from actor_rollout_ref.rollout (val_kwargs when validating)."""
        rollout = self.config.actor_rollout_ref.rollout
        source = rollout.val_kwargs if validate else rollout
        meta = {"do_sample": bool(source.do_sample), "max_new_tokens": int(self.config.data.max_response_length)}
        if source.do_sample:
            meta.update(temperature=float(source.temperature), top_p=float(source.top_p), top_k=int(source.top_k))
        return meta


class SingleTurnLoop(RolloutLoop):
    """One `generate` call per batch: the response is everything the policy produced."""

    def run(self, prompts: DataProto, validate: bool = False) -> DataProto:
        request = prompts.select(batch_keys=["input_ids", "attention_mask", "position_ids"], non_tensor_batch_keys=[])
        request.meta_info = self.sampling_meta(validate)
        output = self.generate(request)
        generated_keys = [k for k in TRAJECTORY_KEYS if k != "info_mask"]
        trajectory = output.select(batch_keys=generated_keys, non_tensor_batch_keys=[], meta_info_keys=[])
        trajectory.batch["info_mask"] = torch.zeros_like(trajectory.batch["response_mask"])
        trajectory.non_tensor_batch = dict(prompts.non_tensor_batch)
        trajectory.meta_info = {"metrics": {}}
        return trajectory


def load_rollout_loop(config: DictConfig, tokenizer, generate: GenerateFn,
                      servers: ServerPool | None = None) -> RolloutLoop:
    """Build the loop named by `actor_rollout_ref.rollout.loop` ("module:Class"); `servers` only in
    async mode (a loop written for sync mode alone need not take them)."""
    dotted = config.actor_rollout_ref.rollout.loop
    module_name, _, class_name = dotted.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, RolloutLoop)):
        raise TypeError(f"actor_rollout_ref.rollout.loop={dotted!r} is not a RolloutLoop subclass")
    if servers is None:
        return cls(config, tokenizer, generate)
    return cls(config, tokenizer, generate, servers=servers)
