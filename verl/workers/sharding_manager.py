"""Moving the FSDP actor's current weights into the generation engine.

    with manager:
        output = manager.postprocess(rollout.generate_sequences(manager.preprocess(prompts)))

The worker tells the manager `weights_changed()` after an update or a checkpoint load, and
`rollout_finished()` when its training passes start; an agent's turns in between generate with the
weights already in the engine.

HF engine (`FullWeightsShardingManager`): the engine generates with a plain, unsharded copy of the
policy. Going through the FSDP module instead would all-gather every block and run FSDP's hooks at
every generated token; the copy is refreshed from the shards only when the weights have changed,
and LoRA adapters are merged into it.

vLLM engine (`FSDPVLLMShardingManager`): entering loads the weights only when the engine sleeps or
holds an older version: it wakes the engine's weight memory, streams the actor's parameters one at a
time (each all-gathered from its FSDP shards, so the full model never sits twice in memory) into
vLLM's own `load_weights` (which also splits them for tensor parallelism), wakes the KV cache and
resets the prefix cache (its keys/values came from the old weights). Leaving does nothing. When
training starts the engine goes into level-2 sleep, freeing all its GPU memory (weights and KV
cache) for training.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from verl.protocol import DataProto
from verl.utils.lora import merged_state_dict


def full_parameters(module: torch.nn.Module):
    """(name, full tensor) of every entry of an FSDP2 module's state dict, shard by shard; every rank
    must iterate (each DTensor is all-gathered collectively)."""
    for name, tensor in module.state_dict().items():
        if hasattr(tensor, "full_tensor"):  # a DTensor shard; NCCL gathers on the GPU (offload keeps it on CPU)
            if torch.cuda.is_available() and tensor.device.type == "cpu" and dist.get_backend() == "nccl":
                tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            tensor = tensor.full_tensor()
        yield name, tensor


def plain_state_dict(module: torch.nn.Module, lora_scaling: float | None = None) -> dict[str, torch.Tensor]:
    """The FSDP actor's weights as the state dict of its plain HF model (every rank must call it, see
    `full_parameters`), LoRA adapters merged in when `lora_scaling` (alpha / rank) is given."""
    state = dict(full_parameters(module))
    return state if lora_scaling is None else merged_state_dict(state, lora_scaling)


class NoShardingManager:
    """For an engine that generates on the module it was given: nothing to move."""

    def __enter__(self) -> "NoShardingManager":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def weights_changed(self) -> None:
        """Called after the actor's weights changed (update, checkpoint load)."""

    def rollout_finished(self) -> None:
        """Called when the worker's training passes start: the engine may free its memory."""

    def preprocess(self, prompts: DataProto) -> DataProto:
        return prompts

    def postprocess(self, output: DataProto) -> DataProto:
        return output


class FullWeightsShardingManager(NoShardingManager):
    """The HF engine's plain copy of the policy, refreshed from the FSDP actor when it is stale."""

    def __init__(self, module: torch.nn.Module, engine_module: torch.nn.Module, lora_scaling: float | None = None):
        """`lora_scaling`: alpha / rank when the actor carries LoRA adapters (merged into the copy)."""
        self.module, self.engine_module, self.lora_scaling = module, engine_module, lora_scaling
        self.stale = True

    def weights_changed(self) -> None:
        self.stale = True

    @torch.no_grad()
    def __enter__(self) -> "FullWeightsShardingManager":
        if self.stale:
            # copies into the engine's own dtype and device
            self.engine_module.load_state_dict(plain_state_dict(self.module, self.lora_scaling))
            self.stale = False
        return self


class FSDPVLLMShardingManager(NoShardingManager):
    """Keeps the vLLM engine's weights at the actor's: one load per version of the weights."""

    def __init__(self, module: torch.nn.Module, rollout, tp_size: int = 1):
        """`rollout`: a VLLMRollout, whose engine starts asleep with dummy weights."""
        self.module = module
        self.rollout = rollout
        self.tp_size = tp_size
        self.tp_group = None
        self.asleep = True  # at level 2, which drops the weights too
        self.stale = True  # the engine's weights are older than the actor's
        if tp_size > 1:  # consecutive ranks share one engine, as vLLM's external launcher assigns them
            world = dist.get_world_size()
            for start in range(0, world, tp_size):
                group = dist.new_group(list(range(start, start + tp_size)))  # every rank creates every group
                if start <= dist.get_rank() < start + tp_size:
                    self.tp_group = group

    def weights_changed(self) -> None:
        self.stale = True

    def rollout_finished(self) -> None:
        if not self.asleep:
            self.rollout.llm.sleep(level=2)
            torch.cuda.empty_cache()  # hands what vLLM freed back to training (a no-op without CUDA)
            self.asleep = True

    @torch.no_grad()
    def __enter__(self) -> "FSDPVLLMShardingManager":
        if not (self.asleep or self.stale):
            return self
        llm = self.rollout.llm
        if self.asleep:
            llm.wake_up(tags=["weights"])
        # apply_model runs in this process (external launcher), so the generator is consumed locally
        llm.apply_model(lambda model: model.load_weights(full_parameters(self.module)))
        if self.asleep:  # after the load, which held gathered parameters
            llm.wake_up(tags=["kv_cache"])
        llm.reset_prefix_cache()
        self.asleep = self.stale = False
        return self

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
