"""Moving the FSDP actor's current weights into the vLLM engine around each rollout.

    with FSDPVLLMShardingManager(actor_module, vllm_rollout) as manager:
        output = manager.postprocess(rollout.generate_sequences(manager.preprocess(prompts)))

Entering wakes the engine's weight memory, streams the actor's parameters one at a time
(each all-gathered from its FSDP shards, so the full model never sits twice in memory) into
vLLM's own `load_weights` (which also splits them for tensor parallelism), then wakes the KV cache.
Leaving puts the engine into level-2 sleep, freeing all its GPU memory for training.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from verl.protocol import DataProto


class NoShardingManager:
    """For the HF engine, which generates on the FSDP actor module itself: nothing to move."""

    def __enter__(self) -> "NoShardingManager":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def preprocess(self, prompts: DataProto) -> DataProto:
        return prompts

    def postprocess(self, output: DataProto) -> DataProto:
        return output


class FSDPVLLMShardingManager:
    def __init__(self, module: torch.nn.Module, rollout, tp_size: int = 1):
        self.module = module
        self.rollout = rollout
        self.tp_size = tp_size
        self.tp_group = None
        if tp_size > 1:  # consecutive ranks share one engine, as vLLM's external launcher assigns them
            world = dist.get_world_size()
            for start in range(0, world, tp_size):
                group = dist.new_group(list(range(start, start + tp_size)))  # every rank creates every group
                if start <= dist.get_rank() < start + tp_size:
                    self.tp_group = group

    def _full_parameters(self):
        for name, tensor in self.module.state_dict().items():
            if hasattr(tensor, "full_tensor"):  # a DTensor shard; NCCL gathers on the GPU (offload keeps it on CPU)
                tensor = tensor.to(torch.device("cuda", torch.cuda.current_device())).full_tensor()
            yield name, tensor

    def __enter__(self) -> "FSDPVLLMShardingManager":
        llm = self.rollout.llm
        llm.wake_up(tags=["weights"])
        weights = self._full_parameters()
        # apply_model runs in this process (external launcher), so the generator is consumed locally
        llm.apply_model(lambda model: model.load_weights(weights))
        llm.wake_up(tags=["kv_cache"])
        return self

    def __exit__(self, *exc) -> None:
        self.rollout.llm.sleep(level=2)
        torch.cuda.empty_cache()

    def preprocess(self, prompts: DataProto) -> DataProto:
        """All ranks of a TP group generate for the union of their prompts."""
        if self.tp_group is None:
            return prompts
        parts = [None] * self.tp_size
        dist.all_gather_object(parts, prompts, group=self.tp_group)
        self._rows = [len(p) for p in parts]
        return DataProto.concat(parts)

    def postprocess(self, output: DataProto) -> DataProto:
        """Each rank keeps the rows of its own prompts."""
        if self.tp_group is None:
            return output
        rank = dist.get_rank(group=self.tp_group)
        start = sum(self._rows[:rank])
        return output[start:start + self._rows[rank]]
